"""The complexity report against published figures and hand counts, the budget check and its command line;
the benchmark's text report."""
import argparse
import dataclasses
import json

import paddle.nn as nn
import pytest

from paddle_soundcls.models import registry
from paddle_soundcls.analysis.complexity import (add_complexity_arguments, check_budget, complexity,
                                                 run_complexity)
from paddle_soundcls.features.config import FrontendConfig


def close(value, published, rel=0.05):
    return abs(value - published) <= rel * published


def clip(report, seconds):
    return next(c for c in report['clips'] if c['seconds'] == seconds)


# EfficientAT's README (github.com/fschmid56/EfficientAT): parameters and GMACs per 10-s clip.
@pytest.mark.parametrize('name, params, macs_10s', [('efficientat_mn04', 0.983e6, 0.11e9),
                                                    ('efficientat_mn10', 4.88e6, 0.54e9)])
def test_efficientat_matches_its_readme(name, params, macs_10s):
    report = complexity(name, seconds=(10,))
    assert report['task'] == 'tagging' and report['classes'] == 527
    assert close(report['params']['total'], params), report['params']
    assert close(clip(report, 10)['macs'], macs_10s), clip(report, 10)
    assert clip(report, 10)['frames'] == 1000   # EfficientAT counts on its 128 x 1000 mel input


def test_cnn14_matches_the_published_figures():
    # PANNs paper: 80.8 M parameters; DESIGN.md: about 21 GMACs per 10-s clip. The convolutions
    # alone on the 1001 x 64 log-mel come to 20.0 G (e.g. block 1's second convolution:
    # 64 * 64 * 9 * 1001 * 64 = 2.36 G; each later block 3.54 G), 4.6% under the rounded 21 G.
    report = complexity('panns_cnn14', seconds=(10,))
    assert close(report['params']['total'], 80.8e6, rel=0.001), report['params']
    assert close(clip(report, 10)['macs'], 21e9), clip(report, 10)
    assert clip(report, 10)['frames'] == 1001
    assert report['params']['backbone'] + 2048 * 527 + 527 == report['params']['total']


def test_dcase_baseline_matches_its_readme():
    # The DCASE 2024 task 1 baseline (a simplified CP-Mobile) as published, counted with torchinfo:
    # 61,148 parameters and 29.42 M MACs per 1-s clip, 10 classes. Its classifier is a 1x1 conv +
    # BatchNorm on every position of the last feature map before the average; ours averages first
    # and then applies a Linear, which has 10 parameters fewer and is applied once.
    if 'cpmobile' not in registry.list_models():
        pytest.skip('the cpmobile family is not registered')
    report = complexity('cpmobile', seconds=(1,))
    assert report['task'] == 'sound-cls' and report['classes'] == 10
    assert close(report['params']['total'], 61148, rel=0.01), report['params']
    assert close(report['macs_per_second'], 29.42e6, rel=0.02), report['clips']
    assert report['param_memory']['int8']['kB'] < 128 and report['macs_per_second'] < 30e6
    check_budget(report, max_params=128_000, max_macs_per_second=30e6)


class Tiny(nn.Layer):
    """log-mel [batch, frames, n_mels] -> Conv2D 3x3 (1 -> 4, bias) -> depthwise Conv2D 3x3 stride 2
    (no bias) -> mean -> Linear(4 -> 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(1, 4, 3, padding=1)
        self.depthwise = nn.Conv2D(4, 4, 3, stride=2, padding=1, groups=4, bias_attr=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, features):
        x = self.depthwise(self.conv(features.unsqueeze(1)))
        return self.fc(x.mean(axis=[2, 3]))


def test_a_hand_counted_network():
    frontend = FrontendConfig(n_mels=8)
    report = complexity(Tiny(), seconds=(1, 2), frontend=frontend)
    for seconds in (1, 2):
        frames = 1 + int(seconds * 32000) // 320              # centred STFT frames, hop 320
        out_t, out_f = (frames - 1) // 2 + 1, (8 - 1) // 2 + 1  # 3x3, stride 2, padding 1
        conv = frames * 8 * 4 * (1 * 9 + 1)                     # every output: 9 weights + the bias
        depthwise = out_t * out_f * 4 * 9                      # one input channel per group
        linear = 4 * 3 + 3
        figures = clip(report, seconds)
        assert figures['frames'] == frames
        assert (figures['macs_conv'], figures['macs_linear']) == (conv + depthwise, linear)
        assert figures['macs'] == conv + depthwise + linear
        # The larger input + output of one layer: the first convolution's (1 + 4 channels) or the
        # depthwise one's (4 channels in, a quarter of the map out, rounded up).
        peak = max(frames * 8 * (1 + 4), frames * 8 * 4 + out_t * out_f * 4)
        assert figures['peak_activation']['elements'] == peak
        assert figures['peak_activation']['fp32_kB'] == peak * 4 / 1000
    params = 4 * 9 + 4 + 4 * 9 + 4 * 3 + 3
    assert report['params']['total'] == params
    assert report['param_memory']['fp16'] == {'bytes': 2 * params, 'kB': 2 * params / 1000}
    assert report['uncounted_layers'] == []
    json.dumps(report)


def test_a_layer_needs_its_front_end_and_clips_their_minimum():
    with pytest.raises(ValueError, match='frontend=FrontendConfig'):
        complexity(Tiny())
    with pytest.raises(ValueError, match='at least 1 s'):
        complexity('panns_cnn6', seconds=(0.5,))
    with pytest.raises(ValueError, match='seconds'):
        complexity('panns_cnn6', seconds=(0,))


def test_macs_grow_linearly_with_the_clip():
    # Fully convolutional with global pooling: convolution MACs grow with the frames, the Linear
    # layers' do not. Feature maps are rounded at every stride-2 layer, which weighs at 1 s
    # (EfficientAT's last map has 4 frames for 100 input frames, 32 for 1000) and fades with length.
    for name in ('efficientat_mn04', 'panns_cnn6'):
        clips = complexity(name, seconds=(1, 5, 10, 20) if name.startswith('eff') else (1, 5, 10))['clips']
        per_second = [c['macs_conv'] / c['seconds'] for c in clips]
        assert len({c['macs_linear'] for c in clips}) == 1
        assert all(close(rate, per_second[-1], rel=0.02) for rate in per_second[1:]), per_second
        assert close(per_second[0], per_second[-1], rel=0.12), per_second


def test_budget_check_refuses_with_the_figures():
    report = complexity('efficientat_mn04', seconds=(1,))
    with pytest.raises(ValueError) as exc:
        check_budget(report, max_params=128_000)
    message = str(exc.value)
    for text in ('efficientat_mn04', '983,599 parameters', '128,000', '1,967.2 kB at fp16', '983.6 kB at int8',
                 'DCASE rule allows 128 kB'):
        assert text in message, message
    # 12.8 M MACs per second: under DCASE's 30 M, over 10 M.
    assert check_budget(report, max_macs_per_second=30e6) is report
    with pytest.raises(ValueError, match=r'efficientat_mn04 is over budget: 12.8 M.*10 M'):
        check_budget(report, max_macs_per_second=10e6)
    tiny = complexity(Tiny(), seconds=(1,), frontend=FrontendConfig(n_mels=8))
    assert check_budget(tiny, max_params=128_000, max_macs_per_second=30e6) is tiny


def test_family_without_an_audioset_head_gets_a_10_class_head(monkeypatch):
    spec = dataclasses.replace(registry.get_spec('efficientat_mn04'), name='headless', audioset_head=None)
    monkeypatch.setitem(registry._MODELS, 'headless', spec)
    report = complexity('headless', seconds=(1,))
    assert report['task'] == 'sound-cls' and report['classes'] == 10
    assert 'no AudioSet head' in report['head']
    assert report['params']['head'] == 512 * 10 + 10


def test_command_line(capsys):
    parser = add_complexity_arguments(argparse.ArgumentParser())
    args = parser.parse_args(['efficientat_mn04', '--seconds', '1', '--json', '--budget-params', '1000000'])
    assert run_complexity(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['model'] == 'efficientat_mn04' and report['clips'][0]['seconds'] == 1
    args = parser.parse_args(['efficientat_mn04', '--seconds', '1', '--budget-params', '128000',
                              '--budget-macs', '30e6'])
    assert run_complexity(args) == 1
    out, err = capsys.readouterr()
    assert 'efficientat_mn04' in out and '12.8 M' in out
    assert 'efficientat_mn04 is over budget: 983,599 parameters' in err and 'MACs' not in err


def test_hooks_are_removed():
    network = Tiny()
    complexity(network, seconds=(1,), frontend=FrontendConfig(n_mels=8))
    assert not network.conv._forward_post_hooks and not network.fc._forward_post_hooks


# ----- the benchmark's text report (analysis/benchmark.py), under the engine names of Predictor and --engine

def figures(clips_per_s, **more):
    return {'clips_per_s': clips_per_s, 'threads': 2, **more}


def test_benchmark_report_names_the_engines_as_the_command_line_does():
    from paddle_soundcls.analysis import benchmark
    from paddle_soundcls.cli import ENGINE_CHOICES
    setup = {'model': 'panns_cnn6', 'weights': 'random', 'seconds': 1.0, 'batch_size': 2, 'threads': 2,
             'machine': {'cpu': 'a CPU'}}
    result = {'dygraph': figures(1.5), 'paddle': figures(2.5), 'onnxruntime_int8': figures(4.5), 'setup': setup,
              'onnxruntime': figures(3.5, end_to_end_clips_per_s=3.25, ort_default_options=figures(3.0))}
    assert {benchmark.engine_key(e, p) for e, p in benchmark.RUNS} == set(benchmark.ENGINES) == set(result) - {'setup'}
    assert all(engine in ENGINE_CHOICES for engine, _ in benchmark.RUNS)
    lines = benchmark.format_report(result).splitlines()
    assert lines[0].startswith('panns_cnn6 (random), 1-s clips, batch 2, 2 threads, a CPU')
    rows = {line.rsplit(None, 2)[0].strip(): float(line.split()[-2]) for line in lines[1:]}
    assert rows == {'dygraph': 1.5, 'paddle': 2.5, 'onnxruntime': 3.5, 'onnxruntime_int8': 4.5,
                    'onnxruntime, ORT defaults': 3.0, 'end to end (front end too)': 3.25}
    # An export directory's report: onnxruntime only, without the ORT-defaults baseline.
    export = {'onnxruntime': figures(3.5, end_to_end_clips_per_s=3.25),
              'setup': {**setup, 'model_dir': '/tmp/export'}}
    lines = benchmark.format_report(export).splitlines()
    assert lines[0].startswith('/tmp/export (panns_cnn6)') and len(lines) == 3
