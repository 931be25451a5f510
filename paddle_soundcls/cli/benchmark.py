"""`paddle-soundcls benchmark`: clips/s of an export directory (without Paddle), or of every
engine for a registered model with random weights."""
import json
import os

from .common import UsageError


def add_parser(subparsers):
    p = subparsers.add_parser('benchmark', help='clips/s of an export directory, or of every engine for a model')
    add_benchmark_args(p)
    return p


def add_benchmark_args(parser):
    parser.add_argument('model_dir', nargs='?', default=None,
                        help='an export directory: its ONNX models (fp32, and int8 when present), without Paddle')
    parser.add_argument('--model', default=None,
                        help='without MODEL_DIR: a registered model (default panns_cnn14) measured on every engine '
                             '(dygraph, paddle, onnxruntime, onnxruntime_int8) with random weights')
    parser.add_argument('--seconds', type=float, default=5.0, help='clip length (default 5)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--iterations', type=int, default=5, help='timed batches per engine (default 5)')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads per engine (default: all CPUs)')
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')


def run(args):
    return print_benchmark(args)


def print_benchmark(args):
    """Measure as the benchmark options say and print the figures (a report, or JSON with --json)."""
    from ..analysis import benchmark
    if args.model_dir is not None and args.model is not None:
        raise UsageError('give an export directory or --model NAME, not both')
    if args.model_dir is not None:
        _refuse_saved_ensemble(args.model_dir)
        result = benchmark.run_export(args.model_dir, args.seconds, args.batch_size, args.iterations, args.threads)
    else:
        result = benchmark.run(args.model or 'panns_cnn14', args.seconds, args.batch_size, args.iterations,
                               args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(benchmark.format_report(result))
    return 0


def _refuse_saved_ensemble(path):
    """A saved ensemble is no export; exporting it to its own folder would replace it."""
    from ..checkpoints.schema import ENSEMBLE_FILE
    from ..deploy.exportdir import EXPORT_FILE
    if os.path.isfile(os.path.join(path, ENSEMBLE_FILE)) and not os.path.isfile(os.path.join(path, EXPORT_FILE)):
        member = os.path.join(path, 'members', '0')
        raise UsageError(f'{path} is a saved ensemble ({ENSEMBLE_FILE}), not an export directory; an ensemble costs '
                         f'the sum of its members: export one into a new folder (`paddle-soundcls export --checkpoint '
                         f'{member} --output DIR`) and benchmark DIR')
