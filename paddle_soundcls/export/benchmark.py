"""CPU inference speed of registered models on every engine, measured in one run on the same inputs.

Engines (backbone only: log-mel features in, scores out):
    paddle_dygraph            the Module in Paddle dygraph
    paddle_inference_onednn   the exported static model in Paddle Inference with oneDNN
    onnxruntime               model.onnx with onnxruntime's own default session settings
    default                   the engine `Predictor` uses by default (onnxruntime with the
                              settings of deploy.engines.onnx_session_options)
    onnxruntime_int8          model.int8.onnx (export/quantize.py with its default settings,
                              calibrated on a few generated clips) with the default settings,
                              as `Predictor(..., precision='int8')` runs it
`default` also gets the end-to-end figure: waveforms in, numpy log-mel front end included.
`run` measures one registered model; `run_models` several side by side, with their complexity
(parameters, MACs) from export/complexity.py.

The weights are random: speed does not depend on their values, and no download is needed.
`run_export` measures an existing export directory instead, without Paddle.
(int8 answers do depend on them: see the int8 check in export/parity.py, not this file.)
Engines take turns within each iteration, in a new order each time, so a burst of load from
other processes slows them all alike rather than one of them, and no engine always runs
while the previous one's threads are still spinning; clips_per_s uses the median batch
time, which a few slow batches do not move.
"""
import contextlib
import os
import platform
import tempfile
import time

import numpy as np

from ..deploy import Predictor, exportdir
from ..deploy.engines import OnnxEngine, PaddleEngine, check_threads
from ..features.mel import logmel

ENGINES = ('paddle_dygraph', 'paddle_inference_onednn', 'onnxruntime', 'default', 'onnxruntime_int8')
CALIBRATION_CLIPS = 8
END_TO_END = 'end_to_end'  # the default engine with the numpy front end: waveforms in, scores out


def machine_info():
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    import sys

    import onnxruntime
    paddle = sys.modules.get('paddle')  # reported when loaded, never imported for it
    return {'cpu': model, 'cpus': os.cpu_count(), 'cpus_usable': check_threads(None),
            'python': platform.python_version(), 'paddle': getattr(paddle, '__version__', None),
            'onnxruntime': onnxruntime.__version__, 'platform': platform.platform()}


def _check_run_args(seconds, batch_size, iterations):
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f'iterations must be a positive int, got {iterations!r}')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    if not seconds > 0:
        raise ValueError(f'seconds must be positive, got {seconds!r}')


def _clips_per_s(batch_size, times):
    t = np.array(times)
    return {'clips_per_s': round(batch_size / float(np.median(t)), 3),
            'clips_per_s_mean': round(batch_size * len(t) / t.sum(), 3),
            'batch_seconds_median': round(float(np.median(t)), 4), 'batch_seconds_min': round(float(t.min()), 4)}


def run_export(model_dir, seconds=5.0, batch_size=8, iterations=5, num_threads=None):
    """clips/s of an export directory with onnxruntime, without Paddle: 'fp32' (model.onnx) and,
    when the export has one, 'int8' (model.int8.onnx); features in and scores out, plus
    end_to_end_clips_per_s with the numpy front end. Random input audio."""
    threads = check_threads(num_threads)
    _check_run_args(seconds, batch_size, iterations)
    precisions = ['fp32'] + (['int8'] if 'int8' in exportdir.read_export(model_dir) else [])
    predictors = {p: Predictor(model_dir, num_threads=threads, precision=p) for p in precisions}
    cfg = predictors['fp32'].frontend
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((batch_size, int(seconds * cfg.sample_rate)))).astype(np.float32)
    features = logmel(waves, cfg)
    times = {p: [] for p in precisions}
    end_to_end = {p: [] for p in precisions}
    for predictor in predictors.values():  # warm-up: onnxruntime prepares kernels on the first run
        predictor.engine(features)
    for _ in range(iterations):
        for p, predictor in predictors.items():
            start = time.perf_counter()
            predictor.engine(features)
            times[p].append(time.perf_counter() - start)
            start = time.perf_counter()
            predictor.score_batch(waves)
            end_to_end[p].append(time.perf_counter() - start)
    result = {}
    for p in precisions:
        result[p] = {**_clips_per_s(batch_size, times[p]), 'threads': threads,
                     'end_to_end_clips_per_s': round(batch_size / float(np.median(end_to_end[p])), 3)}
    meta = predictors['fp32'].meta
    result['setup'] = {'model_dir': os.path.abspath(model_dir), 'model': meta['model'], 'seconds': seconds,
                       'batch_size': batch_size, 'iterations': iterations, 'threads': threads,
                       'frames': int(features.shape[1]), 'classes': len(meta['labels']), 'machine': machine_info()}
    return result


def run(model='panns_cnn14', seconds=5.0, batch_size=8, iterations=5, num_threads=None, num_classes=50):
    """Measure every engine; returns a JSON-ready dict with one entry per engine (ENGINES)
    holding clips_per_s, and 'setup' with the settings and the machine."""
    return _measure([model], seconds, batch_size, iterations, num_threads, num_classes)[model]


def run_models(models, seconds=5.0, batch_size=8, iterations=5, num_threads=None, num_classes=50,
               complexity_seconds=10):
    """Measure several registered models on every engine, side by side, in one run.

    The engines of all models take turns within each iteration (as `run` does for one model), so
    load from other processes falls on every model alike. Returns a JSON-ready dict:
    'models': {name: what `run` returns for it, plus 'complexity' (export.complexity's report of
    the network timed, for the benchmark clip and for `complexity_seconds`)},
    'summary': {name: params, MACs per clip and per `complexity_seconds`, clips/s of every engine,
    and each engine's clips/s relative to the first model's}, 'setup': the settings and the machine.
    """
    from .complexity import complexity
    models = list(models)
    if not models or len(set(models)) != len(models):
        raise ValueError(f'models must be distinct registered model names, got {models!r}')
    modules = {}
    results = _measure(models, seconds, batch_size, iterations, num_threads, num_classes, modules)
    lengths = sorted({float(seconds), float(complexity_seconds)})
    reference = models[0]
    summary = {}
    for name in models:
        report = complexity(modules[name], seconds=lengths)
        results[name]['complexity'] = report
        macs = {clip['seconds']: clip['macs'] for clip in report['clips']}
        result = results[name]
        row = {'params': report['params']['total'], f'macs_{complexity_seconds:g}s': macs[float(complexity_seconds)],
               'macs_per_clip': macs[float(seconds)],
               'clips_per_s': {engine: result[engine]['clips_per_s'] for engine in ENGINES},
               'end_to_end_clips_per_s': result['default']['end_to_end_clips_per_s'],
               # MACs the default engine gets through per second: how well each architecture uses the CPU.
               'default_gmacs_per_s': round(result['default']['clips_per_s'] * macs[float(seconds)] / 1e9, 2)}
        row[f'clips_per_s_vs_{reference}'] = {
            engine: round(result[engine]['clips_per_s'] / results[reference][engine]['clips_per_s'], 2)
            for engine in ENGINES}
        summary[name] = row
    setup = {key: value for key, value in results[reference]['setup'].items() if key not in ('model', 'frames')}
    setup['models'] = models
    setup['complexity'] = (f'of the network timed (a sound-cls head with {num_classes} classes; export/complexity.py): '
                           f'parameters, and MACs on the log-mel input of one clip, front end excluded')
    return {'models': results, 'summary': summary, 'setup': setup}


def _prepare(model, seconds, batch_size, threads, num_classes, tmp):
    """One model ready to time: its engines (ENGINES, each features -> scores), its Predictor and inputs."""
    import paddle

    from ..hub import Module
    from . import quantize
    from .static import export_static
    module = Module(model, task='sound-cls', num_class=num_classes, pretrained=False)
    cfg = module.frontend_cfg
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((batch_size, int(seconds * cfg.sample_rate)))).astype(np.float32)
    features = logmel(waves, cfg)
    export_dir = os.path.join(tmp, 'export')
    export_static(module, export_dir, opset=13)
    predictor = Predictor(export_dir, num_threads=threads)
    int8_path = os.path.join(tmp, exportdir.INT8_FILE)
    reader = quantize.FeatureReader(calibration_clips(cfg.sample_rate, seconds), cfg, seconds, progress=False)
    int8_settings = quantize.quantize_onnx(os.path.join(export_dir, exportdir.ONNX_FILE), int8_path, reader)

    def dygraph(x):
        with paddle.no_grad():
            return module.scores(module(paddle.to_tensor(x))).numpy()

    runners = {
        'paddle_dygraph': dygraph,
        'paddle_inference_onednn': PaddleEngine(os.path.join(export_dir, exportdir.STATIC_PREFIX), threads),
        'onnxruntime': OnnxEngine(os.path.join(export_dir, exportdir.ONNX_FILE), threads,
                                  options=_ort_defaults(threads)),
        'default': predictor.engine,
        'onnxruntime_int8': OnnxEngine(int8_path, threads),
    }
    return {'module': module, 'runners': runners, 'predictor': predictor, 'waves': waves, 'features': features,
            'int8_settings': int8_settings}


def _measure(models, seconds, batch_size, iterations, num_threads, num_classes, modules=None):
    """{model: run()'s result}: every engine of every model timed in turn within each iteration.
    `modules`, a dict, receives each model's Module (for its complexity report)."""
    from ..device import use_cpu_threads
    threads = check_threads(num_threads)
    _check_run_args(seconds, batch_size, iterations)
    use_cpu_threads(threads)  # dygraph's CPU kernels get the threads the other engines get (device unchanged)
    with contextlib.ExitStack() as stack:
        prepared = {model: _prepare(model, seconds, batch_size, threads, num_classes,
                                    stack.enter_context(tempfile.TemporaryDirectory()))
                    for model in models}
        # One timed call per (model, engine), plus each model's end-to-end call (waveforms in).
        calls = [(model, name, fn, p['features']) for model, p in prepared.items() for name, fn in p['runners'].items()]
        calls += [(model, END_TO_END, p['predictor'].score_batch, p['waves']) for model, p in prepared.items()]
        times = {model: {name: [] for name in ENGINES + (END_TO_END,)} for model in models}
        for _, _, fn, x in calls:  # warm-up: oneDNN and onnxruntime prepare kernels on the first run
            fn(x)
        order = np.random.default_rng(0)
        for _ in range(iterations):
            # A new order every iteration: onnxruntime's and OpenMP's threads spin for a moment
            # after a run and slow whatever runs next, so no call always follows the same one.
            for i in order.permutation(len(calls)):
                model, name, fn, x = calls[i]
                start = time.perf_counter()
                fn(x)
                times[model][name].append(time.perf_counter() - start)
    if modules is not None:
        modules.update((model, p['module']) for model, p in prepared.items())
    return {model: _engine_report(model, p, times[model], times[model][END_TO_END], seconds, batch_size,
                                  iterations, threads, num_classes)
            for model, p in prepared.items()}


def _engine_report(model, prepared, times, end_to_end, seconds, batch_size, iterations, threads, num_classes):
    result = {name: {**_clips_per_s(batch_size, times[name]), 'threads': threads} for name in ENGINES}
    result['paddle_dygraph']['engine'] = 'Paddle dygraph (the Module)'
    result['paddle_inference_onednn']['engine'] = 'paddle.inference with enable_mkldnn()'
    result['onnxruntime']['engine'] = "onnxruntime, ORT's default SessionOptions (intra_op_num_threads set)"
    result['default']['engine'] = (f'{prepared["predictor"].engine_name}, Predictor default '
                                   f'(deploy.engines.onnx_session_options)')
    result['default']['end_to_end_clips_per_s'] = round(batch_size / float(np.median(end_to_end)), 3)
    result['default']['speedup_vs_onnxruntime'] = round(
        result['default']['clips_per_s'] / result['onnxruntime']['clips_per_s'], 3)
    result['onnxruntime_int8']['engine'] = ("model.int8.onnx in onnxruntime, Predictor default settings "
                                            "(precision='int8')")
    result['onnxruntime_int8']['speedup_vs_default'] = round(
        result['onnxruntime_int8']['clips_per_s'] / result['default']['clips_per_s'], 3)
    int8_settings = prepared['int8_settings']
    result['onnxruntime_int8']['quantization'] = {
        k: int8_settings[k] for k in ('method', 'per_channel', 'quant_format', 'activation_type', 'weight_type',
                                      'keep_float', 'onnxruntime')}
    result['onnxruntime_int8']['quantization']['calibration'] = f'{CALIBRATION_CLIPS} generated clips'
    result['setup'] = {'model': model, 'seconds': seconds, 'batch_size': batch_size, 'iterations': iterations,
                       'threads': threads, 'frames': int(prepared['features'].shape[1]), 'classes': num_classes,
                       'measures': 'backbone only (log-mel features in, scores out) unless named end_to_end',
                       'weights': 'random: speed does not depend on weight values',
                       'machine': machine_info()}
    return result


def calibration_clips(sample_rate, seconds):
    """CALIBRATION_CLIPS generated waveforms: noise and tones at levels from -40 to -6 dBFS."""
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    clips = []
    for i, level in enumerate(np.linspace(-40, -6, CALIBRATION_CLIPS)):
        amp = 10 ** (level / 20)
        wave = rng.standard_normal(len(t)) if i % 2 else np.sin(2 * np.pi * rng.uniform(100, 8000) * t)
        clips.append((amp * wave).astype(np.float32))
    return clips


def _ort_defaults(threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options
