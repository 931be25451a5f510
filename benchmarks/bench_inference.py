"""CPU inference speed of registered models on every engine, named as `Predictor` and `Module.predict`
name them: dygraph (Paddle dygraph), paddle (Paddle Inference, oneDNN), onnxruntime (the default
engine, with its tuned settings; also timed with onnxruntime's own default settings) and
onnxruntime_int8 (quantized with the defaults of paddle_soundcls/export/quantize.py, calibrated on
a few generated clips), in one run on the same inputs. Prints figures; asserts nothing.

    python benchmarks/bench_inference.py --models panns_cnn14 efficientat_mn10 efficientat_mn04 \\
        --seconds 5 --batch-size 8 --json            # side by side, with each model's params and MACs
    python benchmarks/bench_inference.py --model panns_cnn14 --seconds 5 --batch-size 8 --json

--models measures the models side by side (their engines take turns within each iteration) and
adds each one's complexity (parameters, MACs per clip and per 10 s; analysis/complexity.py) and a
summary relative to the first model. --model measures one model and prints what
`paddle-soundcls benchmark --model` prints.

The weights are random (speed does not depend on their values); see
paddle_soundcls/analysis/benchmark.py for what is measured and the keys of the JSON.
"""
import argparse
import json
import os
import sys

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.cli import run_guarded  # noqa: E402

DEFAULT_MODEL = 'panns_cnn14'


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument('--models', nargs='+', default=None, metavar='MODEL',
                       help='registered models to measure side by side (the first is the reference of the summary)')
    which.add_argument('--model', default=None, help=f'one registered model (default {DEFAULT_MODEL})')
    parser.add_argument('--seconds', type=float, default=5.0, help='clip length (default 5)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--iterations', type=int, default=5, help='timed batches per engine (default 5)')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads per engine (default: all CPUs)')
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')
    return parser


# Table columns: (engine in the JSON, heading)
COLUMNS = (('dygraph', 'dygraph'), ('paddle', 'paddle'), ('onnxruntime', 'onnxruntime'),
           ('onnxruntime_int8', 'onnxruntime_int8'))


def print_table(result):
    """The --models summary as text: one row per model."""
    setup = result['setup']
    reference = setup['models'][0]
    print(f'clips/s, {setup["seconds"]:g}-s clips, batch {setup["batch_size"]}, {setup["threads"]} threads, '
          f'{setup["machine"]["cpu"]}; features in, scores out; random weights, a sound-cls head with '
          f'{setup["classes"]} classes')
    rows = [['model', 'params', 'MACs/10 s', *(heading for _, heading in COLUMNS), 'ORT defaults',
             f'onnxruntime vs {reference}', f'int8 vs {reference}']]
    for name, row in result['summary'].items():
        relative = row[f'clips_per_s_vs_{reference}']
        rows.append([name, f'{row["params"] / 1e6:.2f} M', f'{row["macs_10s"] / 1e9:.3g} G',
                     *(f'{row["clips_per_s"][engine]:.1f}' for engine, _ in COLUMNS),
                     f'{row["ort_default_options_clips_per_s"]:.1f}',
                     f'{relative["onnxruntime"]:.2f}x', f'{relative["onnxruntime_int8"]:.2f}x'])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print('  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))))


def run(args):
    from paddle_soundcls.cli import print_benchmark
    from paddle_soundcls.analysis import benchmark
    if args.models is None:
        # One model: what `paddle-soundcls benchmark --model` prints.
        args.model_dir, args.model = None, args.model or DEFAULT_MODEL
        return print_benchmark(args)
    result = benchmark.run_models(args.models, args.seconds, args.batch_size, args.iterations, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_guarded(run, args)


if __name__ == '__main__':
    sys.exit(main())
