"""Sizes and CPU speeds of TFLite exports beside the ONNX ones, measured side by side in one run.

    python benchmarks/bench_tflite.py --models efficientat_mn04 efficientat_mn10 cpmobile --json

For each model: an export with random weights (speed and size do not depend on their values),
its int8 ONNX model (export/quantize.py defaults) and its TFLite models (float32, and full-integer
int8; export/tflite.py), both int8 models calibrated on the same generated clips. Then, at each
thread count (default 1 and 2), the four engines take turns on the same features, one clip per
call (what an app on a phone does), in a new order every iteration: model.onnx and
model.int8.onnx in onnxruntime, model.tflite and model.int8.tflite in the TFLite interpreter
(XNNPACK). Figures: file sizes, median milliseconds per clip (features in, scores out) and the
conversion time. Prints figures; asserts nothing.

    python benchmarks/bench_tflite.py --conversion panns_cnn6 efficientat_mn04 efficientat_dymn04 --json

--conversion instead converts each model's whole export (export_tensorflow) with every batch
norm given random statistics, so that a converter that broadcasts over a wrong axis shows (with
the default statistics, all alike, it would not), and prints each graph's probe difference
against onnxruntime, or why it did not convert, and the time taken.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ENGINES = ('onnxruntime', 'onnxruntime_int8', 'tflite', 'tflite_int8')
FILES = {'onnxruntime': 'model.onnx', 'onnxruntime_int8': 'model.int8.onnx', 'tflite': 'model.tflite',
         'tflite_int8': 'model.int8.tflite'}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['efficientat_mn04', 'efficientat_mn10', 'cpmobile'])
    parser.add_argument('--seconds', type=float, default=5.0, help='clip length (default 5)')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='thread counts (default 1 2)')
    parser.add_argument('--iterations', type=int, default=20, help='timed clips per engine and thread count')
    parser.add_argument('--classes', type=int, default=10, help='classes of the sound-cls head (default 10)')
    parser.add_argument('--conversion', nargs='+', default=None, metavar='MODEL',
                        help='only convert these models (random batch-norm statistics) and report the probe')
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')
    return parser


def random_statistics(module, seed=0):
    """Every batch norm of `module` with its own random statistics and affine parameters (bn0,
    over log-mel input, about -40 dB with a spread of about 20)."""
    import paddle
    rng = np.random.default_rng(seed)
    bn0 = getattr(module.backbone, 'bn0', None)
    for layer in module.sublayers():
        if isinstance(layer, (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm)):
            n = layer._mean.shape[0]
            mean = -40 + rng.normal(0, 30, n) if layer is bn0 else rng.normal(0, 0.9, n)
            variance = rng.uniform(0.5, 2.0, n) * (400 if layer is bn0 else 1)
            for tensor, value in ((layer._mean, mean), (layer._variance, variance),
                                  (layer.weight, rng.uniform(0.5, 1.5, n)), (layer.bias, rng.normal(0, 0.3, n))):
                tensor.set_value(paddle.to_tensor(value.astype(np.float32)))
    return module


def conversion(names, root, classes):
    """{model: {'probe': ..., 'seconds'} or {'error': ..., 'seconds'}}."""
    from paddle_soundcls import Module
    from paddle_soundcls.errors import ExportError
    from paddle_soundcls.export import export_static, tflite
    report = {}
    for name in names:
        module = Module(name, task='sound-cls', label_map=[f'class_{i}' for i in range(classes)], pretrained=False)
        out = os.path.join(root, name)
        export_static(random_statistics(module).eval(), out, opset=13)
        start = time.perf_counter()
        try:
            report[name] = {'probe': tflite.export_tensorflow(out, ('tflite',), progress=False)['tflite']['probe']}
        except ExportError as exc:
            report[name] = {'error': str(exc)}
        report[name]['seconds'] = round(time.perf_counter() - start, 1)
        print(f'{name}: {report[name]}', file=sys.stderr, flush=True)
    return report


def prepare(name, root, classes, seconds):
    """An export of `name` with random weights, its int8 ONNX model and its TFLite models."""
    import soundfile as sf
    from paddle_soundcls import Module
    from paddle_soundcls.analysis.benchmark import calibration_clips
    from paddle_soundcls.export import export_static, quantize, tflite
    module = Module(name, task='sound-cls', label_map=[f'class_{i}' for i in range(classes)], pretrained=False)
    out = os.path.join(root, name)
    export_static(module, out, opset=13)
    calibration = os.path.join(root, f'{name}_calibration')
    os.makedirs(calibration)
    rate = module.frontend_cfg.sample_rate
    for i, clip in enumerate(calibration_clips(rate, seconds)):
        sf.write(os.path.join(calibration, f'{i}.wav'), clip, rate)
    quantize.quantize_export(out, calibration, seconds=seconds, progress=False)
    start = time.perf_counter()
    tflite.export_tensorflow(out, ('tflite',), int8=True, calibration=calibration, calibration_seconds=seconds,
                             progress=False)
    return out, time.perf_counter() - start


def measure(export_dir, seconds, threads, iterations):
    """{engine: median ms per clip} at `threads`, the engines taking turns."""
    from paddle_soundcls.deploy import Predictor
    predictors = {engine: Predictor(export_dir, engine=engine, num_threads=threads) for engine in ENGINES}
    first = predictors['onnxruntime']
    wave = 0.1 * np.random.default_rng(0).standard_normal((1, int(seconds * first.frontend_cfg.sample_rate)))
    features = first.features(wave.astype(np.float32))
    for predictor in predictors.values():   # warm-up: kernels prepared, the interpreter sized
        predictor.engine(features)
    times = {engine: [] for engine in ENGINES}
    rng = np.random.default_rng(1)
    for _ in range(iterations):
        for engine in rng.permutation(ENGINES):
            start = time.perf_counter()
            predictors[engine].engine(features)
            times[engine].append(time.perf_counter() - start)
    return {engine: round(1000 * float(np.median(t)), 2) for engine, t in times.items()}


def run(args):
    from paddle_soundcls.analysis.benchmark import machine_info
    from paddle_soundcls.export.tflite import converter_versions
    if args.conversion:
        with tempfile.TemporaryDirectory() as root:
            report = {'setup': {'machine': machine_info(), **converter_versions()},
                      'models': conversion(args.conversion, root, args.classes)}
        print(json.dumps(report, indent=2))
        return 0
    result = {'setup': {'seconds': args.seconds, 'threads': args.threads, 'iterations': args.iterations,
                        'classes': args.classes, 'batch': 1, 'machine': machine_info(), **converter_versions()},
              'models': {}}
    with tempfile.TemporaryDirectory() as root:
        for name in args.models:
            export_dir, seconds_converting = prepare(name, root, args.classes, args.seconds)
            sizes = {engine: os.path.getsize(os.path.join(export_dir, f)) for engine, f in FILES.items()}
            speeds = {str(t): measure(export_dir, args.seconds, t, args.iterations) for t in args.threads}
            result['models'][name] = {'bytes': sizes, 'ms_per_clip': speeds,
                                      'tflite_conversion_seconds': round(seconds_converting, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def print_table(result):
    setup = result['setup']
    print(f'ms per {setup["seconds"]:g}-s clip (batch 1, features in, scores out), {setup["machine"]["cpu"]}; '
          f'{setup["converter"]}, TensorFlow {setup["tensorflow"]}')
    heading = ['model', 'engine', 'MB'] + [f'{t} thread{"s" if t > 1 else ""}' for t in setup['threads']]
    rows = [heading]
    for name, row in result['models'].items():
        for engine in ENGINES:
            rows.append([name, engine, f'{row["bytes"][engine] / 1e6:.2f}'] +
                        [f'{row["ms_per_clip"][str(t)][engine]:.2f}' for t in setup['threads']])
    widths = [max(len(r[i]) for r in rows) for i in range(len(heading))]
    for r in rows:
        print('  '.join(cell.ljust(w) for cell, w in zip(r, widths)))


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
