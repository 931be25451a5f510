"""The command line end to end, in subprocesses: paddle-soundcls and tools/export_*.py."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import BLOCK_PADDLE
from paddle_soundcls import Module
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
    assert set(summary['files']) == {'inference.json', 'inference.pdiparams', 'inference.frames.json',
                                     'inference.frames.pdiparams', 'inference.embed.json', 'inference.embed.pdiparams',
                                     'model.onnx', 'model.frames.onnx', 'model.embed.onnx'}
    parity = summary['parity']
    assert parity['passed'] and parity['clips'] == 3 and parity['top1_agreement'] == 1.0
    assert parity['accuracy_paddle'] == parity['accuracy_onnxruntime']


def test_predict_export_dir_jsonl_and_table(workdir):
    proc = run('predict', workdir / 'export', workdir / 'data', '--top-k', 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [os.path.basename(r['input']) for r in lines] == ['dog.wav', 'rain.wav', 'siren.wav']
    assert all(len(r['scores']) == 2 and set(r['scores']) <= set(LABELS) for r in lines)
    from paddle_soundcls.deploy import Predictor
    expected = Predictor(workdir / 'export').predict([r['input'] for r in lines], top_k=2)
    assert [list(r['scores']) for r in lines] == [list(e) for e in expected]

    proc = run('predict', workdir / 'export', workdir / 'data' / 'dog' / 'dog.wav', '--format', 'table',
               '--engine', 'paddle')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].endswith('dog.wav')
    assert sorted(line.split()[1] for line in proc.stdout.splitlines()[1:]) == sorted(LABELS)


def test_the_old_spellings_give_the_same_results_with_a_note(workdir, capsys):
    from paddle_soundcls.cli import main
    clip = str(workdir / 'data' / 'dog' / 'dog.wav')
    assert main(['predict', str(workdir / 'export'), clip, '--top-k', '2', '--engine', 'onnxruntime']) == 0
    new = capsys.readouterr()
    assert new.err == '' and len(json.loads(new.out)['scores']) == 2
    assert main(['predict', str(workdir / 'export'), clip, '--topk', '2', '--engine', 'onnxruntime']) == 0
    old = capsys.readouterr()
    assert old.out == new.out and '--topk is deprecated; use --top-k' in old.err


def test_engine_names(workdir, capsys):
    """The engines by the benchmark's names: onnxruntime_int8 asks the export for its int8 model
    (or a checkpoint for an export); the old `--precision int8` asks the same, with a note."""
    from paddle_soundcls.cli import main
    clip = str(workdir / 'data' / 'dog' / 'dog.wav')
    outputs = {}
    for engine in ('auto', 'onnxruntime', 'paddle'):
        assert main(['predict', str(workdir / 'export'), clip, '--engine', engine]) == 0
        outputs[engine] = json.loads(capsys.readouterr().out)['scores']
    assert list(outputs['auto']) == list(outputs['onnxruntime']) == list(outputs['paddle'])
    for given in (['--engine', 'onnxruntime_int8'], ['--precision', 'int8']):
        assert main(['predict', str(workdir / 'export'), clip] + given) == 2
        err = capsys.readouterr().err
        assert 'model.int8.onnx is missing' in err and '--quantize int8' in err
        assert ('--precision is deprecated; use --engine onnxruntime_int8' in err) == (given[0] == '--precision')
        assert main(['predict', str(workdir / 'ckpt'), clip] + given) == 2
        assert 'needs an export directory' in capsys.readouterr().err
    assert main(['predict', str(workdir / 'export'), clip, '--engine', 'dygraph']) == 2
    assert '--engine dygraph needs a checkpoint directory' in capsys.readouterr().err


def test_predict_checkpoint_matches_export(workdir):
    a = run('predict', workdir / 'ckpt', workdir / 'data')
    b = run('predict', workdir / 'export', workdir / 'data')
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-3000:] + b.stderr[-3000:]
    for x, y in zip(a.stdout.splitlines(), b.stdout.splitlines()):
        x, y = json.loads(x), json.loads(y)
        assert list(x['scores']) == list(y['scores'])
        np.testing.assert_allclose(list(x['scores'].values()), list(y['scores'].values()), atol=1e-4)


def test_predict_windows(workdir):
    proc = run('predict', workdir / 'export', workdir / 'long.wav', '--window', 2, '--hop', 1, '--top-k', 1,
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
    proc = run('tag', workdir / 'data' / 'dog' / 'dog.wav', '--model-dir', workdir / 'tagger', '--top-k', 5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(record['scores']) == 5
    assert_user_error(run('tag', workdir / 'data', '--model-dir', workdir / 'export'), 'not an AudioSet tagger')


def test_tools_scripts(workdir, tmp_path):
    proc = run('--checkpoint', workdir / 'ckpt', '--output', tmp_path / 'out', tool='export_static.py')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(json.loads(proc.stdout)['files']) == {'inference.json', 'inference.pdiparams', 'inference.frames.json',
                                                     'inference.frames.pdiparams', 'inference.embed.json',
                                                     'inference.embed.pdiparams'}
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


def test_check_data_is_read_before_the_export(workdir, tmp_path, capsys):
    from paddle_soundcls.cli import main
    for given, words in ((['--check', str(tmp_path / 'nowhere')], 'nowhere'),
                         (['--check', str(workdir / 'notes.txt')], 'notes.txt'),
                         (['--check', str(workdir / 'data'), '--check-limit', '0'], '--check-limit')):
        assert main(['export', '--checkpoint', str(workdir / 'ckpt'), '--output', str(tmp_path / 'x')] + given) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert words in line, line
        assert not (tmp_path / 'x').exists()


def test_benchmark_json(tmp_path):
    proc = run('benchmark', '--model', 'panns_cnn6', '--seconds', 1, '--batch-size', 2, '--iterations', 1, '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    # One vocabulary: each engine is reported under a name `--engine` accepts (int8 as Predictor's precision).
    from paddle_soundcls.cli import ENGINE_CHOICES
    for key, engine, precision in (('dygraph', 'dygraph', 'fp32'), ('paddle', 'paddle', 'fp32'),
                                   ('onnxruntime', 'onnxruntime', 'fp32'), ('onnxruntime_int8', 'onnxruntime', 'int8')):
        assert result[key]['clips_per_s'] > 0 and result[key]['engine'] in ENGINE_CHOICES
        assert (result[key]['engine'], result[key]['precision']) == (engine, precision)
    assert result['onnxruntime']['end_to_end_clips_per_s'] > 0
    assert result['onnxruntime']['ort_default_options']['clips_per_s'] > 0
    assert 'random' in result['setup']['weights'] and result['setup']['batch_size'] == 2


def test_console_script_is_declared():
    with open(os.path.join(REPO, 'setup.py'), encoding='utf-8') as f:
        assert 'paddle-soundcls=paddle_soundcls.cli:main' in f.read()


def run_without_paddle(*args, also_blocked=()):
    """`paddle-soundcls ARGS` in a subprocess where paddle and paddle2onnx (and also_blocked) cannot be imported."""
    code = BLOCK_PADDLE + f'NoPaddle.blocked += {tuple(also_blocked)!r}\n' + textwrap.dedent('''
        from paddle_soundcls.cli import main
        status = main(sys.argv[1:])
        assert not any(m == 'paddle' or m.startswith('paddle.') for m in sys.modules), 'paddle was imported'
        sys.exit(status)
    ''')
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, '-c', code] + [str(a) for a in args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_commands_on_exports_run_without_paddle(workdir, tmp_path):
    clips = [str(workdir / 'data' / label / f'{label}.wav') for label in LABELS]
    proc = run_without_paddle('predict', workdir / 'export', *clips, '--top-k', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line['input'] for line in lines] == clips and all(len(line['scores']) == 1 for line in lines)
    proc = run_without_paddle('predict', workdir / 'export', workdir / 'long.wav', '--window', '2', '--format', 'table')
    assert proc.returncode == 0 and 'windows' in proc.stdout, proc.stderr[-3000:]
    proc = run_without_paddle('benchmark', workdir / 'export', '--seconds', '1', '--batch-size', '2',
                              '--iterations', '1', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout)
    assert figures['onnxruntime']['clips_per_s'] > 0 and figures['setup']['machine']['paddle'] is None
    tagger = tmp_path / 'tagger_export'
    assert run('export', '--checkpoint', workdir / 'tagger_ckpt', '--output', tagger).returncode == 0
    proc = run_without_paddle('tag', clips[0], '--model-dir', tagger, '--top-k', '3')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout)['scores']) == 3
    proc = run_without_paddle('--help')
    assert proc.returncode == 0 and 'serve' in proc.stdout or 'predict' in proc.stdout
    # What needs Paddle (a checkpoint, a registered tagger, export, complexity) or matplotlib (--plot)
    # says what to install, in one line with exit status 2, not a traceback.
    for args, words in ((('predict', workdir / 'ckpt', clips[0]), 'pip install paddlepaddle'),
                        (('tag', clips[0], '--top-k', '10'), 'pip install paddlepaddle'),
                        (('export', '--checkpoint', workdir / 'ckpt', '--output', tmp_path / 'x'),
                         'pip install paddlepaddle'),
                        (('complexity', 'cpmobile'), 'pip install paddlepaddle')):
        proc = run_without_paddle(*args)
        assert proc.returncode == 2 and 'Traceback' not in proc.stderr and words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = run_without_paddle('events', workdir / 'export', workdir / 'long.wav', '--plot', tmp_path / 'p.png',
                              also_blocked=('matplotlib',))
    assert proc.returncode == 2 and 'pip install matplotlib' in proc.stderr and 'Traceback' not in proc.stderr, \
        proc.stderr


def test_help_is_clean():
    proc = run('--help')
    assert proc.returncode == 0
    assert 'ccache' not in proc.stderr and 'Warning' not in proc.stderr
    assert '--check DATA \\\n' in proc.stdout  # the continuation shows as in a shell, no gap
    proc = run('export', '--help')
    assert proc.returncode == 0 and '--model-dir' in proc.stdout and '--no-onnx' in proc.stdout


def test_package_imports_have_no_cycles():
    """Module-level imports inside paddle_soundcls form no cycle (imports inside functions are
    the deliberate late ones and are left out)."""
    import ast
    root = os.path.join(REPO, 'paddle_soundcls')
    graph = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
            is_package = parts[-1] == '__init__'
            module = '.'.join(parts[:-1] if is_package else parts)
            package = module if is_package else module.rpartition('.')[0]
            targets = set()
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom):
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition('.')[0]
                    target = (base + '.' + node.module if node.module else base) if node.level else node.module
                    # `from . import x` imports the submodule x; `from .m import y` imports m (and y, if a module).
                    names = ([] if node.module is None else [target]) + [f'{target}.{a.name}' for a in node.names]
                    targets.update(n for n in names if n.startswith('paddle_soundcls'))
                elif isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names if a.name.startswith('paddle_soundcls'))
            graph[module] = targets
    graph = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}

    def visit(node, stack, done):
        if node in stack:
            raise AssertionError('import cycle: ' + ' -> '.join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, stack + [node], done)
        done.add(node)

    done = set()
    for module in sorted(graph):
        visit(module, [], done)
    assert 'paddle_soundcls.module' in graph and 'paddle_soundcls.export.static' in graph
