"""How the command line reports what goes wrong, and the shape of its parser: the package's
errors are one line with exit status 2; a bug shows its traceback (exit status 1)."""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest

from paddle_soundcls import cli, errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raising(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize('exc', [
    cli.UsageError('--hop needs --window'),
    errors.ArgumentError('batch_size must be a positive int, got 0'),
    errors.AudioError('clip.wav is not audio'),
    errors.DatasetError('data/ holds no labelled clips'),
    errors.CheckpointError('ckpt/model.pdparams is damaged'),
    errors.ExportError('exported/export.json is missing'),
    errors.DownloadError('panns_cnn6.pdparams: checksum mismatch'),
    errors.NoHeadError('built without its AudioSet head'),
    errors.ServeError('--port must be 0-65535, got 70000'),
    FileNotFoundError(2, 'No such file or directory', 'out/missing/e.csv'),
    ImportError("No module named 'matplotlib'", name='matplotlib'),
])
def test_the_packages_errors_are_one_line_with_status_2(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli.predict, 'run', raising(exc))
    assert cli.main(['predict', 'model_dir', 'clip.wav']) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('paddle-soundcls: error: ')
    expected = 'pip install matplotlib' if isinstance(exc, ImportError) else str(exc)
    assert expected in line


@pytest.mark.parametrize('exc', [ZeroDivisionError('division by zero'), ValueError('a bug, not a user mistake'),
                                 RuntimeError('an internal state'), KeyError('labels'),
                                 ImportError("No module named 'some_module'", name='some_module'),
                                 OSError('no path involved')])
def test_anything_else_propagates_from_main(monkeypatch, exc):
    monkeypatch.setattr(cli.predict, 'run', raising(exc))
    with pytest.raises(type(exc)):
        cli.main(['predict', 'model_dir', 'clip.wav'])


def test_an_internal_error_shows_its_traceback_and_status_1():
    """As a user sees it: `paddle-soundcls` with a subcommand that has a bug."""
    code = textwrap.dedent('''
        import sys
        from paddle_soundcls import cli

        def run(args):
            return 1 / 0
        cli.export.run = run
        sys.exit(cli.main(sys.argv[1:]))
    ''')
    proc = subprocess.run([sys.executable, '-c', code, 'export', '--model-dir', 'x'], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' in proc.stderr and 'ZeroDivisionError' in proc.stderr and 'error:' not in proc.stderr


def subcommands(parser):
    [action] = [a for a in parser._actions if a.dest == 'command']
    return action.choices


def test_one_module_per_subcommand():
    parsers = subcommands(cli.build_parser())
    assert set(parsers) == {'predict', 'tag', 'events', 'embed', 'index', 'search', 'export', 'ensemble', 'fewshot',
                            'convert', 'complexity', 'benchmark', 'serve'}
    for name in parsers:
        module = importlib.import_module(f'paddle_soundcls.cli.{name}')
        assert module in cli.COMMANDS and callable(module.add_parser) and callable(module.run), name
        assert parsers[name].get_default('command_module') is module


def test_the_engine_names_are_the_benchmarks():
    from paddle_soundcls.analysis import benchmark
    assert set(cli.ENGINE_CHOICES) == set(benchmark.ENGINES) | set(benchmark.EXPORT_ENGINES) | {'auto'}
    for name in ('predict', 'tag', 'events', 'embed'):
        [engine] = [a for a in subcommands(cli.build_parser())[name]._actions if a.dest == 'engine']
        assert tuple(engine.choices) == cli.ENGINE_CHOICES


@pytest.mark.parametrize('command', [['predict', 'model_dir'], ['tag']])
def test_top_k_and_its_deprecated_spelling(capsys, command):
    parser = cli.build_parser()
    args = parser.parse_args(command + ['clip.wav', '--top-k', '3'])
    assert args.top_k == 3 and capsys.readouterr().err == ''
    args = parser.parse_args(command + ['clip.wav', '--topk', '4'])
    assert args.top_k == 4
    [line] = capsys.readouterr().err.strip().splitlines()
    assert '--topk is deprecated' in line and 'use --top-k' in line
    with pytest.raises(SystemExit):
        parser.parse_args(command + ['clip.wav', '--topk', 'three'])   # still an int
    assert parser.parse_args(command + ['clip.wav']).top_k == (10 if command == ['tag'] else None)


def test_the_deprecated_precision_option_reads_as_an_engine(capsys):
    from paddle_soundcls.cli.common import resolve_engine
    parser = cli.build_parser()
    for given, engine in ((['--precision', 'int8'], 'onnxruntime_int8'),
                          (['--engine', 'onnxruntime', '--precision', 'int8'], 'onnxruntime_int8'),
                          (['--precision', 'fp32', '--engine', 'paddle'], 'paddle')):
        assert resolve_engine(parser.parse_args(['predict', 'm', 'clip.wav'] + given)) == engine
        [line] = capsys.readouterr().err.strip().splitlines()
        assert '--precision is deprecated' in line
    assert resolve_engine(parser.parse_args(['predict', 'm', 'clip.wav', '--engine', 'onnxruntime_int8'])) == \
        'onnxruntime_int8'
    assert capsys.readouterr().err == ''
    with pytest.raises(cli.UsageError, match='--engine onnxruntime_int8'):
        resolve_engine(parser.parse_args(['predict', 'm', 'clip.wav', '--engine', 'paddle', '--precision', 'int8']))
