"""TFLite and SavedModel exports (export --format tflite savedmodel): converted offline, checked
against onnxruntime and Paddle Inference, int8 checked like int8 ONNX, and run by the Predictor and
the command line with neither Paddle nor onnxruntime."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from helpers import BLOCK_PADDLE
from offline import offline_env
from test_export import random_module
from test_quantize import CLASSES, make_clip, train_small_model, write_set
from paddle_soundcls.deploy import ExportError, Predictor, exportdir
from paddle_soundcls.errors import QuantizationRefused
from paddle_soundcls.export import export_onnx, export_static
from paddle_soundcls.export import tflite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000
# Neither Paddle nor onnxruntime importable: what a phone-like deployment has.
BLOCK_PADDLE_AND_ORT = BLOCK_PADDLE.replace("blocked = ('paddle', 'paddle2onnx')",
                                            "blocked = ('paddle', 'paddle2onnx', 'onnxruntime')")


def cli(args, env=None, timeout=900):
    proc = subprocess.run([sys.executable, '-m', 'paddle_soundcls.cli'] + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A trained CNN6 exported in one command, offline, with ONNX (and its int8), TFLite (float and
    int8, checked) and a SavedModel; calibration and check clips apart."""
    root = tmp_path_factory.mktemp('tflite')
    train_small_model().save(str(root / 'ckpt'))
    write_set(root / 'calib', 6, seed=1)
    write_set(root / 'check', 12, seed=2)
    env, log = offline_env(root, block_network=True)
    proc = cli(['export', '--checkpoint', root / 'ckpt', '--output', root / 'export', '--format', 'onnx', 'tflite',
                'savedmodel', '--quantize', 'int8', '--calibration', root / 'calib', '--check', root / 'check'], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists(), f'the conversion tried to install or download: {log.read_text()}'
    return root, json.loads(proc.stdout)


def test_export_records_the_tensorflow_models(work):
    root, summary = work
    out = root / 'export'
    meta = exportdir.read_export(out)
    for name in ('model.tflite', 'model.frames.tflite', 'model.embed.tflite', 'model.int8.tflite',
                 'saved_model/saved_model.pb', 'model.onnx', 'model.int8.onnx'):
        assert meta['files'][name]['sha256'] == exportdir.sha256_file(out / name), name
    assert any(name.startswith('saved_model/variables/') for name in meta['files'])
    entry = meta['tflite']
    assert (entry['file'], entry['frames'], entry['embed']) == ('model.tflite', 'model.frames.tflite',
                                                                'model.embed.tflite')
    assert entry['source_sha256'] == {name: meta['files'][name]['sha256']
                                      for name in ('model.onnx', 'model.frames.onnx', 'model.embed.onnx')}
    assert all(entry['probe'][key] <= tflite.PROBE_TOLERANCE for key in ('scores', 'frames', 'embed'))
    assert entry['converter'].startswith('onnx2tf ')
    assert entry['check']['passed'] and entry['check']['engine'] == 'tflite' and entry['check']['clips'] == 48
    assert entry['check']['accuracy_paddle'] == entry['check']['accuracy_tflite']
    int8 = meta['tflite_int8']
    assert int8['checked'] and int8['check']['passed'] and int8['check']['runtime'] == 'tflite'
    assert int8['calibration']['clips'] == 24 and 'forced' not in int8
    assert meta['savedmodel']['dir'] == 'saved_model'
    assert meta['int8']['checked']   # the ONNX int8 model beside it, made in the same command
    assert summary['tflite'] == entry and summary['tflite_int8'] == int8 and summary['files'] == meta['files']


def _check_clips(root):
    return sorted(str(p) for p in (root / 'check').rglob('*.wav'))


def test_tflite_predictor_matches_onnxruntime(work):
    """predict, windowed predict, detect and embed on the TFLite interpreter give onnxruntime's answers."""
    root, _ = work
    out = root / 'export'
    ort, tfl = Predictor(out), Predictor(out, engine='tflite')
    assert (tfl.engine_name, tfl.precision, tfl.frames_precision) == ('tflite', 'fp32', 'fp32')
    clips = _check_clips(root)[:12]
    for a, b in zip(ort.scores(clips), tfl.scores(clips)):
        np.testing.assert_allclose(b, a, atol=1e-4)
    rng = np.random.default_rng(3)
    scene = np.concatenate([make_clip(label, rng, 1.5) for label in CLASSES + CLASSES])
    (spans_a, windows_a), = ort.scores([scene], sample_rate=SR, window=1.0, hop=0.5)
    (spans_b, windows_b), = tfl.scores([scene], sample_rate=SR, window=1.0, hop=0.5)
    np.testing.assert_array_equal(spans_a, spans_b)
    np.testing.assert_allclose(windows_b, windows_a, atol=1e-4)
    (events_a,), (events_b,) = ort.detect([scene], sample_rate=SR), tfl.detect([scene], sample_rate=SR)
    np.testing.assert_allclose(events_b['frame_scores'], events_a['frame_scores'], atol=1e-4)
    assert [e['label'] for e in events_b['events']] == [e['label'] for e in events_a['events']]
    assert events_a['events'], 'the scene should hold events'
    (emb_a,), (emb_b,) = ort.embed([scene], sample_rate=SR), tfl.embed([scene], sample_rate=SR)
    scale = max(1.0, float(np.abs(emb_a['embeddings']).max()))
    np.testing.assert_allclose(emb_b['embeddings'], emb_a['embeddings'], atol=1e-4 * scale)


def test_int8_tflite_agrees_with_float(work):
    """The full-integer model: int8 input and output, scales applied by the engine; its best label
    is the float model's on the check clips."""
    root, _ = work
    int8 = Predictor(root / 'export', engine='tflite_int8')
    assert int8.precision == 'int8' and int8.engine.input['dtype'] == np.int8
    assert int8.engine.output['dtype'] == np.int8
    clips = _check_clips(root)
    a = np.stack(Predictor(root / 'export', engine='tflite').scores(clips))
    b = np.stack(int8.scores(clips))
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    # Dequantized with the file's scales: softmax scores again (int8 steps of 1/256 apart).
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=0.05)
    assert np.abs(a - b).mean() < 0.05
    assert os.path.getsize(root / 'export' / 'model.int8.tflite') < 0.4 * os.path.getsize(
        root / 'export' / 'model.tflite')


def test_savedmodel_runs_in_tensorflow(work):
    """saved_model/ in TensorFlow itself (a subprocess: TensorFlow is heavy to import)."""
    root, _ = work
    out = root / 'export'
    meta = exportdir.read_export(out)
    features = Predictor(out).features(np.stack([make_clip('tone', np.random.default_rng(5), 2.0),
                                                 make_clip('chirp', np.random.default_rng(6), 2.0)]))
    np.save(root / 'features.npy', features)
    code = textwrap.dedent(f'''
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load({str(out / 'saved_model')!r})
        signature = model.signatures['serving_default']
        outputs = signature(features=tf.constant(np.load({str(root / 'features.npy')!r})))
        np.save({str(root / 'tf_scores.npy')!r}, list(outputs.values())[0].numpy())
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = Predictor(out).engine(features)
    np.testing.assert_allclose(np.load(root / 'tf_scores.npy'), expected, atol=1e-4)
    assert meta['savedmodel']['source_sha256'] == meta['files']['model.onnx']['sha256']


@pytest.fixture(scope='module')
def tagger(tmp_path_factory):
    """A random CNN6 tagger (527 labels) with TFLite graphs."""
    root = tmp_path_factory.mktemp('tflite_tagger')
    export_static(random_module('panns_cnn6', None), root / 'export', opset=13)
    made = tflite.export_tensorflow(root / 'export', ('tflite',), progress=False)
    assert set(made) == {'tflite'} and made['tflite']['check'] is None
    rng = np.random.default_rng(0)
    for i, label in enumerate(CLASSES):
        sf.write(root / f'{label}.wav', np.concatenate([make_clip(label, rng, 2.0), make_clip('tone', rng, 1.0)]), SR)
    return root


def test_cli_runs_tflite_without_paddle_or_onnxruntime(tagger, tmp_path):
    """predict, tag and events on the TFLite engine, in a process where importing Paddle or
    onnxruntime fails; the rows are those of the onnxruntime engine."""
    out = str(tagger / 'export')
    wavs = sorted(str(p) for p in tagger.glob('*.wav'))
    results = {}
    for engine in ('tflite', 'onnxruntime'):
        code = (BLOCK_PADDLE_AND_ORT if engine == 'tflite' else 'import json, sys\n') + textwrap.dedent(f'''
            from paddle_soundcls.cli import main
            statuses = []
            for command, args in (('predict', [{out!r}] + {wavs!r}),
                                  ('tag', {wavs!r} + ['--model-dir', {out!r}]),
                                  ('events', [{out!r}] + {wavs!r})):
                statuses.append(main([command] + args + ['--engine', {engine!r},
                                      '--jsonl', {str(tmp_path / engine)!r} + '.' + command + '.jsonl']))
            blocked = [m for m in sys.modules if m.split('.')[0] in ('paddle', 'onnxruntime')]
            assert {engine!r} != 'tflite' or not blocked, blocked
            print(json.dumps({{'status': statuses}}))
        ''')
        proc = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=REPO),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {'status': [0, 0, 0]}
        results[engine] = {command: [json.loads(line) for line in open(tmp_path / f'{engine}.{command}.jsonl')]
                           for command in ('predict', 'tag', 'events')}
    for command in ('predict', 'tag'):
        for a, b in zip(results['onnxruntime'][command], results['tflite'][command]):
            assert a['input'] == b['input'] and set(a['scores']) == set(b['scores'])   # every label
            np.testing.assert_allclose([b['scores'][k] for k in a['scores']], list(a['scores'].values()), atol=1e-4)
    for a, b in zip(results['onnxruntime']['events'], results['tflite']['events']):
        assert [e['label'] for e in a['events']] == [e['label'] for e in b['events']]
        for x, y in zip(a['events'], b['events']):
            assert abs(x['onset'] - y['onset']) < 1e-6 and abs(x['offset'] - y['offset']) < 1e-6


def test_a_wrong_conversion_is_refused_and_the_export_kept(tagger, tmp_path, monkeypatch):
    """A converted graph that computes something else (here: the frames graph in place of the
    scores graph) fails the probe; nothing of the export changes."""
    out = tmp_path / 'export'
    shutil.copytree(tagger / 'export', out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = tflite.convert_graph

    def swapped(onnx_path, out_dir, calibration_npy=None):
        if os.path.basename(onnx_path) == 'model.onnx':
            onnx_path = os.path.join(os.path.dirname(onnx_path), 'model.embed.onnx')
        paths = real(onnx_path, out_dir, calibration_npy)
        return paths
    monkeypatch.setattr(tflite, 'convert_graph', swapped)
    with pytest.raises(ExportError, match='model.onnx does not compute what it does.*unchanged'):
        tflite.export_tensorflow(out, ('tflite',), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_int8_refused_keeps_the_float_models(work, tmp_path, monkeypatch):
    """A check the int8 model cannot pass: model.int8.tflite is not kept, the float TFLite is."""
    root, _ = work
    out = tmp_path / 'export'
    shutil.copytree(root / 'export', out)
    from paddle_soundcls.export import parity
    strict = parity.check_int8
    monkeypatch.setattr(parity, 'check_int8', lambda *a, **k: strict(*a, **dict(k, min_agreement=1.01)))
    with pytest.raises(QuantizationRefused, match='model.int8.tflite was not kept'):
        tflite.export_tensorflow(out, ('tflite',), check=root / 'check', int8=True, calibration=root / 'calib',
                                 progress=False)
    meta = exportdir.read_export(out)
    assert 'tflite_int8' not in meta and not (out / 'model.int8.tflite').exists()
    assert meta['tflite']['check']['passed'] and (out / 'model.tflite').exists()
    # A format not asked for is kept as it was.
    assert meta['savedmodel'] == exportdir.read_export(root / 'export')['savedmodel']
    assert (out / 'saved_model' / 'saved_model.pb').read_bytes() == (root / 'export' / 'saved_model' /
                                                                     'saved_model.pb').read_bytes()
    with pytest.raises(ExportError, match='model.int8.tflite is missing.*--format tflite --quantize int8'):
        Predictor(out, engine='tflite_int8')


def test_remade_onnx_drops_the_tensorflow_models(tagger, tmp_path):
    """They were converted from the old ONNX graphs: remaking those forgets them."""
    out = tmp_path / 'export'
    shutil.copytree(tagger / 'export', out)
    export_onnx(out)
    meta = exportdir.read_export(out)
    assert 'tflite' not in meta and not list(out.glob('*.tflite'))
    assert not [name for name in meta['files'] if name.endswith('.tflite')]
    with pytest.raises(ExportError, match='model.tflite is missing.*--format tflite'):
        Predictor(out, engine='tflite')


def test_tflite_of_another_onnx_is_refused(tagger, tmp_path):
    out = tmp_path / 'export'
    shutil.copytree(tagger / 'export', out)
    meta = json.loads((out / 'export.json').read_text())
    meta['tflite']['source_sha256']['model.onnx'] = '0' * 64
    (out / 'export.json').write_text(json.dumps(meta))
    with pytest.raises(ExportError, match='converted from another model.onnx'):
        Predictor(out, engine='tflite')


def test_cli_errors(tagger, tmp_path):
    proc = cli(['export', '--model-dir', tagger / 'export', '--format', 'savedmodel', '--quantize', 'int8',
                '--calibration', tagger])
    assert proc.returncode != 0 and 'int8' in proc.stderr and 'tflite' in proc.stderr
    proc = cli(['export', '--checkpoint', tmp_path, '--output', tmp_path / 'x', '--no-onnx', '--format', 'tflite'])
    assert proc.returncode != 0 and '--no-onnx' in proc.stderr
    proc = cli(['predict', tmp_path, str(next(tagger.glob('*.wav'))), '--engine', 'tflite'])
    assert proc.returncode != 0 and 'TFLite' in proc.stderr


def app_features(wave, frontend, arrays):
    """The front end as an app computes it from export.json's settings and frontend.npz alone
    (the recipe of docs/deploy.md): frames, window, FFT, power, mel filter bank, log."""
    x = np.asarray(wave, np.float64)
    if frontend['preemphasis'] is not None:
        x = x[1:] - frontend['preemphasis'] * x[:-1]
    n_fft, hop = frontend['n_fft'], frontend['hop_length']
    if frontend['center']:
        x = np.pad(x, n_fft // 2, mode=frontend['pad_mode'])
    starts = range(0, len(x) - n_fft + 1, hop)
    frames = np.stack([x[s:s + n_fft] for s in starts]) * arrays['window']
    mel = (np.abs(np.fft.rfft(frames, axis=1)) ** frontend['power']) @ arrays['mel_filterbank']
    if frontend['log'] == 'db':
        out = 10 * np.log10(np.maximum(mel, frontend['amin'])) - 10 * np.log10(max(frontend['amin'], frontend['ref']))
        if frontend['top_db'] is not None:
            out = np.maximum(out, out.max() - frontend['top_db'])
    else:
        out = np.log(mel + frontend['log_offset'])
    return (out + frontend['shift']) / frontend['scale']


def test_the_front_end_recipe_gives_the_features(work):
    """frontend.npz and export.json's settings are all app code needs: its features are the
    Predictor's within 1e-4 (the PANNs front end here; tests/test_features.py checks every
    family's front end against librosa)."""
    rng = np.random.default_rng(9)
    wave = make_clip('chirp', rng, 2.3)
    out = work[0] / 'export'
    meta = exportdir.read_export(out)
    arrays = np.load(out / 'frontend.npz')
    assert meta['tflite']['frontend_arrays'] == 'frontend.npz'
    assert meta['files']['frontend.npz']['sha256'] == exportdir.sha256_file(out / 'frontend.npz')
    expected = Predictor(out).features(wave[None])[0]
    np.testing.assert_allclose(app_features(wave, meta['frontend'], arrays), expected, atol=1e-4, rtol=1e-5)


def test_serve_runs_tflite_without_paddle_or_onnxruntime(work, tmp_path):
    """`serve --engine tflite` in a process where Paddle and onnxruntime cannot be imported: the
    scores of /v1/classify are the Predictor's."""
    import httpx
    from serve_fixtures import serve_in_process
    root, _ = work
    clip = _check_clips(root)[0]
    with serve_in_process(root / 'export', '--engine', 'tflite', prelude=BLOCK_PADDLE_AND_ORT) as (url, _):
        response = httpx.post(url + '/v1/classify?top_k=4', content=open(clip, 'rb').read(),
                              headers={'content-type': 'audio/wav'}, timeout=60)
    assert response.status_code == 200, response.text
    expected = Predictor(root / 'export', engine='tflite').predict([clip])[0]
    got = {r['label']: r['score'] for r in response.json()['results']}
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-5)


def test_a_missing_converter_names_the_install(monkeypatch):
    import importlib.metadata as metadata
    real = metadata.version

    def version(name):
        if name == 'onnx2tf':
            raise metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(metadata, 'version', version)
    with pytest.raises(ExportError, match=r"onnx2tf is not installed: pip install 'paddle_soundcls\[tflite\]'"):
        tflite.converter_versions()


def test_a_failed_resize_does_not_break_the_engine(tagger):
    """A call the interpreter cannot take (no frames) fails alone: the next call of the shape
    before it runs."""
    from paddle_soundcls.deploy.engines import TFLiteEngine
    engine = TFLiteEngine(tagger / 'export' / 'model.tflite', 1)
    features = np.full((1, 300, 64), -40.0, np.float32)
    expected = engine(features)
    with pytest.raises(Exception):
        engine(np.zeros((1, 0, 64), np.float32))
    np.testing.assert_array_equal(engine(features), expected)


@pytest.mark.parametrize('edit, message', [
    (lambda meta: meta.update(tflite='x'), '"tflite" must be an object'),
    (lambda meta: meta['tflite'].update(source_sha256=None), '"tflite" must be an object'),
    (lambda meta: meta.pop('tflite'), 'lists model.tflite but has no "tflite" entry'),
    (lambda meta: meta['tflite']['source_sha256'].update({'model.frames.onnx': '0' * 64}),
     'model.frames.tflite was converted from another model.frames.onnx'),
])
def test_damaged_tflite_entries_are_refused(tagger, tmp_path, edit, message):
    out = tmp_path / 'export'
    shutil.copytree(tagger / 'export', out)
    meta = json.loads((out / 'export.json').read_text())
    edit(meta)
    (out / 'export.json').write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=message):
        Predictor(out, engine='tflite')


def test_converting_float_again_keeps_the_int8_model():
    """`--format tflite` without --quantize remakes the float models only: model.int8.tflite, made
    from the same model.onnx, stays; remade ONNX graphs drop everything."""
    def meta():
        return {'files': {name: {} for name in ('model.onnx', 'model.tflite', 'model.frames.tflite', 'model.int8.tflite',
                                                'frontend.npz', 'saved_model/saved_model.pb')},
                'tflite': {}, 'tflite_int8': {}, 'savedmodel': {}}
    kept = meta()
    exportdir.drop_tensorflow(kept, ('tflite',))
    assert set(kept['files']) == {'model.onnx', 'model.int8.tflite', 'saved_model/saved_model.pb'}
    assert set(kept) == {'files', 'tflite_int8', 'savedmodel'}
    dropped = meta()
    assert 'saved_model' in exportdir.drop_tensorflow(dropped)
    assert set(dropped) == {'files'} and set(dropped['files']) == {'model.onnx'}
