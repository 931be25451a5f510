"""What the subcommands share: input lists, the engine names, loading a model directory,
resumable JSON-lines output, deprecated option spellings, and how errors are reported.

Imports nothing heavy: Paddle is imported by the commands that need it, when they run.
"""
import argparse
import json
import os
import sys

from ..audio import AUDIO_EXTENSIONS, list_audio_files
from ..deploy.engines import ENGINES
from ..errors import ArgumentError, SoundClsError

PROG = 'paddle-soundcls'
ENGINE_CHOICES = ENGINES  # the names Module.predict, Predictor and the benchmark use
ENGINE_HELP = ("onnxruntime: an export's model.onnx, or a checkpoint exported once and cached; onnxruntime_int8: an "
               "export's int8 model (model.int8.onnx, made by `export --quantize int8`); paddle: Paddle Inference "
               'with oneDNN (export directories); tflite / tflite_int8: the TFLite interpreter on model.tflite / '
               'model.int8.tflite (made by `export --format tflite`); dygraph: Paddle dygraph (checkpoints); auto (default): onnxruntime '
               '(paddle for an export without model.onnx), except dygraph for fewer than 4 clips from a checkpoint')


class UsageError(ArgumentError):
    """A command line that cannot be carried out as given."""


def note(message, prog=PROG):
    """A one-line note on stderr (stdout carries the results)."""
    print(f'{prog}: {message}', file=sys.stderr)


class DeprecatedSpelling(argparse.Action):
    """An old spelling of an option: sets the new option's value and says which name to use."""

    def __init__(self, option_strings, dest, new_name, **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        note(f'{option_string} is deprecated; use {self.new_name}', prog=parser.prog)
        setattr(namespace, self.dest, values)


def add_deprecated_spelling(parser, old, new, dest, **kwargs):
    """Accept `old` as a hidden alias of the option `new` (same destination), with a note when used."""
    parser.add_argument(old, dest=dest, action=DeprecatedSpelling, new_name=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)


def add_engine_args(parser):
    parser.add_argument('--engine', choices=ENGINE_CHOICES, default='auto', help=ENGINE_HELP)
    parser.add_argument('--precision', choices=('fp32', 'int8'), default=None, help=argparse.SUPPRESS)


def resolve_engine(args):
    """--engine, with the deprecated `--precision int8` read as `--engine onnxruntime_int8`."""
    engine, precision = args.engine, getattr(args, 'precision', None)
    if precision is None:
        return engine
    note(f'--precision is deprecated; use --engine {"onnxruntime_int8" if precision == "int8" else engine}',
         prog=f'{PROG} {args.command}')
    if precision == 'fp32':
        if engine == 'onnxruntime_int8':
            raise UsageError('--precision fp32 contradicts --engine onnxruntime_int8: leave --precision out')
        return engine
    if engine not in ('auto', 'onnxruntime', 'onnxruntime_int8'):
        raise UsageError(f'--precision int8 runs on onnxruntime (model.int8.onnx), not --engine {engine}: use '
                         f'--engine onnxruntime_int8')
    return 'onnxruntime_int8'


def add_ray_args(parser, output):
    """--ray [ADDRESS] and --actors: run a command over its files on a Ray cluster (archive/cluster.py)."""
    parser.add_argument('--ray', nargs='?', const='local', default=None, metavar='ADDRESS',
                        help=f'run on Ray: local (a Ray started on this machine, the default), auto, or HEAD:PORT of a '
                             f'running cluster; export directories only; writes {output} as without --ray')
    parser.add_argument('--actors', type=int, default=None,
                        help='with --ray: Predictors running at once (default: one per CPU of the cluster)')


def run_on_ray(args, job, output, options, engine):
    """The command's job on Ray (see add_ray_args); the same output, resumed the same way."""
    from ..archive.cluster import run_job
    summary = run_job(job, args.model_dir, expand_inputs(args.inputs), output,
                      address=None if args.ray == 'local' else args.ray, options=options,
                      engine='onnxruntime' if engine == 'auto' else engine, actors=args.actors,
                      threads_per_actor=args.threads)
    note(f'{summary["skipped"]} of {summary["inputs"]} inputs already in {output}, {summary["written"]} done now')
    return 0


def expand_inputs(inputs):
    """Files and folders (searched recursively for audio files) -> list of file paths."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = list_audio_files(item)
            if not found:
                raise UsageError(f'{item} holds no audio files ({", ".join(AUDIO_EXTENSIONS)})')
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f'no such file or folder: {item}')
    return paths


def _export_predictor(model_dir, engine, threads):
    from ..deploy import Predictor
    if engine == 'dygraph':
        raise UsageError(f'{model_dir} is an export directory; --engine dygraph needs a checkpoint directory')
    return Predictor(model_dir, engine=engine, num_threads=threads)


def _checkpoint_module(model_dir, engine, threads, model, tagging):
    from ..checkpoints.files import PARAMS_FILE
    from ..checkpoints.schema import META_FILE
    from ..deploy.exportdir import EXPORT_FILE
    if not os.path.isdir(model_dir):
        raise UsageError(f'no such model directory: {model_dir} (expected a checkpoint directory with '
                         f'{PARAMS_FILE} + {META_FILE}, or an export directory with {EXPORT_FILE})')
    if engine == 'paddle':
        raise UsageError(f'{model_dir} is a checkpoint directory; --engine paddle needs an export directory '
                         f'(paddle-soundcls export --checkpoint {model_dir} --output DIR)')
    if engine == 'onnxruntime_int8':
        raise UsageError(f'--engine onnxruntime_int8 needs an export directory with an int8 model: `paddle-soundcls '
                         f'export --checkpoint {model_dir} --output DIR --quantize int8 --calibration CLIPS --check '
                         f'OTHER_CLIPS`, then predict with DIR')
    if engine in ('tflite', 'tflite_int8'):
        raise UsageError(f'--engine {engine} runs an export directory with TFLite models: `paddle-soundcls export '
                         f'--checkpoint {model_dir} --output DIR --format onnx tflite`, then predict with DIR')
    if threads is not None:
        raise UsageError('--threads applies to export directories; a checkpoint uses every CPU')
    from ..ensemble import load_module
    return load_module(model_dir, model=model, task='tagging' if tagging else 'sound-cls')


def load_model(model_dir, engine='auto', threads=None, model=None, tagging=None):
    """(predict function, the model: a Predictor or a Module) for a checkpoint or export directory.

    engine: one of ENGINE_CHOICES. tagging: True / False to require an AudioSet tagger / a
    classifier, None for either.
    """
    from ..deploy import exportdir
    if exportdir.is_export_dir(model_dir):
        loaded = _export_predictor(model_dir, engine, threads)
        run = loaded.predict
    else:
        loaded = _checkpoint_module(model_dir, engine, threads, model, tagging)

        def run(paths, **kwargs):
            return loaded.predict(paths, engine=engine, **kwargs)
    if tagging is True and loaded.task != 'tagging':
        raise UsageError(f'{model_dir} is a sound-cls model, not an AudioSet tagger; use `paddle-soundcls predict`')
    return run, loaded


def append_jsonl(paths, out_path, records_of, chunk):
    """Process `paths` in chunks, appending one JSON line per input to `out_path` as it goes;
    inputs already recorded there (by an earlier, perhaps killed, run) are skipped. A line cut
    short by a kill is dropped and its input done again."""
    from ..archive.jsonl import open_jsonl
    from ..progress import progress_bar
    done = open_jsonl(out_path)
    todo = [p for p in paths if p not in done]
    note(f'{len(paths) - len(todo)} of {len(paths)} inputs already in {out_path}, {len(todo)} to go')
    with open(out_path, 'a', encoding='utf-8') as out, \
            progress_bar(total=len(todo), unit='file', show=len(todo) >= 2) as bar:
        for start in range(0, len(todo), chunk):
            some = todo[start:start + chunk]
            for record in records_of(some):
                out.write(json.dumps(record, ensure_ascii=False) + '\n')
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(some))
    return 0


# Optional packages a command may need, and what to tell a user who does not have them.
MISSING_PACKAGE_HINTS = {
    'paddle': 'needs PaddlePaddle, which is not installed: pip install paddlepaddle (or paddlepaddle-gpu), or '
              'run an export directory instead, which needs no Paddle (paddle-soundcls export on a machine with '
              'Paddle, then predict / tag / events / benchmark / serve EXPORT_DIR)',
    'paddle2onnx': "needs paddle2onnx to write ONNX: pip install 'paddle_soundcls[train]'",
    'onnx': "needs the onnx package: pip install 'paddle_soundcls[train]'",
    'pyarrow': "needs pyarrow to write and read Parquet: pip install 'paddle_soundcls[archive]'",
    'faiss': "needs faiss for similarity search: pip install 'paddle_soundcls[archive]'",
    'ray': "needs Ray to run on a cluster: pip install 'paddle_soundcls[cluster]'",
    'matplotlib': "needs matplotlib to draw the plot: pip install matplotlib (or leave --plot out)",
    'visualdl': "needs VisualDL for its logs: pip install visualdl (or train with use_vdl=False)",
}

# The operating system's refusals to read or write a path the user named (an --output folder
# without write permission, a --csv in a missing folder): the message names the path, and there
# is nothing in a traceback for the user. Every other OSError is shown with its traceback.
FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def missing_package(exc):
    """The one-line message for an ImportError of an optional package, or None for any other."""
    name = (getattr(exc, 'name', None) or '').split('.')[0]
    hint = MISSING_PACKAGE_HINTS.get(name)
    if hint is None:
        return None
    return str(exc) if 'pip install' in str(exc) else f'this command {hint} ({exc})'


def run_guarded(func, args, prog=PROG):
    """Run func(args). The package's errors (SoundClsError, UsageError among them), a missing
    optional package and a path the system refuses are one line on stderr and exit status 2;
    anything else is a bug and shows its traceback (exit status 1)."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except SoundClsError as exc:
        message = str(exc)
    except ImportError as exc:
        message = missing_package(exc)
        if message is None:
            raise
    except FILE_ERRORS as exc:
        if exc.filename is None:
            raise
        message = str(exc)
    print(f'{prog}: error: {message}', file=sys.stderr)
    return 2
