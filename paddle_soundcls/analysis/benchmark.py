"""CPU inference speed of registered models on every engine, measured in one run on the same inputs.

The report's keys are the engines as `Predictor(engine=...)` and
`Module.predict(engine=...)` name them (deploy.engines.ENGINES)
(backbone only: log-mel features in, scores out):
    dygraph             the Module in Paddle dygraph (Module.predict(engine='dygraph'))
    paddle              the exported static model in Paddle Inference with oneDNN
                        (Predictor(engine='paddle'))
    onnxruntime         model.onnx in onnxruntime with deploy.engines.onnx_session_options:
                        Predictor's default engine, and Module.predict's for 4 clips or more
    onnxruntime_int8    model.int8.onnx (export/quantize.py with its default settings, calibrated
                        on a few generated clips), as Predictor(engine='onnxruntime_int8') runs it
`onnxruntime` also holds the end-to-end figure (waveforms in, numpy log-mel front end included)
and, under ORT_DEFAULTS, model.onnx timed with onnxruntime's own default session settings: the
baseline the tuned settings are measured against.
`run` measures one registered model; `run_models` several side by side, with their complexity
(parameters, MACs) from analysis/complexity.py.

The weights are random: speed does not depend on their values, and no download is needed.
`run_export` measures an existing export directory instead, without Paddle, under the same keys.
(int8 answers do depend on them: see the int8 check in export/parity.py, not this file.)
Engines take turns within each iteration, in a new order each time, so a burst of load from
other processes slows them all alike rather than one of them, and no engine always runs
while the previous one's threads are still spinning; clips_per_s uses the median batch
time, which a few slow batches do not move.
"""
import contextlib
import os
import platform
import sys
import tempfile
import time

import numpy as np

from ..deploy import Predictor, exportdir
from ..deploy.engines import OnnxEngine, PaddleEngine, check_threads
from ..features.mel import logmel
from .. import validate
from ..errors import ArgumentError

RUNS = (('dygraph', 'fp32'), ('paddle', 'fp32'), ('onnxruntime', 'fp32'), ('onnxruntime', 'int8'))
ORT_DEFAULTS = 'ort_default_options'  # model.onnx with onnxruntime's own settings, under 'onnxruntime'
END_TO_END = 'end_to_end'  # Predictor's default engine (onnxruntime) with the numpy front end: waveforms in
CALIBRATION_CLIPS = 8
DEFAULT_HEAD_CLASSES = 50  # the head timed: ESC-50's classes
DESCRIPTIONS = {
    'dygraph': "Paddle dygraph (the Module), as Module.predict(engine='dygraph') runs it",
    'paddle': "Paddle Inference with oneDNN (inference.json), as Predictor(engine='paddle') runs it",
    'onnxruntime': 'model.onnx in onnxruntime with deploy.engines.onnx_session_options, as Predictor() runs it',
    'onnxruntime_int8': "model.int8.onnx in onnxruntime, as Predictor(engine='onnxruntime_int8') runs it",
    ORT_DEFAULTS: "model.onnx in onnxruntime with ORT's default SessionOptions (intra_op_num_threads set)",
    'tflite': "model.tflite in the TFLite interpreter (XNNPACK), as Predictor(engine='tflite') runs it",
    'tflite_int8': "model.int8.tflite (full integer) in the TFLite interpreter, as Predictor(engine='tflite_int8') "
                   "runs it",
}


def engine_key(engine, precision='fp32'):
    """The report's key of an engine run at a precision: 'onnxruntime', 'onnxruntime_int8'."""
    return engine if precision == 'fp32' else f'{engine}_{precision}'


ENGINES = tuple(engine_key(engine, precision) for engine, precision in RUNS)
# run_export measures an export on every engine it has a model for: these need no Paddle.
EXPORT_ENGINES = ('onnxruntime', 'onnxruntime_int8', 'tflite', 'tflite_int8')
EXPORT_ENTRIES = {'onnxruntime_int8': 'int8', 'tflite': 'tflite', 'tflite_int8': 'tflite_int8'}   # export.json keys


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
    import onnxruntime
    paddle = sys.modules.get('paddle')  # reported when loaded, never imported for it
    return {'cpu': model, 'cpus': os.cpu_count(), 'cpus_usable': check_threads(None),
            'python': platform.python_version(), 'paddle': getattr(paddle, '__version__', None),
            'onnxruntime': onnxruntime.__version__, 'platform': platform.platform()}


def _check_run_args(seconds, batch_size, iterations):
    validate.positive_int('iterations', iterations)
    validate.positive_int('batch_size', batch_size)
    if not seconds > 0:
        raise ArgumentError(f'seconds must be positive, got {seconds!r}')


def _clips_per_s(batch_size, times):
    t = np.array(times)
    return {'clips_per_s': round(batch_size / float(np.median(t)), 3),
            'clips_per_s_mean': round(batch_size * len(t) / t.sum(), 3),
            'batch_seconds_median': round(float(np.median(t)), 4), 'batch_seconds_min': round(float(t.min()), 4)}


def _random_waves(batch_size, seconds, sample_rate):
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((batch_size, int(seconds * sample_rate)))).astype(np.float32)


def run_export(model_dir, seconds=5.0, batch_size=8, iterations=5, num_threads=None):
    """clips/s of an export directory in onnxruntime, without Paddle: 'onnxruntime' (model.onnx)
    and, when the export has them, 'onnxruntime_int8' (model.int8.onnx), 'tflite' (model.tflite)
    and 'tflite_int8' (model.int8.tflite, in the TFLite interpreter); features in and scores
    out, plus end_to_end_clips_per_s with the numpy front end. Random input audio."""
    threads = check_threads(num_threads)
    _check_run_args(seconds, batch_size, iterations)
    meta = exportdir.read_export(model_dir)
    if meta.get('ensemble'):
        first = os.path.join(os.fspath(model_dir), meta['ensemble']['members'][0]['dir'])
        raise ArgumentError(f'{model_dir} is an ensemble export; benchmark each of its members (e.g. '
                            f'`paddle-soundcls benchmark {first}`): the ensemble costs their sum')
    # Every engine the export has a model for: its int8 ONNX model, its TFLite models.
    engines = [engine for engine in EXPORT_ENGINES if engine == 'onnxruntime' or EXPORT_ENTRIES[engine] in meta]
    predictors = {engine: Predictor(model_dir, engine=engine, num_threads=threads) for engine in engines}
    first = predictors['onnxruntime']
    waves = _random_waves(batch_size, seconds, first.frontend_cfg.sample_rate)
    features = logmel(waves, first.frontend_cfg)
    times = {key: [] for key in predictors}
    end_to_end = {key: [] for key in predictors}
    for predictor in predictors.values():  # warm-up: onnxruntime prepares kernels on the first run
        predictor.engine(features)
    for _ in range(iterations):
        for key, predictor in predictors.items():
            start = time.perf_counter()
            predictor.engine(features)
            times[key].append(time.perf_counter() - start)
            start = time.perf_counter()
            predictor.score_batch(waves)
            end_to_end[key].append(time.perf_counter() - start)
    result = {key: {**_clips_per_s(batch_size, times[key]), 'threads': threads, 'engine': predictor.engine_name,
                    'precision': predictor.precision, 'description': DESCRIPTIONS[key],
                    'end_to_end_clips_per_s': round(batch_size / float(np.median(end_to_end[key])), 3)}
              for key, predictor in predictors.items()}
    result['setup'] = {'model_dir': os.path.abspath(model_dir), 'model': first.meta['model'], 'seconds': seconds,
                       'batch_size': batch_size, 'iterations': iterations, 'threads': threads,
                       'frames': int(features.shape[1]), 'classes': len(first.meta['labels']),
                       'machine': machine_info()}
    return result


def run(model='panns_cnn14', seconds=5.0, batch_size=8, iterations=5, num_threads=None, num_class=None, num_classes=None):
    """Measure every engine of one registered model; returns a JSON-ready dict:

    ENGINES each: {'clips_per_s' (median batch), 'clips_per_s_mean', 'batch_seconds_median',
        'batch_seconds_min', 'threads', 'engine' and 'precision' (as Predictor names them),
        'description'};
    'onnxruntime' also: 'end_to_end_clips_per_s' (waveforms in), ORT_DEFAULTS (the same figures
        with onnxruntime's default session settings) and 'speedup_vs_ort_default_options';
    'onnxruntime_int8' also: 'speedup_vs_onnxruntime' and 'quantization' (its settings);
    'setup': the settings and the machine. num_class: the classes of the head timed (default 50;
    num_classes is its deprecated name).
    """
    num_class = validate.renamed('num_classes', num_classes, 'num_class', num_class)
    num_class = DEFAULT_HEAD_CLASSES if num_class is None else validate.positive_int('num_class', num_class)
    return _measure([model], seconds, batch_size, iterations, num_threads, num_class)[model]


def run_models(models, seconds=5.0, batch_size=8, iterations=5, num_threads=None, num_class=None,
               complexity_seconds=10, num_classes=None):
    """Measure several registered models on every engine, side by side, in one run.

    The engines of all models take turns within each iteration (as `run` does for one model), so
    load from other processes falls on every model alike. Returns a JSON-ready dict:
    'models': {name: what `run` returns for it, plus 'complexity' (analysis.complexity's report of
    the network timed, for the benchmark clip and for `complexity_seconds`)},
    'summary': {name: params, MACs per clip and per `complexity_seconds`, clips/s of every engine
    (ENGINES) and of the ORT_DEFAULTS baseline, and each engine's clips/s relative to the first
    model's}, 'setup': the settings and the machine.
    """
    from .complexity import complexity
    num_class = validate.renamed('num_classes', num_classes, 'num_class', num_class)
    num_class = DEFAULT_HEAD_CLASSES if num_class is None else validate.positive_int('num_class', num_class)
    models = list(models)
    if not models or len(set(models)) != len(models):
        raise ArgumentError(f'models must be distinct registered model names, got {models!r}')
    modules = {}
    results = _measure(models, seconds, batch_size, iterations, num_threads, num_class, modules)
    lengths = sorted({float(seconds), float(complexity_seconds)})
    for name in models:
        results[name]['complexity'] = complexity(modules[name], seconds=lengths)
    summary = {name: _summary_row(results[name], results[models[0]], models[0], seconds, complexity_seconds)
               for name in models}
    setup = {key: value for key, value in results[models[0]]['setup'].items() if key not in ('model', 'frames')}
    setup['models'] = models
    setup['complexity'] = (f'of the network timed (a sound-cls head with {num_class} classes; '
                           f'analysis/complexity.py): parameters, and MACs on the log-mel input of one clip, front '
                           f'end excluded')
    return {'models': results, 'summary': summary, 'setup': setup}


def _summary_row(result, reference_result, reference, seconds, complexity_seconds):
    """One model's line of run_models' summary; `reference_result` is the first model's result."""
    macs = {clip['seconds']: clip['macs'] for clip in result['complexity']['clips']}
    default = result['onnxruntime']
    return {
        'params': result['complexity']['params']['total'],
        f'macs_{complexity_seconds:g}s': macs[float(complexity_seconds)],
        'macs_per_clip': macs[float(seconds)],
        'clips_per_s': {engine: result[engine]['clips_per_s'] for engine in ENGINES},
        'ort_default_options_clips_per_s': default[ORT_DEFAULTS]['clips_per_s'],
        'end_to_end_clips_per_s': default['end_to_end_clips_per_s'],
        # MACs the default engine gets through per second: how well each architecture uses the CPU.
        'onnxruntime_gmacs_per_s': round(default['clips_per_s'] * macs[float(seconds)] / 1e9, 2),
        f'clips_per_s_vs_{reference}': {
            engine: round(result[engine]['clips_per_s'] / reference_result[engine]['clips_per_s'], 2)
            for engine in ENGINES},
    }


def _prepare(model, seconds, batch_size, threads, num_class, tmp):
    """One model ready to time: its runners (ENGINES and ORT_DEFAULTS, each features -> scores),
    its Predictor (the default engine, for the end-to-end figure) and inputs."""
    import paddle

    from ..export import quantize
    from ..export.static import export_static
    from ..module import Module
    module = Module(model, task='sound-cls', num_class=num_class, pretrained=False)
    cfg = module.frontend_cfg
    waves = _random_waves(batch_size, seconds, cfg.sample_rate)
    features = logmel(waves, cfg)
    export_dir = os.path.join(tmp, 'export')
    export_static(module, export_dir, opset=13)
    predictor = Predictor(export_dir, engine='onnxruntime', num_threads=threads)
    int8_path = os.path.join(tmp, exportdir.INT8_FILE)
    # One clip per calibration pass (the ranges do not depend on the batching): PaSST's activations
    # for a batch of 8 ten-second clips take more than 12 GB in onnxruntime's calibration.
    reader = quantize.FeatureReader(calibration_clips(cfg.sample_rate, seconds), cfg, seconds, batch_size=1,
                                    progress=False)
    int8_settings = quantize.quantize_onnx(os.path.join(export_dir, exportdir.ONNX_FILE), int8_path, reader)

    def dygraph(x):
        with paddle.no_grad():
            return module.scores(module(paddle.to_tensor(x))).numpy()

    runners = {
        'dygraph': dygraph,
        'paddle': PaddleEngine(os.path.join(export_dir, exportdir.STATIC_PREFIX), threads),
        'onnxruntime': predictor.engine,
        'onnxruntime_int8': OnnxEngine(int8_path, threads),
        ORT_DEFAULTS: OnnxEngine(os.path.join(export_dir, exportdir.ONNX_FILE), threads,
                                 options=_ort_defaults(threads)),
    }
    return {'module': module, 'runners': runners, 'predictor': predictor, 'waves': waves, 'features': features,
            'int8_settings': int8_settings}


def _measure(models, seconds, batch_size, iterations, num_threads, num_class, modules=None):
    """{model: run()'s result}: every engine of every model timed in turn within each iteration.
    `modules`, a dict, receives each model's Module (for its complexity report)."""
    from ..device import use_cpu_threads
    threads = check_threads(num_threads)
    _check_run_args(seconds, batch_size, iterations)
    use_cpu_threads(threads)  # dygraph's CPU kernels get the threads the other engines get (device unchanged)
    with contextlib.ExitStack() as stack:
        prepared = {model: _prepare(model, seconds, batch_size, threads, num_class,
                                    stack.enter_context(tempfile.TemporaryDirectory()))
                    for model in models}
        # One timed call per (model, runner), plus each model's end-to-end call (waveforms in).
        calls = [(model, name, fn, p['features']) for model, p in prepared.items() for name, fn in p['runners'].items()]
        calls += [(model, END_TO_END, p['predictor'].score_batch, p['waves']) for model, p in prepared.items()]
        times = {model: {name: [] for _, name, _, _ in calls} for model in models}
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
    return {model: _engine_report(model, p, times[model], seconds, batch_size, iterations, threads, num_class)
            for model, p in prepared.items()}


def _engine_report(model, prepared, times, seconds, batch_size, iterations, threads, num_class):
    """run()'s result for one model from its batch times ({runner or END_TO_END: [seconds, ...]})."""
    result = {}
    for engine, precision in RUNS:
        key = engine_key(engine, precision)
        result[key] = {**_clips_per_s(batch_size, times[key]), 'threads': threads, 'engine': engine,
                       'precision': precision, 'description': DESCRIPTIONS[key]}
    default = result['onnxruntime']
    default['end_to_end_clips_per_s'] = round(batch_size / float(np.median(times[END_TO_END])), 3)
    default[ORT_DEFAULTS] = {**_clips_per_s(batch_size, times[ORT_DEFAULTS]), 'description': DESCRIPTIONS[ORT_DEFAULTS]}
    default['speedup_vs_ort_default_options'] = round(default['clips_per_s'] / default[ORT_DEFAULTS]['clips_per_s'], 3)
    int8 = result['onnxruntime_int8']
    int8['speedup_vs_onnxruntime'] = round(int8['clips_per_s'] / default['clips_per_s'], 3)
    int8['quantization'] = {k: prepared['int8_settings'][k] for k in (
        'method', 'per_channel', 'quant_format', 'activation_type', 'weight_type', 'keep_float', 'onnxruntime')}
    int8['quantization']['calibration'] = f'{CALIBRATION_CLIPS} generated clips'
    result['setup'] = {'model': model, 'seconds': seconds, 'batch_size': batch_size, 'iterations': iterations,
                       'threads': threads, 'frames': int(prepared['features'].shape[1]), 'classes': num_class,
                       'measures': 'backbone only (log-mel features in, scores out) unless named end_to_end',
                       'weights': 'random: speed does not depend on weight values',
                       'machine': machine_info()}
    return result


def format_report(result):
    """What run() or run_export() returned, as the lines `paddle-soundcls benchmark` prints."""
    setup = result['setup']
    if 'model_dir' in setup:
        what = f'{setup["model_dir"]} ({setup["model"]})'
    else:
        what = f'{setup["model"]} ({setup["weights"]})'
    lines = [f'{what}, {setup["seconds"]:g}-s clips, batch {setup["batch_size"]}, {setup["threads"]} threads, '
             f'{setup["machine"]["cpu"]}']
    lines += [f'  {key:26s} {result[key]["clips_per_s"]:8.2f} clips/s' for key in ENGINES if key in result]
    default = result['onnxruntime']
    if ORT_DEFAULTS in default:
        lines.append(f'  {"onnxruntime, ORT defaults":26s} {default[ORT_DEFAULTS]["clips_per_s"]:8.2f} clips/s')
    lines.append(f'  {"end to end (front end too)":26s} {default["end_to_end_clips_per_s"]:8.2f} clips/s')
    return '\n'.join(lines)


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
