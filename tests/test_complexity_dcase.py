"""The DCASE counting of the complexity report against the organisers' own counter (NeSsi, i.e.
torchinfo, run on the DCASE 2024 task 1 baseline by tests/data/make_nessi_reference.py), layer
by layer and in total; the DCASE budget check and its command line."""
import argparse
import copy
import json
import os

import paddle.nn as nn
import pytest

from paddle_soundcls.analysis.complexity import (DCASE_MACS_PER_SECOND, DCASE_PARAM_MEMORY_KB,
                                                 add_complexity_arguments, check_budget, check_dcase_budget,
                                                 complexity, run_complexity)
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.features.config import FrontendConfig
from paddle_soundcls.models import registry

with open(os.path.join(os.path.dirname(__file__), 'data', 'nessi', 'reference.json')) as f:
    REFERENCE = json.load(f)
# The baseline's README: "61,148 parameters and 29,419,156 MACs" (torchinfo, a 1-s clip).
PUBLISHED_PARAMS, PUBLISHED_MACS = 61148, 29419156

def ours(layer):
    return {'type': layer['type'].lower(), 'output_size': layer['output_shape'], 'params': layer['params'],
            'macs': layer['macs']}


def theirs(layer):
    return {'type': layer['type'].lower(), 'output_size': layer['output_size'], 'params': layer['params'],
            'macs': layer['macs']}


def by_name(layers, prefix=''):
    return {prefix + layer['name']: layer for layer in layers}


def clip(report, seconds):
    return next(c for c in report['clips'] if c['seconds'] == seconds)


def test_the_recorded_counter_gives_the_published_figures():
    baseline = REFERENCE['models']['baseline']
    assert (baseline['params'], baseline['macs']) == (PUBLISHED_PARAMS, PUBLISHED_MACS)
    assert baseline['input_size'] == [1, 1, 256, 65]     # 1 s at 32 kHz, hop 500, centred frames
    assert sum(layer['macs'] for layer in baseline['layers']) == PUBLISHED_MACS
    # The limits of the organisers' helpers/nessi.py are ours: 128 kB = 128,000 bytes, not 131,072.
    assert REFERENCE['limits'] == {'MAX_PARAMS_MEMORY': DCASE_PARAM_MEMORY_KB * 1000,
                                   'MAX_MACS': DCASE_MACS_PER_SECOND}


class Baseline(nn.Layer):
    """The DCASE 2024 baseline network with its own classifier: our cpmobile trunk (sub-layers named
    as upstream), then a 1x1 conv without bias + BatchNorm at every position of the last map, then
    the average."""

    def __init__(self, name):
        from paddle_soundcls.models import cpmobile
        super().__init__()
        backbone = registry.get_spec(name).build(audioset_head=False)
        self.in_c, self.stages = backbone.in_c, backbone.stages
        self.feed_forward = nn.Sequential(nn.Conv2D(backbone.emb_size, 10, 1, bias_attr=False), nn.BatchNorm2D(10))
        self.frontend = cpmobile.CPMOBILE_FRONTEND

    def forward(self, features):
        x = features.unsqueeze(1).transpose([0, 1, 3, 2])
        return self.feed_forward(self.stages(self.in_c(x))).mean(axis=[2, 3])


@pytest.mark.parametrize('name, recorded', [('cpmobile', 'baseline'), ('cpmobile_wide', 'wide')])
def test_the_baseline_network_counts_as_the_organisers_count_it(name, recorded):
    """Our DCASE counting of the baseline network, classifier included, equals torchinfo's layer by
    layer: for cpmobile the published 61,148 parameters and 29,419,156 MACs exactly."""
    reference = REFERENCE['models'][recorded]
    network = Baseline(name)
    report = complexity(network, seconds=1, frontend=network.frontend, layers=True)
    counted = by_name(clip(report, 1)['layers'])
    assert list(counted) == [layer['name'] for layer in reference['layers']]
    for layer in reference['layers']:
        assert ours(counted[layer['name']]) == theirs(layer), layer['name']
    assert (report['params']['total'], report['macs_per_second']) == (reference['params'], reference['macs'])
    assert clip(report, 1)['frames'] == reference['input_size'][3]
    if name == 'cpmobile':
        assert (report['params']['total'], report['macs_per_second']) == (PUBLISHED_PARAMS, PUBLISHED_MACS)
    # The 'fused' counting leaves out exactly the BatchNorm layers' figures.
    fused = complexity(network, seconds=1, frontend=network.frontend, counting='fused')
    batchnorm = sum(layer['macs'] for layer in reference['layers'] if layer['type'] == 'BatchNorm2d')
    assert fused['macs_per_second'] == reference['macs'] - batchnorm == report['macs_per_second'] - \
        clip(report, 1)['macs_other']
    assert fused['params'] == report['params']


@pytest.mark.parametrize('name, recorded', [('cpmobile', 'baseline_linear_head'),
                                            ('cpmobile_wide', 'wide_linear_head')])
def test_registered_models_count_as_the_organisers_would_count_them(name, recorded):
    """The registered models, whose classifier is a Module's Linear on the averaged map, against
    torchinfo on the baseline network with that classifier in the place of its own."""
    reference = REFERENCE['models'][recorded]
    report = complexity(name, seconds=1, layers=True)
    counted = clip(report, 1)['layers']
    renamed = {'feed_forward.fc': 'fc'}
    assert [layer['name'] for layer in counted] == [renamed.get(layer['name'], 'backbone.' + layer['name'])
                                                   for layer in reference['layers']]
    for mine, layer in zip(counted, reference['layers']):
        assert ours(mine) == theirs(layer), layer['name']
    assert (report['params']['total'], report['macs_per_second']) == (reference['params'], reference['macs'])
    assert report['counting'] == 'dcase' and report['uncounted_layers'] == []


def test_cpmobile_differs_from_the_published_figures_by_its_classifier_alone():
    """The baseline's classifier: a 1x1 conv without bias (104 x 10) + BatchNorm (2 x 10) at each of
    the 32 x 9 positions of the last map; ours: the average, then a Linear with bias, once."""
    report = complexity('cpmobile', seconds=(1, 10), layers=True)
    for seconds, recorded in ((1, 'baseline'), (10, 'baseline_10s')):
        reference = REFERENCE['models'][recorded]
        trunk = [layer for layer in reference['layers'] if not layer['name'].startswith('feed_forward.')]
        counted = by_name(clip(report, seconds)['layers'])
        for layer in trunk:
            assert ours(counted['backbone.' + layer['name']]) == theirs(layer), layer['name']
        positions = 32 * ((reference['input_size'][3] - 1) // 8 + 1)
        assert sum(layer['macs'] for layer in reference['layers'] if layer not in trunk) == \
            positions * 104 * 10 + 2 * 10
        linear = 104 * 10 + 10
        assert clip(report, seconds)['macs'] == sum(layer['macs'] for layer in trunk) + linear
        assert clip(report, seconds)['frames'] == reference['input_size'][3]
    assert report['params']['total'] == PUBLISHED_PARAMS - (104 * 10 + 2 * 10) + 104 * 10 + 10 == 61138
    assert report['macs_per_second'] == PUBLISHED_MACS - (32 * 9 * 104 * 10 + 2 * 10) + 104 * 10 + 10 == 29120666


class Rows(nn.Layer):
    """log-mel [batch, frames, 8] -> LayerNorm(8) -> Linear(8 -> 3) on every frame -> mean."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, features):
        return self.fc(self.norm(features)).mean(axis=1)


def test_a_linear_on_every_frame_and_a_layer_norm():
    # A Linear counts its weights and bias for every row it is applied to (torchinfo since its fix
    # of Linear layers on [batch, rows, features]; 1.8.0 counted one row per batch item); a
    # LayerNorm, like a BatchNorm, its 2 x 8 parameters once per clip.
    report = complexity(Rows(), seconds=1, frontend=FrontendConfig(n_mels=8), layers=True)
    frames = 1 + 32000 // 320
    figures = clip(report, 1)
    assert (figures['macs_linear'], figures['macs_other']) == (frames * (8 * 3 + 3), 2 * 8)
    assert [(layer['name'], layer['params']) for layer in figures['layers']] == [('norm', 16), ('fc', 27)]
    fused = complexity(Rows(), seconds=1, frontend=FrontendConfig(n_mels=8), counting='fused')
    assert clip(fused, 1)['macs'] == frames * (8 * 3 + 3) and 'layers' not in clip(fused, 1)


def report_with(params):
    report = copy.deepcopy(complexity('cpmobile', seconds=1))
    report['params']['total'] = params
    return report


def test_dcase_parameter_memory_is_128_000_bytes():
    assert check_dcase_budget(report_with(128_000))
    with pytest.raises(ArgumentError) as exc:
        check_dcase_budget(report_with(128_001))
    message = str(exc.value)
    for text in ('cpmobile is over the DCASE task 1 budget', '128,001 parameters take 128.001 kB at int8',
                 '128,001 bytes, 1 per parameter', 'the limit of 128 kB (128,000 bytes', 'at most 128,000 parameters'):
        assert text in message, message
    assert 'MACs' not in message
    with pytest.raises(ArgumentError, match=r'at most 64,000 parameters at fp16'):
        check_dcase_budget(report_with(64_001), dtype='fp16')
    assert check_dcase_budget(report_with(64_000), dtype='fp16')


def test_dcase_budget_of_the_registered_models():
    assert check_dcase_budget(complexity('cpmobile', seconds=(1, 10)))
    # 126,930 parameters fit 128 kB at int8, not at fp16; 52.7 M MACs are over 30 M.
    wide = complexity('cpmobile_wide', seconds=1)
    with pytest.raises(ArgumentError) as exc:
        check_dcase_budget(wide)
    message = str(exc.value)
    assert 'cpmobile_wide is over the DCASE task 1 budget: 52.7 M MACs per second of audio (52,692,186, on a 1-s ' \
           'clip) > the limit of 30 M MACs' in message and 'parameters' not in message, message
    with pytest.raises(ArgumentError, match=r'126,930 parameters take 253.860 kB at fp16.*52.7 M MACs'):
        check_dcase_budget(wide, dtype='fp16')
    with pytest.raises(ArgumentError, match="dtype must be one of"):
        check_budget(wide, max_param_kB=128, dtype='int4')


def test_dcase_budget_needs_the_dcase_counting_of_a_1_s_clip():
    with pytest.raises(ArgumentError, match=r"counting='dcase'"):
        check_dcase_budget(complexity('cpmobile', seconds=1, counting='fused'))
    with pytest.raises(ArgumentError, match=r'1-s clip.*seconds=1'):
        check_dcase_budget(complexity('cpmobile', seconds=10))
    with pytest.raises(ArgumentError, match=r"counting must be one of \['dcase', 'fused'\]"):
        complexity('cpmobile', seconds=1, counting='torchinfo')


def test_command_line_dcase_budget(capsys):
    parser = add_complexity_arguments(argparse.ArgumentParser())
    assert run_complexity(parser.parse_args(['cpmobile', '--seconds', '1', '--budget-dcase', '--layers'])) == 0
    out, err = capsys.readouterr()
    assert '29,120,666 (29.1 M)' in out and 'backbone.stages.s3.b6.block.2.1' in out and err == ''
    args = parser.parse_args(['cpmobile', 'cpmobile_wide', '--seconds', '1', '--budget-dcase', '--budget-dtype',
                              'fp16', '--json'])
    assert run_complexity(args) == 1
    out, err = capsys.readouterr()
    assert [r['params']['total'] for r in json.loads(out)] == [61138, 126930]
    assert 'cpmobile_wide is over the DCASE task 1 budget: 126,930 parameters take 253.860 kB at fp16' in err
    assert 'cpmobile is over' not in err
    with pytest.raises(ArgumentError, match='add 1 to --seconds'):
        run_complexity(parser.parse_args(['cpmobile', '--seconds', '10', '--budget-dcase']))
    with pytest.raises(ArgumentError, match='drop --counting fused'):
        run_complexity(parser.parse_args(['cpmobile', '--seconds', '1', '--budget-dcase', '--counting', 'fused']))


def test_the_int8_export_of_cpmobile_stores_what_the_budget_check_counts(tmp_path):
    """The int8 export that makes the 128 kB true: its quantized weights take 1 byte each and all
    it stores (scales, int32 biases, the float stem and head) stays within 128,000 bytes; the
    export records that, and the 1-byte weights are the network's parameters, not fewer."""
    import numpy as np
    import soundfile as sf
    from paddle_soundcls import Module
    from paddle_soundcls.export import quantize
    from paddle_soundcls.export.static import export_static

    module = Module('cpmobile', num_class=10, pretrained=False, seed=0)
    module.eval()
    export_static(module, tmp_path / 'export', opset=13)
    rng = np.random.default_rng(0)
    (tmp_path / 'calib').mkdir()
    for i in range(4):
        sf.write(tmp_path / 'calib' / f'{i}.wav', rng.normal(0, 0.1, 32000).astype('float32'), 32000)
    info = quantize.quantize_export(tmp_path / 'export', tmp_path / 'calib', seconds=1.0, progress=False)
    memory = info['parameter_memory']
    assert memory == quantize.parameter_memory(tmp_path / 'export' / 'model.int8.onnx')
    report = complexity('cpmobile', seconds=1)
    params, statistics = report['params']['total'], report['params']['batchnorm_statistics']
    # The float export stores every parameter and BatchNorm statistic as float32: nothing is missed.
    float_memory = quantize.parameter_memory(tmp_path / 'export' / 'model.onnx')
    assert float_memory['bytes']['float32'] == 4 * (params + statistics)
    # int8: the convolutions' weights (BatchNorm folded in) take 1 byte each; all of it fits 128 kB.
    assert 0.9 * params < memory['bytes']['int8'] <= params
    assert memory['total_bytes'] <= DCASE_PARAM_MEMORY_KB * 1000 < float_memory['total_bytes']
    check_dcase_budget(report)
