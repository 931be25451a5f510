"""Static-graph and ONNX export, generated from the registry; the parity check; offline conversion."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest
import soundfile as sf

from paddle_soundcls.errors import CheckpointError
from paddle_soundcls.models import registry
from paddle_soundcls.deploy import ExportError, Predictor, exportdir
from paddle_soundcls.deploy.engines import OnnxEngine, PaddleEngine
from paddle_soundcls import load_module
from paddle_soundcls.export import check_parity, export_onnx, export_static, list_labelled_files
from paddle_soundcls.export import onnx as onnx_export
from paddle_soundcls.export import static as static_export
from paddle_soundcls.features.logmel import LogMel
from paddle_soundcls.features.mel import logmel
from paddle_soundcls import Module
from offline import offline_env
from signals import chirp, noise, tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000


def random_module(name, task='sound-cls', labels=('dog', 'rain', 'siren'), seed=0):
    """A pretrained=False Module whose scores are not saturated: bn0 is given statistics that
    match log-mel inputs (fresh batch norm assumes mean 0, variance 1)."""
    paddle.seed(seed)
    module = Module(name, task=task, label_map=list(labels) if task else None, pretrained=False)
    module.backbone.bn0._mean.set_value(paddle.full([64], -40.0))
    module.backbone.bn0._variance.set_value(paddle.full([64], 900.0))
    return module


def sample_waves():
    return np.stack([tone(440, 2.0), noise(2.0), chirp(200, 4000, 2.0), tone(3000, 2.0, amp=0.05) + noise(2.0, amp=0.01)])


def check_export_matches(module, out_dir, atol=1e-4):
    """Dygraph scores == Paddle Inference scores == onnxruntime scores on the same features."""
    features = logmel(sample_waves(), module.frontend_cfg)
    with paddle.no_grad():
        expected = module.scores(module(paddle.to_tensor(features))).numpy()
    static = PaddleEngine(os.path.join(out_dir, exportdir.STATIC_PREFIX))(features)
    ort = OnnxEngine(os.path.join(out_dir, exportdir.ONNX_FILE))(features)
    np.testing.assert_allclose(static, expected, atol=atol)
    np.testing.assert_allclose(ort, expected, atol=atol)
    # The embeddings graph is forward_features, in both runtimes.
    with paddle.no_grad():
        embeddings = module.forward_features(paddle.to_tensor(features)).numpy()
    scale = max(1.0, float(np.abs(embeddings).max()))
    for engine in (PaddleEngine(os.path.join(out_dir, exportdir.EMBED_STATIC_PREFIX)),
                   OnnxEngine(os.path.join(out_dir, exportdir.EMBED_FILE))):
        np.testing.assert_allclose(engine(features), embeddings, atol=atol * scale)
    # Dynamic frames: a different clip length through the same graph.
    short = logmel(sample_waves()[:2, :SR], module.frontend_cfg)
    with paddle.no_grad():
        np.testing.assert_allclose(OnnxEngine(os.path.join(out_dir, exportdir.ONNX_FILE))(short),
                                   module.scores(module(paddle.to_tensor(short))).numpy(), atol=atol)


SMALL = [n for n in registry.list_models(family='panns') if n != 'panns_cnn14']


@pytest.mark.parametrize('task', ['sound-cls', None])
@pytest.mark.parametrize('name', SMALL)
def test_export_small_models_both_tasks(tmp_path, name, task):
    module = random_module(name, task)
    out = tmp_path / 'export'
    meta = export_static(module, out, opset=13)
    assert sorted(os.listdir(out)) == ['export.json', 'inference.embed.json', 'inference.embed.pdiparams',
                                       'inference.frames.json', 'inference.frames.pdiparams', 'inference.json',
                                       'inference.pdiparams', 'model.embed.onnx', 'model.frames.onnx', 'model.onnx']
    check_export_matches(module, str(out))

    saved = exportdir.read_export(out)
    assert saved['model'] == name
    assert saved['task'] == ('tagging' if task is None else 'sound-cls')
    assert saved['labels'] == module.labels and len(saved['labels']) == (527 if task is None else 3)
    assert saved['frontend'] == module.frontend_cfg.to_dict()
    assert saved['input'] == {'name': 'features', 'shape': [None, None, 64], 'dtype': 'float32'}
    assert saved['output']['name'] == 'scores' and saved['output']['shape'] == [None, len(module.labels)]
    assert saved['output']['activation'] == ('sigmoid' if task is None else 'softmax')
    assert saved['onnx']['opset'] == 13
    for fname, record in saved['files'].items():
        assert record['sha256'] == exportdir.sha256_file(out / fname)
    assert meta['files'] == saved['files']
    engine = OnnxEngine(str(out / 'model.onnx'))
    assert engine.input.name == 'features' and engine.output.name == 'scores'


@pytest.mark.slow
@pytest.mark.parametrize('task', ['sound-cls', None])
def test_export_cnn14(tmp_path, task):
    module = random_module('panns_cnn14', task)
    export_static(module, tmp_path / 'export', opset=13)
    check_export_matches(module, str(tmp_path / 'export'))


def test_export_cnn14_static_graph(tmp_path):
    """The largest network through the static graph (no ONNX here: that conversion takes ~10 s)."""
    module = random_module('panns_cnn14', None)
    export_static(module, tmp_path / 'export')
    features = logmel(sample_waves()[:2], module.frontend_cfg)
    with paddle.no_grad():
        expected = module.scores(module(paddle.to_tensor(features))).numpy()
    got = PaddleEngine(str(tmp_path / 'export' / 'inference'))(features)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_numpy_front_end_matches_paddle_layer():
    cfg = registry.get_spec('panns_cnn14').frontend
    layer = LogMel(cfg)
    for waves in (sample_waves(), sample_waves()[:, : int(1.37 * SR)], 1e-4 * sample_waves()[:1]):
        ours = logmel(waves, cfg)
        ref = layer(paddle.to_tensor(waves.astype('float32'))).numpy()
        assert ours.shape == ref.shape
        # Both work in float32: within 80 dB of the peak they agree to ~1e-3 dB; far below it
        # (spectral leakage at -100 dB) float32 rounding shows as a few hundredths of a dB.
        loud = ref > ref.max() - 80
        np.testing.assert_allclose(ours[loud], ref[loud], atol=2e-3)
        np.testing.assert_allclose(ours, ref, atol=0.05)


@pytest.fixture(scope='module')
def ckpt_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'best_model'
    random_module('panns_cnn6').save(str(path))
    return path


def test_load_module_from_checkpoint(ckpt_dir):
    module = load_module(ckpt_dir)
    assert module.name == 'panns_cnn6' and module.labels == ['dog', 'rain', 'siren']


def test_checkpoint_without_meta_is_a_clear_error(tmp_path, ckpt_dir):
    bare = tmp_path / 'bare'
    bare.mkdir()
    (bare / 'model.pdparams').write_bytes((ckpt_dir / 'model.pdparams').read_bytes())
    with pytest.raises(CheckpointError, match=r'no meta\.json.*--model NAME'):
        load_module(bare)
    # What the message asks for works: the classes come from the head's shape.
    module = load_module(bare, model='panns_cnn6')
    assert module.num_class == 3
    with pytest.raises(CheckpointError, match='holds a panns_cnn6 model'):
        load_module(ckpt_dir, model='panns_cnn10')
    with pytest.raises(ValueError, match='unknown model name'):
        load_module(bare, model='panns_cnn99')
    with pytest.raises(ValueError, match='task=tagging'):
        load_module(model='panns_cnn6')
    with pytest.raises(CheckpointError, match='not found'):
        load_module(tmp_path / 'nowhere')


def test_pretrained_tagger_export_uses_the_cache(tmp_path):
    """--model NAME --task tagging loads the official weights from the cache (placed by hand here)."""
    cfg = registry.get_spec('panns_cnn6').weights
    official = {k[len('backbone.'):]: v for k, v in random_module('panns_cnn6', None).state_dict().items()}
    paddle.save(official, os.path.join(os.environ['PADDLE_SOUNDCLS_HOME'], cfg.filename))
    module = load_module(model='panns_cnn6', task='tagging')
    assert module.task == 'tagging' and len(module.labels) == 527
    export_static(module, tmp_path / 'tagger')
    assert exportdir.read_export(tmp_path / 'tagger')['task'] == 'tagging'


def test_failed_export_keeps_the_previous_one(tmp_path, ckpt_dir, monkeypatch):
    out = tmp_path / 'export'
    export_static(load_module(ckpt_dir), out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def broken(net, n_mels, directory):
        (open(os.path.join(directory, 'inference.json'), 'w')).write('half')
        raise RuntimeError('disk full')

    monkeypatch.setattr(static_export, 'save_static', broken)
    with pytest.raises(RuntimeError, match='disk full'):
        export_static(load_module(ckpt_dir), out)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ['export']  # no temporary directory left behind

    def unconvertible(directory, opset):
        raise RuntimeError('no ops')

    monkeypatch.undo()
    monkeypatch.setattr(onnx_export, 'convert', unconvertible)
    with pytest.raises(RuntimeError, match='no ops'):
        export_onnx(out)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_export_onnx_adds_to_the_export_dir(tmp_path, ckpt_dir):
    out = tmp_path / 'export'
    export_static(load_module(ckpt_dir), out)
    static_files = {n: (out / n).read_bytes() for n in ('inference.json', 'inference.pdiparams')}
    meta = export_onnx(out, out / 'model.onnx', opset=13)
    assert meta['onnx'] == {'file': 'model.onnx', 'opset': 13, 'paddle2onnx': meta['onnx']['paddle2onnx']}
    assert {n: (out / n).read_bytes() for n in static_files} == static_files
    assert exportdir.read_export(out)['files']['model.onnx']['sha256'] == exportdir.sha256_file(out / 'model.onnx')
    import onnx
    onnx.checker.check_model(str(out / 'model.onnx'))
    with pytest.raises(ValueError, match='inside the model directory'):
        export_onnx(out, tmp_path / 'elsewhere.onnx')
    with pytest.raises(ValueError, match='opset'):
        export_onnx(out, opset=3)
    with pytest.raises(ExportError, match='no export.json'):
        export_onnx(tmp_path)


def test_the_export_in_two_steps_is_the_export_in_one(tmp_path, ckpt_dir):
    """tools/export_static.py then tools/export_onnx.py (export --no-onnx, then --model-dir) give the
    graphs of `export --checkpoint`, the frame-scores graph for event detection among them."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    two, one = tmp_path / 'two', tmp_path / 'one'
    for tool, args in (('export_static.py', ['--checkpoint', ckpt_dir, '--output', two]),
                       ('export_onnx.py', ['--model-dir', two, '--opset', '13'])):
        proc = subprocess.run([sys.executable, os.path.join(repo, 'tools', tool), *map(str, args)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    export_static(load_module(ckpt_dir), one, opset=13)
    assert set(exportdir.read_export(two)['files']) == set(exportdir.read_export(one)['files'])
    wave = np.random.default_rng(0).normal(0, 0.1, 32000 * 3).astype('float32')
    a, b = (Predictor(d).detect([wave], sample_rate=32000)[0]['frame_scores'] for d in (two, one))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_onnx_export_installs_nothing(tmp_path, ckpt_dir):
    out = tmp_path / 'export'
    export_static(load_module(ckpt_dir), out)
    env, log = offline_env(tmp_path)
    code = textwrap.dedent(f'''
        import os, sys
        from paddle_soundcls.export import export_onnx
        export_onnx({str(out)!r})
        assert 'POLYGRAPHY_AUTOINSTALL_DEPS' not in os.environ, 'the Polygraphy step ran'
        print('exported')
    ''')
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'exported' in proc.stdout
    assert not log.exists(), f'a package installation was attempted: {log.read_text()}'
    assert 'model.onnx' in exportdir.read_export(out)['files']


def test_offline_harness_catches_an_install(tmp_path):
    """The harness above does record an installation attempt."""
    env, log = offline_env(tmp_path)
    code = 'import subprocess, sys\ntry:\n    subprocess.run([sys.executable, "-m", "pip", "install", "x"])\nexcept RuntimeError:\n    pass\n'
    subprocess.run([sys.executable, '-c', code], env=env, timeout=60)
    subprocess.run(['pip', 'install', 'x'], env=env, timeout=60)
    assert log.read_text().count('install') == 2


@pytest.mark.skipif(__import__('importlib').util.find_spec('onnx_graphsurgeon') is not None,
                    reason='Polygraphy has its dependencies here, so it installs nothing')
def test_paddle2onnx_defaults_would_install(tmp_path, onnx_export_dir):
    """Why the settings above matter: paddle2onnx's default optimizer step tries a pip install."""
    env, log = offline_env(tmp_path)
    code = textwrap.dedent(f'''
        import paddle2onnx
        paddle2onnx.export({str(onnx_export_dir / 'inference.json')!r}, {str(onnx_export_dir / 'inference.pdiparams')!r},
                           save_file={str(tmp_path / 'default.onnx')!r}, opset_version=13)
    ''')
    subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert 'pip' in log.read_text() and 'install' in log.read_text()


# Parity check ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def onnx_export_dir(tmp_path_factory, ckpt_dir):
    out = tmp_path_factory.mktemp('parity') / 'export'
    export_static(load_module(ckpt_dir), out, opset=13)
    return out


def _write_clips(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    waves = {'dog': tone(440, 1.5), 'rain': noise(1.5, amp=0.2), 'siren': chirp(300, 3000, 1.5)}
    for i, name in enumerate(names):
        label = name.split('-')[0]
        sf.write(folder / f'{name}.wav', waves[label] + 0.01 * noise(1.5, seed=i), SR)


def test_list_labelled_files_layouts(tmp_path):
    esc = tmp_path / 'esc'
    _write_clips(esc / 'audio', ['dog-1', 'rain-1'])
    (esc / 'meta').mkdir()
    (esc / 'meta' / 'esc50.csv').write_text('filename,fold,target,category,esc10,src_file,take\n'
                                            'dog-1.wav,1,0,dog,True,1,A\nrain-1.wav,1,1,rain,True,2,A\n')
    assert [(os.path.basename(p), lab, idx) for p, lab, idx in list_labelled_files(esc)] == [
        ('dog-1.wav', 'dog', 0), ('rain-1.wav', 'rain', 1)]

    classes = tmp_path / 'classes'
    _write_clips(classes / 'dog', ['dog-1'])
    _write_clips(classes / 'siren', ['siren-1'])
    assert [lab for _, lab, _ in list_labelled_files(classes)] == ['dog', 'siren']

    (tmp_path / 'list.csv').write_text('path,label\nclasses/dog/dog-1.wav,dog\n')
    [(path, label, _)] = list_labelled_files(tmp_path / 'list.csv')
    assert os.path.isfile(path) and label == 'dog'

    flat = tmp_path / 'flat'
    _write_clips(flat / 'a' / 'b', ['dog-1'])
    _write_clips(flat, ['rain-1'])
    assert [lab for _, lab, _ in list_labelled_files(flat)] == [None, None]
    with pytest.raises(ValueError, match='no audio files'):
        list_labelled_files(tmp_path / 'esc' / 'meta')


def test_parity_check_passes_and_reports_accuracy(tmp_path, onnx_export_dir):
    data = tmp_path / 'data'
    _write_clips(data / 'dog', ['dog-1', 'dog-2'])
    _write_clips(data / 'rain', ['rain-1'])
    _write_clips(data / 'siren', ['siren-1'])
    summary = check_parity(onnx_export_dir, data)
    assert summary['passed'] is True, summary
    assert summary['clips'] == 4 and summary['top1_agreement'] == 1.0
    assert summary['max_abs_diff'] < 1e-4
    assert summary['accuracy_paddle'] == summary['accuracy_onnxruntime'] is not None
    json.dumps(summary)


def test_parity_check_fails_when_engines_disagree(tmp_path, onnx_export_dir, monkeypatch):
    from paddle_soundcls.export import parity
    data = tmp_path / 'data'
    _write_clips(data, ['dog-1', 'rain-1', 'siren-1'])

    class Flipped(Predictor):
        def scores(self, *args, **kwargs):
            out = super().scores(*args, **kwargs)
            return [s[::-1] for s in out] if self.engine_name == 'onnxruntime' else out

    monkeypatch.setattr(parity, 'Predictor', Flipped)
    summary = check_parity(onnx_export_dir, data)
    assert summary['passed'] is False and summary['accuracy_paddle'] is None

    from paddle_soundcls.cli import main
    assert main(['export', '--model-dir', str(onnx_export_dir), '--check', str(data)]) == 1
