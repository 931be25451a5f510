"""The command line end to end, in subprocesses: paddle-soundcls and tools/export_*.py."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import soundfile as sf

from paddle_soundcls.hub import Module
from signals import chirp, noise, tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000
LABELS = ['dog', 'rain', 'siren']


def run(*args, tool=None, env=None, timeout=300):
    """Run `paddle-soundcls ARGS` (or a tools/ script) the way a user would; returns the process."""
    cmd = [sys.executable, os.path.join(REPO, 'tools', tool)] if tool else [sys.executable, '-m', 'paddle_soundcls.cli']
    env = dict(os.environ, PYTHONPATH=REPO, **{k: str(v) for k, v in (env or {}).items()})
    return subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def assert_user_error(proc, *words):
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A checkpoint, its export (via the CLI), a tagging checkpoint, and a small labelled data set."""
    root = tmp_path_factory.mktemp('cli')
    paddle.seed(0)
    module = Module('panns_cnn6', label_map=LABELS, pretrained=False)
    module.backbone.bn0._mean.set_value(paddle.full([64], -40.0))
    module.backbone.bn0._variance.set_value(paddle.full([64], 900.0))
    module.save(str(root / 'ckpt'))
    Module('panns_cnn6', task=None, pretrained=False).save(str(root / 'tagger_ckpt'))
    clips = {'dog': tone(440, 1.5), 'rain': noise(1.5, amp=0.2), 'siren': chirp(300, 3000, 1.5)}
    for label, wave in clips.items():
        (root / 'data' / label).mkdir(parents=True)
        sf.write(root / 'data' / label / f'{label}.wav', wave, SR)
    sf.write(root / 'long.wav', np.concatenate([noise(4.0, sr=44100, amp=0.01), tone(900, 3.0, sr=44100)]), 44100)
    (root / 'notes.txt').write_text('hello')
    (root / 'fake.wav').write_text('not audio')
    proc = run('export', '--checkpoint', root / 'ckpt', '--output', root / 'export', '--check', root / 'data')
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / 'export_summary.json').write_text(proc.stdout)
    return root


def test_export_with_parity_check(workdir):
    summary = json.loads((workdir / 'export_summary.json').read_text())
    assert summary['model'] == 'panns_cnn6' and summary['task'] == 'sound-cls' and summary['classes'] == 3
    assert set(summary['files']) == {'inference.json', 'inference.pdiparams', 'model.onnx'}
    parity = summary['parity']
    assert parity['passed'] and parity['clips'] == 3 and parity['top1_agreement'] == 1.0
    assert parity['accuracy_paddle'] == parity['accuracy_onnxruntime']


def test_predict_export_dir_jsonl_and_table(workdir):
    proc = run('predict', workdir / 'export', workdir / 'data', '--topk', 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [os.path.basename(r['input']) for r in lines] == ['dog.wav', 'rain.wav', 'siren.wav']
    assert all(len(r['scores']) == 2 and set(r['scores']) <= set(LABELS) for r in lines)

    proc = run('predict', workdir / 'export', workdir / 'data' / 'dog' / 'dog.wav', '--format', 'table',
               '--engine', 'paddle')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].endswith('dog.wav')
    assert sorted(line.split()[1] for line in proc.stdout.splitlines()[1:]) == sorted(LABELS)


def test_predict_checkpoint_matches_export(workdir):
    a = run('predict', workdir / 'ckpt', workdir / 'data')
    b = run('predict', workdir / 'export', workdir / 'data')
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-3000:] + b.stderr[-3000:]
    for x, y in zip(a.stdout.splitlines(), b.stdout.splitlines()):
        x, y = json.loads(x), json.loads(y)
        assert list(x['scores']) == list(y['scores'])
        np.testing.assert_allclose(list(x['scores'].values()), list(y['scores'].values()), atol=1e-4)


def test_predict_windows(workdir):
    proc = run('predict', workdir / 'export', workdir / 'long.wav', '--window', 2, '--hop', 1, '--topk', 1,
               '--reduce', 'max')
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(w['start'], w['end']) for w in record['timeline']] == [(float(s), s + 2.0) for s in range(6)]
    assert len(record['scores']) == 1
    proc = run('predict', workdir / 'export', workdir / 'long.wav', '--window', 2, '--format', 'table')
    assert proc.returncode == 0 and '(clip: 4 windows)' in proc.stdout  # 0-2, 2-4, 4-6, 5-7


def test_tag_with_a_tagging_model(workdir):
    proc = run('export', '--checkpoint', workdir / 'tagger_ckpt', '--output', workdir / 'tagger')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)['task'] == 'tagging'
    proc = run('tag', workdir / 'data' / 'dog' / 'dog.wav', '--model-dir', workdir / 'tagger', '--topk', 5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(record['scores']) == 5
    assert_user_error(run('tag', workdir / 'data', '--model-dir', workdir / 'export'), 'not an AudioSet tagger')


def test_tools_scripts(workdir, tmp_path):
    proc = run('--checkpoint', workdir / 'ckpt', '--output', tmp_path / 'out', tool='export_static.py')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(json.loads(proc.stdout)['files']) == {'inference.json', 'inference.pdiparams'}
    proc = run('--model-dir', tmp_path / 'out', '--output', tmp_path / 'out' / 'model.onnx', '--opset', 13,
               '--check', workdir / 'data', tool='export_onnx.py')
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out['onnx']['opset'] == 13 and out['parity']['passed']


def test_user_errors_are_one_line(workdir, tmp_path):
    bare = tmp_path / 'bare'
    bare.mkdir()
    (bare / 'model.pdparams').write_bytes((workdir / 'ckpt' / 'model.pdparams').read_bytes())
    assert_user_error(run('export', '--checkpoint', bare, '--output', tmp_path / 'x'), 'no meta.json', '--model')
    assert_user_error(run('--checkpoint', bare, '--output', tmp_path / 'x', tool='export_static.py'), '--model')
    assert_user_error(run('predict', workdir / 'export', workdir / 'fake.wav'), 'fake.wav')
    assert_user_error(run('predict', workdir / 'export', workdir / 'missing.wav'), 'missing.wav')
    assert_user_error(run('predict', workdir / 'export', workdir / 'notes.txt'), 'notes.txt')
    assert_user_error(run('predict', tmp_path / 'nowhere', workdir / 'data'), 'nowhere')
    assert_user_error(run('predict', workdir / 'export', workdir / 'data', '--hop', 1), '--hop needs --window')
    assert_user_error(run('predict', workdir / 'ckpt', workdir / 'data', '--engine', 'paddle'), 'export directory')
    assert_user_error(run('--model-dir', tmp_path, tool='export_onnx.py'), 'export.json')
    # A damaged weights file in the cache is reported (and never replaced silently, so no network is used).
    (tmp_path / 'cache').mkdir()
    (tmp_path / 'cache' / 'panns_cnn6.pdparams').write_bytes(b'truncated')
    proc = run('tag', workdir / 'data', '--model', 'panns_cnn6', env={'PADDLE_SOUNDCLS_HOME': tmp_path / 'cache'})
    assert_user_error(proc, 'panns_cnn6.pdparams', 'damaged')
    proc = run('predict', workdir / 'export')  # argparse: missing inputs
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr


def test_benchmark_json(tmp_path):
    proc = run('benchmark', '--model', 'panns_cnn6', '--seconds', 1, '--batch-size', 2, '--iterations', 1, '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for engine in ('paddle_dygraph', 'paddle_inference_onednn', 'onnxruntime', 'default'):
        assert result[engine]['clips_per_s'] > 0
    assert result['default']['end_to_end_clips_per_s'] > 0
    assert 'random' in result['setup']['weights'] and result['setup']['batch_size'] == 2


def test_console_script_is_declared():
    with open(os.path.join(REPO, 'setup.py'), encoding='utf-8') as f:
        assert 'paddle-soundcls=paddle_soundcls.cli:main' in f.read()
