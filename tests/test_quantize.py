"""int8 quantization: a small trained model, its int8 check, refusals, the int8 Predictor and CLI."""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import paddle
import pytest
import soundfile as sf

from helpers import BLOCK_PADDLE, prime_batchnorm, small_module
from offline import offline_env
from paddle_soundcls.deploy import ExportError, Predictor, exportdir
from paddle_soundcls.export import check_parity, export_onnx, export_static
from paddle_soundcls.export import quantize
from paddle_soundcls.features.mel import logmel
from paddle_soundcls import Module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000
CLASSES = ['tone', 'noise', 'chirp', 'clicks']


def make_clip(label, rng, seconds=None):
    """One generated clip of a class, at a random level (-30 to -6 dBFS) over faint noise.

    tone: a steady sinusoid (with some second harmonic); noise: a white-noise burst;
    chirp: a sweep up or down; clicks: a train of short decaying clicks.
    """
    seconds = rng.uniform(1.0, 2.5) if seconds is None else seconds
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if label == 'tone':
        f = rng.uniform(200, 4000)
        x = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) + rng.uniform(0, 0.5) * np.sin(4 * np.pi * f * t)
    elif label == 'noise':
        x = np.zeros(n)
        start, length = rng.integers(0, n // 2), rng.integers(n // 4, n // 2)
        x[start:start + length] = rng.standard_normal(min(length, n - start))
    elif label == 'chirp':
        f0, f1 = rng.uniform(200, 1000), rng.uniform(2000, 8000)
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    else:
        x = np.zeros(n)
        for start in np.arange(rng.uniform(0, 0.1), seconds, 1 / rng.uniform(3, 20)):
            i = int(start * SR)
            k = min(n - i, 64)
            x[i:i + k] += np.exp(-np.arange(k) / 8.0) * rng.choice([-1, 1])
    amp = 10 ** rng.uniform(-1.5, -0.3)
    x = amp * x / (np.abs(x).max() + 1e-9) + 10 ** rng.uniform(-3.5, -2.5) * rng.standard_normal(n)
    return x.astype('float32')


def write_set(folder, per_class, seed):
    """A class-folder data set: folder/<class>/<k>.wav, `per_class` clips of every class."""
    rng = np.random.default_rng(seed)
    for k in range(per_class):
        for label in CLASSES:
            os.makedirs(folder / label, exist_ok=True)
            sf.write(folder / label / f'{k:03d}.wav', make_clip(label, rng), SR)
    return folder


def train_small_model(seed=0):
    """CNN6 on the four generated classes: batch norm statistics from the data, then the
    classification head trained on the frozen embeddings (a few seconds on 2 CPUs)."""
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    module = Module('panns_cnn6', label_map=CLASSES, pretrained=False)
    clips = [(make_clip(label, rng, seconds=1.0), i) for _ in range(12) for i, label in enumerate(CLASSES)]
    waves = np.stack([w for w, _ in clips])
    labels = paddle.to_tensor(np.array([i for _, i in clips]))
    prime_batchnorm(module, waves[:24])
    with paddle.no_grad():
        embedding = module.forward_features(module.frontend(paddle.to_tensor(waves)))
    optimizer = paddle.optimizer.Adam(1e-2, parameters=module.fc.parameters())
    for _ in range(300):
        loss = paddle.nn.functional.cross_entropy(module.fc(embedding), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    module.eval()
    return module


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A trained CNN6 (checkpoint + float export), calibration clips and separate check clips."""
    root = tmp_path_factory.mktemp('int8')
    module = train_small_model()
    module.save(str(root / 'ckpt'))
    export_static(module, root / 'export', opset=13)
    write_set(root / 'calib', 6, seed=1)
    write_set(root / 'check', 12, seed=2)
    return root


@pytest.fixture(scope='module')
def quantized(work, tmp_path_factory):
    """The export with an int8 model made and checked by quantize_export."""
    out = tmp_path_factory.mktemp('quantized') / 'export'
    shutil.copytree(work / 'export', out)
    info = quantize.quantize_export(out, work / 'calib', check=work / 'check', progress=False)
    return out, info


def test_quantize_export_records_everything(work, quantized):
    out, info = quantized
    meta = exportdir.read_export(out)
    assert meta['int8'] == info and info['file'] == 'model.int8.onnx'
    assert meta['files']['model.int8.onnx']['sha256'] == exportdir.sha256_file(out / 'model.int8.onnx')
    assert info['source_sha256'] == meta['files']['model.onnx']['sha256']
    # The float export is untouched.
    for name in ('model.onnx', 'inference.json', 'inference.pdiparams'):
        assert (out / name).read_bytes() == (work / 'export' / name).read_bytes()
    calibration = sorted(str(p) for p in (work / 'calib').rglob('*.wav'))
    digest = hashlib.sha256(''.join(hashlib.sha256(open(p, 'rb').read()).hexdigest() for p in calibration).encode())
    assert info['calibration'] == {'data': str(work / 'calib'), 'clips': 24, 'digest': digest.hexdigest(),
                                   'seconds': 5.0, 'method': 'minmax'}
    assert info['per_channel'] is True and info['quant_format'] == 'QDQ'
    assert (info['activation_type'], info['weight_type']) == ('uint8', 'int8')
    assert info['onnxruntime'] == ort.__version__ and info['checked'] is True
    assert info['keep_float'] == ['stem', 'head'] and 'Softmax.0' in info['nodes_excluded']
    import onnx
    model = onnx.load(str(out / 'model.int8.onnx'))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count('QuantizeLinear') > 0 and ops[-1] == 'Softmax'  # scores come straight from a float softmax


def _scores(path, features):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return np.concatenate([session.run(None, {'features': f[None]})[0] for f in features])


def test_check_figures_match_an_independent_computation(work, quantized):
    out, info = quantized
    files = sorted((work / 'check').rglob('*.wav'))
    truth = np.array([CLASSES.index(p.parent.name) for p in files])
    features = [logmel(sf.read(p, dtype='float32')[0]) for p in files]  # 32 kHz mono, all >= 1 s
    fp32, int8 = _scores(out / 'model.onnx', features), _scores(out / 'model.int8.onnx', features)
    check = info['check']
    assert check['clips'] == len(files) == 48
    assert check['top1_agreement'] == pytest.approx(float((fp32.argmax(1) == int8.argmax(1)).mean()))
    assert check['disagreements'] == int((fp32.argmax(1) != int8.argmax(1)).sum())
    assert check['accuracy_fp32'] == pytest.approx(100 * (fp32.argmax(1) == truth).mean(), abs=1e-3)
    assert check['accuracy_int8'] == pytest.approx(100 * (int8.argmax(1) == truth).mean(), abs=1e-3)
    assert check['max_abs_diff'] == pytest.approx(float(np.abs(fp32 - int8).max()), abs=1e-4)
    # A trained model whose int8 version gives the same answers: the check passes.
    assert check['accuracy_fp32'] >= 80 and check['passed']
    assert check['top1_agreement'] >= 0.99 and check['accuracy_drop'] <= 0.5
    # The Paddle-vs-onnxruntime parity check reports the int8 figures too.
    parity = check_parity(out, work / 'check')
    assert parity['passed'] and parity['int8']['passed']
    for key in ('top1_agreement', 'disagreements', 'accuracy_fp32', 'accuracy_int8'):
        assert parity['int8'][key] == check[key]


def test_bad_calibration_is_refused(work, tmp_path):
    """Calibration on silence with every layer quantized: the input range fitted to silence
    (-100 dB everywhere) clips every real clip's features, and the answers go wrong.

    (With the stem left float, the default, this model gives the same answers even when
    calibrated on silence: the refusal needs the input itself quantized.)
    """
    silence = tmp_path / 'silence'
    silence.mkdir()
    for k in range(4):
        sf.write(silence / f'{k}.wav', np.zeros(2 * SR, 'float32'), SR)
    out = tmp_path / 'export'
    shutil.copytree(work / 'export', out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(quantize.QuantizationRefused, match='refused.*agreement') as refused:
        quantize.quantize_export(out, silence, check=work / 'check', keep_float=(), progress=False)
    assert not refused.value.summary['passed'] and refused.value.summary['top1_agreement'] < 0.99
    assert sorted(os.listdir(out)) == sorted(before)  # no model.int8.onnx, nothing left behind
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == ['export', 'silence']  # no temporary directory left
    Predictor(out)  # the float model still runs
    with pytest.raises(ExportError, match='model.int8.onnx is missing.*--quantize int8 --calibration'):
        Predictor(out, engine='onnxruntime_int8')

    # Forced: kept, and export.json says it failed its check.
    info = quantize.quantize_export(out, silence, check=work / 'check', keep_float=(), force=True, progress=False)
    assert info['forced'] and not info['check']['passed'] and (out / 'model.int8.onnx').is_file()

    # The command line: exit status 1, a clear message, the int8 model removed, the rest kept;
    # run where any attempt to install a package is caught (tests/test_export.py's harness).
    env, pip_log = offline_env(tmp_path)
    proc = run_tool('export_onnx.py', '--model-dir', out, '--quantize', 'int8', '--calibration', silence,
                    '--check', work / 'check', '--keep-float', 'none', env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert not pip_log.exists(), f'a package installation was attempted: {pip_log.read_text()}'
    assert 'int8 model refused' in proc.stderr and 'Traceback' not in proc.stderr
    assert json.loads(proc.stdout)['int8']['refused'] is True
    assert not (out / 'model.int8.onnx').exists() and 'int8' not in exportdir.read_export(out)
    assert (out / 'model.onnx').read_bytes() == before['model.onnx']


def test_calibration_clips_cannot_be_the_check_clips(work, tmp_path):
    out = tmp_path / 'export'
    shutil.copytree(work / 'export', out)
    with pytest.raises(ValueError, match='also calibration clips'):
        quantize.quantize_export(out, work / 'calib', check=work / 'calib', progress=False)
    copy = tmp_path / 'copy'
    shutil.copytree(work / 'calib' / 'tone', copy / 'tone')  # the same clips under another name
    with pytest.raises(ValueError, match='6 of the 6 check clips are also calibration clips'):
        quantize.quantize_export(out, work / 'calib', check=copy, progress=False)
    assert sorted(os.listdir(out)) == sorted(os.listdir(work / 'export'))
    # The command line refuses before exporting anything.
    proc = run_tool(None, 'export', '--checkpoint', work / 'ckpt', '--output', tmp_path / 'new', '--quantize', 'int8',
                    '--calibration', work / 'calib', '--check', work / 'calib')
    assert proc.returncode == 2 and 'also calibration clips' in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / 'new').exists()
    proc = run_tool(None, 'export', '--checkpoint', work / 'ckpt', '--output', tmp_path / 'new', '--quantize', 'int8')
    assert proc.returncode == 2 and '--calibration' in proc.stderr


def test_unchecked_int8_is_said_loudly_and_recorded(work, tmp_path, caplog):
    out = tmp_path / 'export'
    shutil.copytree(work / 'export', out)
    with caplog.at_level(logging.WARNING):
        info = quantize.quantize_export(out, work / 'calib', limit=8, progress=False)
    assert 'UNCHECKED' in caplog.text and '--check' in caplog.text
    assert info['checked'] is False and info['check'] is None and info['calibration']['clips'] == 8
    assert exportdir.read_export(out)['int8']['checked'] is False


def test_tagger_keeps_float_sigmoid_scores(work, tmp_path):
    export_static(small_module(task=None), tmp_path / 'tagger', opset=13)
    info = quantize.quantize_export(tmp_path / 'tagger', work / 'calib', limit=4, progress=False)
    import onnx
    assert onnx.load(str(tmp_path / 'tagger' / 'model.int8.onnx')).graph.node[-1].op_type == 'Sigmoid'
    assert 'Sigmoid.0' in info['nodes_excluded']
    [tags] = Predictor(tmp_path / 'tagger', engine='onnxruntime_int8').predict([str(work / 'check' / 'tone' / '000.wav')])
    assert len(tags) == 527 and all(0 < score < 1 for score in tags.values())


def test_new_float_model_drops_the_old_int8(quantized, tmp_path):
    out = tmp_path / 'export'
    shutil.copytree(quantized[0], out)
    meta = export_onnx(out)
    assert 'int8' not in meta and not (out / 'model.int8.onnx').exists()
    # An int8 model made from another model.onnx is refused, even with a matching sha256 record.
    shutil.copy(quantized[0] / 'model.int8.onnx', out / 'model.int8.onnx')
    meta = json.loads((out / 'export.json').read_text())
    meta['files']['model.int8.onnx'] = exportdir.file_record(out / 'model.int8.onnx')
    meta['int8'] = {'file': 'model.int8.onnx', 'source_sha256': '0' * 64}
    (out / 'export.json').write_text(json.dumps(meta))
    with pytest.raises(ExportError, match='made from another model.onnx'):
        Predictor(out, engine='onnxruntime_int8')


def test_predictor_arguments(quantized):
    out, _ = quantized
    with pytest.raises(ValueError, match='precision must be .*int8'):
        Predictor(out, precision='int4')
    with pytest.raises(ValueError, match="runs on engine='onnxruntime'.*onnxruntime_int8"):
        Predictor(out, engine='paddle', precision='int8')
    assert Predictor(out, engine='onnxruntime_int8').precision == 'int8'
    # The old spelling still works, with a DeprecationWarning.
    with pytest.warns(DeprecationWarning, match="engine='onnxruntime_int8'"):
        old = Predictor(out, precision='int8')
    assert old.precision == 'int8' and old.engine_name == 'onnxruntime'
    with pytest.raises(ValueError, match="engine='dygraph' runs a Module"):
        Predictor(out, engine='dygraph')
    assert Predictor(out, engine='auto').engine_name == 'onnxruntime'


def test_int8_predictor_runs_without_paddle(work, quantized):
    out, _ = quantized
    files = [str(p) for p in sorted((work / 'check' / 'chirp').glob('*.wav'))[:4]]
    code = BLOCK_PADDLE + textwrap.dedent(f'''
        from paddle_soundcls.deploy import Predictor
        results = Predictor({str(out)!r}, engine='onnxruntime_int8').predict({files!r})
        assert not any(m == 'paddle' or m.startswith('paddle.') for m in sys.modules), 'paddle was imported'
        print(json.dumps(results))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = Predictor(out, engine='onnxruntime_int8').predict(files)
    assert [list(r) for r in results] == [list(r) for r in expected]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-6)
    float_results = Predictor(out).predict(files)
    assert [next(iter(r)) for r in results] == [next(iter(r)) for r in float_results]


def test_cli_predict_int8(work, quantized):
    out, _ = quantized
    clip = work / 'check' / 'tone' / '000.wav'
    proc = run_tool(None, 'predict', out, clip, '--precision', 'int8', '--topk', 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record] = [json.loads(line) for line in proc.stdout.splitlines()]
    [expected] = Predictor(out, engine='onnxruntime_int8').predict([str(clip)], top_k=2)
    assert list(record['scores']) == list(expected)
    proc = run_tool(None, 'predict', work / 'export', clip, '--precision', 'int8')
    assert proc.returncode == 2 and 'model.int8.onnx is missing' in proc.stderr and '--quantize int8' in proc.stderr
    proc = run_tool(None, 'predict', work / 'ckpt', clip, '--precision', 'int8')
    assert proc.returncode == 2 and 'needs an export directory' in proc.stderr


def test_centre_crop_or_pad_and_clip_selection(tmp_path):
    wave = np.arange(10, dtype='float32')
    np.testing.assert_array_equal(quantize.centre_crop_or_pad(wave, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(quantize.centre_crop_or_pad(wave[:3], 7), [0, 0, 0, 1, 2, 0, 0])
    data = write_set(tmp_path / 'data', 5, seed=3)  # 20 clips, 5 per class, sorted by class
    chosen = quantize.select_clips(data, limit=8)
    assert len(chosen) == 8 and {os.path.basename(os.path.dirname(p)) for p in chosen} == set(CLASSES)
    with pytest.raises(ValueError, match='limit'):
        quantize.select_clips(data, limit=0)
    with pytest.raises(ValueError, match='calibration method'):
        quantize.quantize_export(tmp_path, data, method='kl')


def test_benchmark_reports_int8():
    from paddle_soundcls.analysis import benchmark
    result = benchmark.run('panns_cnn6', seconds=1.0, batch_size=2, iterations=1)
    int8 = result['onnxruntime_int8']
    assert int8['clips_per_s'] > 0 and int8['speedup_vs_onnxruntime'] > 0
    assert int8['quantization']['calibration'] == f'{benchmark.CALIBRATION_CLIPS} generated clips'


def run_tool(tool, *args, env=None):
    """`python tools/TOOL ARGS`, or `paddle-soundcls ARGS` when tool is None, as a user runs it."""
    cmd = [sys.executable, os.path.join(REPO, 'tools', tool)] if tool else [sys.executable, '-m', 'paddle_soundcls.cli']
    return subprocess.run(cmd + [str(a) for a in args], env=env or dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=300, cwd=REPO)
