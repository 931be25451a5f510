"""The Paddle-free runtime (Predictor), sliding windows over long audio, Module.predict engines."""
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import BLOCK_PADDLE, loudness_weights
from paddle_soundcls.audio import AudioError
from paddle_soundcls.deploy import ExportError, Predictor, pipeline
from paddle_soundcls.export import export_static
from paddle_soundcls.features.mel import logmel
from paddle_soundcls.hub import Module
from signals import chirp, noise, tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000


def random_module(name='panns_cnn6', task='sound-cls', labels=('dog', 'rain', 'siren'), seed=0):
    """pretrained=False, with bn0 statistics that fit log-mel inputs so scores are not saturated."""
    paddle.seed(seed)
    module = Module(name, task=task, label_map=list(labels) if task else None, pretrained=False)
    module.backbone.bn0._mean.set_value(paddle.full([64], -40.0))
    module.backbone.bn0._variance.set_value(paddle.full([64], 900.0))
    return module


@pytest.fixture(scope='module')
def module():
    return random_module()


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory, module):
    out = tmp_path_factory.mktemp('deploy') / 'export'
    export_static(module, out, opset=13)
    return out


@pytest.fixture(scope='module')
def other_export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('other') / 'export'
    export_static(random_module(labels=('a', 'b'), seed=1), out, opset=13)
    return out


def assert_same_results(a, b, atol=1e-4):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        np.testing.assert_allclose([x[k] for k in x], [y[k] for k in x], atol=atol)


# Audio inputs -----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def odd_files(tmp_path_factory):
    """Files at 8 / 44.1 / 48 kHz with 1 / 2 / 6 channels, and a 0.05-s clip."""
    folder = tmp_path_factory.mktemp('audio')
    paths = []
    for sr, channels in ((8000, 1), (44100, 2), (48000, 6), (32000, 1)):
        t = np.arange(int(1.3 * sr)) / sr
        data = np.stack([0.3 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], axis=1)
        path = folder / f'{sr}_{channels}ch.wav'
        sf.write(path, data.astype('float32'), sr)
        paths.append(str(path))
    short = folder / 'short.wav'
    sf.write(short, tone(1000, 0.05), SR)
    return paths + [str(short)]


def test_predictor_matches_module_on_any_rate_and_channels(export_dir, module, odd_files):
    ours = Predictor(export_dir).predict(odd_files, batch_size=2)
    ref = module.predict(odd_files, engine='dygraph')
    assert_same_results(ours, ref)
    assert list(ours[0]) == sorted(ours[0], key=ours[0].get, reverse=True)  # best first
    assert abs(sum(ours[0].values()) - 1) < 1e-5  # softmax scores
    # The front end's settings have one name on both: frontend_cfg (Predictor.frontend is its old name).
    predictor = Predictor(export_dir)
    assert predictor.frontend_cfg == module.frontend_cfg
    with pytest.warns(DeprecationWarning, match='use Predictor.frontend_cfg'):
        assert predictor.frontend is predictor.frontend_cfg


def test_paddle_engine_matches_onnxruntime(export_dir, odd_files):
    a = Predictor(export_dir, engine='paddle', num_threads=1).predict(odd_files, top_k=2)
    b = Predictor(export_dir, engine='onnxruntime', num_threads=1).predict(odd_files, top_k=2)
    assert_same_results(a, b)
    assert all(len(r) == 2 for r in a)


def test_paddle_engine_prints_nothing(export_dir, odd_files):
    """Paddle Inference's own notes (on import, and at every run) do not reach the user's terminal."""
    code = (f'from paddle_soundcls.deploy import Predictor\n'
            f'print(len(Predictor({str(export_dir)!r}, engine="paddle").predict({odd_files[:2]!r})))\n')
    proc = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == '2\n' and proc.stderr == '', proc.stderr


def test_waveform_inputs_and_argument_errors(export_dir):
    predictor = Predictor(export_dir)
    stereo = np.stack([tone(440, 1.0, sr=44100), noise(1.0, sr=44100)])
    [result] = predictor.predict(stereo, sample_rate=44100)
    assert len(result) == 3
    with pytest.raises(AudioError, match='sample_rate is required'):
        predictor.predict([stereo])
    with pytest.raises(ValueError, match='non-empty list'):
        predictor.predict([])
    with pytest.raises(ValueError, match='top_k must be a positive int'):
        predictor.predict([stereo], sample_rate=44100, top_k=0)
    with pytest.raises(ValueError, match='top_k must be a positive int or None, got True'):
        predictor.predict([stereo], sample_rate=44100, top_k=True)
    with pytest.warns(DeprecationWarning, match='topk is deprecated: use top_k') as warned:
        old = predictor.predict([stereo], sample_rate=44100, topk=2)
    assert warned[0].filename == __file__
    assert old == predictor.predict([stereo], sample_rate=44100, top_k=2) and len(old[0]) == 2
    with pytest.raises(ValueError, match='hop needs window'):
        predictor.predict([stereo], sample_rate=44100, hop=1.0)
    with pytest.raises(ValueError, match='window must be a positive'):
        predictor.predict([stereo], sample_rate=44100, window=-1)
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'max'"):
        predictor.predict([stereo], sample_rate=44100, window=1, reduce='median')
    with pytest.raises(AudioError, match='NaN'):
        predictor.predict([np.full(SR, np.nan, 'float32')], sample_rate=SR)
    with pytest.raises(ValueError, match='engine must be one of'):
        Predictor(export_dir, engine='tensorrt')


def test_bad_files_are_named(tmp_path, export_dir):
    text = tmp_path / 'notes.wav'
    text.write_text('not audio at all')
    with pytest.raises(AudioError, match='notes.wav'):
        Predictor(export_dir).predict([str(text)])
    with pytest.raises(AudioError, match='not found: .*missing.wav'):
        Predictor(export_dir).predict([str(tmp_path / 'missing.wav')])


# Export directory checks ------------------------------------------------------------------

def test_missing_files_are_named(tmp_path, export_dir):
    for name, engine in (('model.onnx', 'onnxruntime'), ('inference.pdiparams', 'paddle'),
                         ('inference.json', 'paddle')):
        broken = tmp_path / name
        shutil.copytree(export_dir, broken)
        os.remove(broken / name)
        with pytest.raises(ExportError, match=f'{name} is missing'):
            Predictor(broken, engine=engine)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ExportError, match='no export.json'):
        Predictor(empty)


def test_onnx_from_another_model_is_refused(tmp_path, export_dir, other_export_dir):
    mixed = tmp_path / 'mixed'
    shutil.copytree(export_dir, mixed)
    shutil.copy(other_export_dir / 'model.onnx', mixed / 'model.onnx')
    with pytest.raises(ExportError, match='sha256'):
        Predictor(mixed)
    # Even with the checksum check off, the shapes give it away (2 classes, not 3).
    with pytest.raises(ExportError, match='another model'):
        Predictor(mixed, verify=False)


# Sliding windows ----------------------------------------------------------------------------


def test_windows_stream_in_batches_with_bounded_memory():
    """A 10-minute recording: windows are cut as batches fill, never all at once."""
    wave = noise(600.0, amp=0.01)
    calls = []

    def score(batch):
        calls.append(batch.shape)
        return np.stack([[b.std(), 1.0] for b in batch])

    tracemalloc.start()
    [(spans, scores)] = pipeline.run(pipeline.as_sources([wave]), score, SR, SR, 1.0, batch_size=8,
                                     window=5.0, hop=2.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(spans) == 239 and spans[0] == (0.0, 5.0) and spans[-1] == (595.0, 600.0)
    assert scores.shape == (239, 2)
    assert max(n for n, _ in calls) == 8 and all(shape == (8, 5 * SR) for shape in calls[:-1])
    all_windows = 239 * 5 * SR * 4  # bytes of every window at once: 150 MB
    assert peak < all_windows / 3, f'peak {peak / 1e6:.0f} MB'


def test_window_results_structure(export_dir):
    predictor = Predictor(export_dir)
    wave = np.concatenate([noise(3.0, amp=0.01), tone(800, 2.0), noise(2.2, amp=0.01)])
    [res] = predictor.predict([wave], sample_rate=SR, window=2.0, hop=1.0, top_k=2)
    assert set(res) == {'scores', 'timeline'} and len(res['scores']) == 2
    starts = [w['start'] for w in res['timeline']]
    assert starts == [0, 1, 2, 3, 4, 5, 5.2] and res['timeline'][-1]['end'] == 7.2
    assert all(len(w['scores']) == 2 for w in res['timeline'])
    [full] = predictor.predict([wave], sample_rate=SR, window=2.0, hop=1.0)
    windows = np.array([[w['scores'][k] for k in predictor.labels] for w in full['timeline']])
    [mx] = predictor.predict([wave], sample_rate=SR, window=2.0, hop=1.0, reduce='max')
    for i, label in enumerate(predictor.labels):
        assert full['scores'][label] == pytest.approx(windows[:, i].mean(), abs=1e-6)
        assert mx['scores'][label] == pytest.approx(windows[:, i].max(), abs=1e-6)
    # A clip shorter than the window is one window; a window shorter than MIN_SECONDS is padded.
    [short] = predictor.predict([tone(500, 1.5)], sample_rate=SR, window=5.0)
    assert [(w['start'], w['end']) for w in short['timeline']] == [(0.0, 1.5)]
    [tiny] = predictor.predict([tone(500, 1.0)], sample_rate=SR, window=0.25)
    assert len(tiny['timeline']) == 4


EVENT = chirp(500, 3000, 2.0, amp=0.5)


def quiet_noise(seconds, seed=3):
    return noise(seconds, amp=0.003, seed=seed)


def event_module():
    """CNN6 with weights chosen so that the 'event' class responds to loud sound.

    Every convolution averages its inputs, batch norms pass values through, and bn0 subtracts
    a -30 dB threshold: quiet noise gives an all-zero embedding, a loud tone a positive one,
    growing with how much of the window it fills. The head turns that into P(event).
    """
    m = loudness_weights(Module('panns_cnn6', task='sound-cls', label_map=['background', 'event'], pretrained=False))
    # Calibrate the head on a 5-s window holding the whole event:
    # logit(event) - logit(background) = 6 e / e_full - 3.
    window = quiet_noise(5.0)
    window[SR:3 * SR] += EVENT
    with paddle.no_grad():
        e_full = float(m.forward_features(paddle.to_tensor(logmel(window[None]))).numpy().mean())
    assert e_full > 0
    fc_w = np.zeros([512, 2], 'float32')
    fc_w[:, 1] = 6.0 / (512 * e_full)  # the 512 embedding entries are equal
    m.set_state_dict({'fc.weight': fc_w, 'fc.bias': np.array([0.0, -3.0], 'float32')})
    return m


@pytest.fixture(scope='module')
def recording():
    """60 s of low noise with a loud 2-s chirp from 31 s to 33 s."""
    wave = quiet_noise(60.0, seed=4)
    wave[31 * SR:33 * SR] += EVENT
    return wave


def _check_timeline(result):
    timeline = result['timeline']
    assert len(timeline) == 23
    event = np.array([w['scores']['event'] for w in timeline])
    peak = timeline[int(event.argmax())]
    assert (peak['start'], peak['end']) == (30.0, 35.0)  # the window that holds the whole event
    far = [w['scores']['event'] for w in timeline if w['end'] <= 30.5 or w['start'] >= 33.5]
    assert max(far) < 0.1 and event.max() > 0.9


def test_sliding_window_finds_the_event(tmp_path, recording):
    m = event_module()
    export_static(m, tmp_path / 'export', opset=13)
    path = tmp_path / 'long.wav'
    sf.write(path, np.stack([recording, recording], axis=1), SR)  # stereo file at the model rate
    [res] = Predictor(tmp_path / 'export').predict([str(path)], window=5.0, hop=2.5, batch_size=4)
    _check_timeline(res)
    [mx] = Predictor(tmp_path / 'export').predict([str(path)], window=5.0, hop=2.5, reduce='max')
    assert mx['scores']['event'] > 0.9 > res['scores']['event']
    # Module.predict: the same timeline on the fast engine and in dygraph.
    [fast] = m.predict([recording], sample_rate=SR, window=5.0, hop=2.5, batch_size=8)
    [slow] = m.predict([recording], sample_rate=SR, window=5.0, hop=2.5, batch_size=8, engine='dygraph')
    _check_timeline(fast)
    for a, b in zip(fast['timeline'], slow['timeline']):
        assert (a['start'], a['end']) == (b['start'], b['end'])
        assert a['scores']['event'] == pytest.approx(b['scores']['event'], abs=1e-4)
    assert_same_results([fast['scores']], [res['scores']])


# Module.predict engines ------------------------------------------------------------------------

def test_module_predict_fast_and_dygraph_agree(module, odd_files):
    fast = module.predict(odd_files, batch_size=4)                  # 5 inputs: onnxruntime
    slow = module.predict(odd_files, batch_size=4, engine='dygraph')
    assert_same_results(fast, slow)
    cache = os.path.join(os.environ['PADDLE_SOUNDCLS_HOME'], 'onnx')
    assert len(os.listdir(cache)) == 1  # exported once, reused
    assert_same_results(module.predict(odd_files, batch_size=2, top_k=1), [
        dict(list(r.items())[:1]) for r in slow])
    assert len(os.listdir(cache)) == 1
    assert_same_results(module.predict(odd_files[:2]), slow[:2])    # 2 inputs: dygraph
    with pytest.raises(ValueError, match='engine must be one of'):
        module.predict(odd_files, engine='tensorrt')
    with pytest.raises(ValueError, match='runs on the CPU'):
        module.predict(odd_files, engine='onnxruntime', use_gpu=True)
    # The engines of exports have the names Predictor gives them, and say where they run.
    for engine in ('paddle', 'onnxruntime_int8'):
        with pytest.raises(ValueError, match=rf"engine='{engine}' runs an export directory.*Predictor"):
            module.predict(odd_files, engine=engine)
    with pytest.warns(DeprecationWarning, match='topk is deprecated: use top_k') as warned:
        assert_same_results(module.predict(odd_files[:2], topk=1), [dict(list(r.items())[:1]) for r in slow[:2]])
    assert warned[0].filename == __file__   # charged to the caller's line, where Python shows it


def test_module_predict_reexports_after_training(odd_files):
    m = random_module(seed=5)
    before = m.predict(odd_files, engine='onnxruntime')
    m.fc.weight.set_value(m.fc.weight * 2.0)  # what an optimizer step would do
    after = m.predict(odd_files, engine='onnxruntime')
    assert_same_results(after, m.predict(odd_files, engine='dygraph'))
    assert not np.allclose(list(before[0].values()), list(after[0].values()))


def test_module_predict_falls_back_to_dygraph(module, odd_files, monkeypatch, caplog):
    from paddle_soundcls import hub

    def unavailable(m, part='scores'):
        raise RuntimeError('no onnxruntime here')

    monkeypatch.setattr(hub, '_onnx_scorer', unavailable)
    assert_same_results(module.predict(odd_files), module.predict(odd_files, engine='dygraph'))
    assert 'no onnxruntime here' in caplog.text
    with pytest.raises(RuntimeError, match='no onnxruntime here'):
        module.predict(odd_files, engine='onnxruntime')


# Paddle-free runtime ------------------------------------------------------------------------

def test_runtime_works_without_paddle(tmp_path, export_dir, odd_files):
    """`import paddle_soundcls.deploy` and Predictor run with paddle made unimportable."""
    code = BLOCK_PADDLE + textwrap.dedent(f'''
        import paddle_soundcls.deploy as deploy
        from paddle_soundcls.deploy import Predictor
        results = Predictor({str(export_dir)!r}).predict({odd_files!r}, top_k=2)
        [win] = Predictor({str(export_dir)!r}).predict({odd_files[1]!r}, window=0.5, hop=0.25)
        try:
            Predictor({str(export_dir)!r}, engine='paddle')
        except ImportError as exc:
            blocked = str(exc)
        assert not any(m == 'paddle' or m.startswith('paddle.') for m in sys.modules), 'paddle was imported'
        print(json.dumps({{'results': results, 'windows': len(win['timeline']), 'blocked': blocked}}))
    ''')
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out['results']) == len(odd_files) and out['windows'] == 5
    assert "No module named 'paddle'" in out['blocked'] and "engine='onnxruntime'" in out['blocked']
