"""Event detection: real-time factors (audio seconds per compute second) of offline detection, at
batch sizes 1 and the default (deploy.detection.DEFAULT_BATCH_SIZE windows per network call), and
of streaming, side by side with tagging throughput of the same model in the same run (clips of
the window length scored in batches), per model and engine; and event and segment F1 on
generated scenes with known event times. Prints figures (JSON with --json); asserts nothing.

    python benchmarks/bench_events.py --models panns_cnn14 efficientat_mn10 --seconds 60 --json

Engines: onnxruntime (an export's model.frames.onnx / model.onnx through Predictor, its
defaults), onnxruntime_int8 (the same export quantized: model.frames.int8.onnx /
model.int8.onnx, kept whatever the check says, since random weights decide nothing) and dygraph (the Module in Paddle, Module.detect). Offline detection with windows of
`window` seconds every `hop` seconds scores window / hop times the audio, so its best real-time
factor is the tagging one times hop / window: `detect_vs_tagging` is the measured detection
figure over that bound (1.0: detection costs no more than scoring its windows as clips). Where
the network lets offline detection score overlapping windows once (docs/events.md), it goes
beyond that bound: `merged_windows` says how many windows one segment stands for, and
`offline_rtf_batch_N_window_by_window` gives the figure without merging (frame_scorer(merge=False)).
Each figure is the best of --repeats runs after a warm-up (other processes' load only slows).
Detection decides on the events of --sounding-classes classes (10 by default; the others stay below
their thresholds, as most of a tagger's 527 classes do in a recording): the `_all_classes` figures
decide on every class, which random weights make all reach the default threshold (the most work
the decisions can take).

Speed does not depend on the weights, so the models have random weights. The F1 figures need a
model that knows the sounds: the scenes' events (tones, chirps, noise bursts... in background
noise, with overlaps, see datasets/scenes.py) are scored by a CNN6 whose weights make its one
class respond to loudness, frame by frame; so they measure the detection pipeline (windows,
frame scores, thresholds, median filter, event metrics) on exact ground truth, not a trained
model's accuracy.
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

from paddle_soundcls.scripts import silence_third_party_noise  # noqa: E402

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

import paddle  # noqa: E402
from paddle_soundcls import Module  # noqa: E402
from paddle_soundcls.datasets.scenes import make_scenes  # noqa: E402
from paddle_soundcls.datasets.strong import read_strong_labels  # noqa: E402
from paddle_soundcls.deploy import Predictor, detection  # noqa: E402
from paddle_soundcls.deploy.event_metrics import event_based_metrics, segment_based_metrics  # noqa: E402
from paddle_soundcls.deploy.events import EventConfig  # noqa: E402
from paddle_soundcls.export import export_static  # noqa: E402
from paddle_soundcls.analysis.benchmark import machine_info  # noqa: E402


ENGINES = ('onnxruntime', 'onnxruntime_int8', 'dygraph')


def _best_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def quantized_export(model, directory):
    """An export of `model` with model.int8.onnx and model.frames.int8.onnx, calibrated on noise and
    tones and kept whatever its agreement with float (speed does not depend on it; random weights
    would fail the check)."""
    import soundfile as sf
    from paddle_soundcls.export.quantize import quantize_export
    export_static(model, directory, opset=13)
    sr = model.frontend_cfg.sample_rate
    calibration = os.path.join(directory + '_calibration')
    os.makedirs(calibration, exist_ok=True)
    rng = np.random.default_rng(2)
    t = np.arange(int(5 * sr)) / sr
    for i in range(16):
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(os.path.join(calibration, f'clip{i}.wav'), wave.astype(np.float32), sr, subtype='PCM_16')
    quantize_export(directory, calibration, force=True, progress=False)
    return directory


def random_model(name):
    """`name` with random weights: the AudioSet tagger, or for a model without that head (CP-Mobile,
    CP-ResNet) a 10-class multi-label one."""
    from paddle_soundcls.models import registry
    if registry.get_spec(name).audioset_head is not None:
        model = Module(name, task='tagging', pretrained=False, seed=0)
    else:
        model = Module(name, task='sound-cls', num_class=10, multi_label=True, pretrained=False, seed=0)
    model.eval()
    return model


def sounding_config(num_classes, sounding):
    """Event settings under which the first `sounding` classes are decided on (onset threshold 0.5,
    which random-weights scores hover about) and the others never reach their threshold (1.0), as a
    tagger's few classes that sound in a recording among its 527; None: the defaults, under which a
    random-weights tagger's every class reaches 0.5 and is decided on (the most work there is)."""
    if sounding is None:
        return None
    onset = [0.5 if c < sounding else 1.0 for c in range(num_classes)]
    return EventConfig(onset_threshold=tuple(onset), offset_threshold=tuple(0.45 if v < 1 else 1.0 for v in onset))


def real_time_factors(name, seconds, window, hop, work, engines=ENGINES, batch_size=None, repeats=2,
                      sounding=10):
    """Per engine: audio seconds per compute second of offline detection (batch sizes 1 and
    `batch_size`), of a stream fed 0.5-s chunks, and of tagging clips of `window` seconds in
    batches of `batch_size`. Detection decides on events of `sounding` classes (sounding_config);
    the `_all_classes` figures on every class."""
    batch_size = batch_size or detection.DEFAULT_BATCH_SIZE
    model = random_model(name)
    runners = {}
    if 'onnxruntime' in engines:
        export = os.path.join(work, name)
        export_static(model, export, opset=13)
        predictor = Predictor(export)
        runners['onnxruntime'] = (predictor.frame_scorer, predictor.score_batch, predictor.engine.num_threads)
    if 'onnxruntime_int8' in engines:
        int8_export = quantized_export(model, os.path.join(work, name + '_int8'))
        predictor = Predictor(int8_export, engine='onnxruntime_int8')
        runners['onnxruntime_int8'] = (predictor.frame_scorer, predictor.score_batch, predictor.engine.num_threads)
    if 'dygraph' in engines:
        def tag(waves):
            with paddle.no_grad():
                return model(model.frontend(paddle.to_tensor(waves))).numpy()
        runners['dygraph'] = (model.frame_scorer, tag, None)   # Paddle's own CPU threads
    sr = model.frontend_cfg.sample_rate
    wave = (0.05 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)
    clips = (0.05 * np.random.default_rng(1).standard_normal((batch_size, int(window * sr)))).astype(np.float32)
    out = {}
    config = sounding_config(len(model.labels), sounding)
    for engine, (frame_scorer, score_batch, threads) in runners.items():
        scorer = frame_scorer(window, hop)

        def detect(size, config=config):
            return lambda: detection.detect(scorer, wave, config, batch_size=size)
        for size in (1, batch_size):   # warm-up: every batch shape the runs use
            detection.detect(scorer, wave[:int(max(window, 4 * hop) * sr) + sr // 3], batch_size=size)
        score_batch(clips)
        offline_1 = _best_seconds(detect(1), repeats)
        offline_n = _best_seconds(detect(batch_size), repeats)
        offline_all = _best_seconds(detect(batch_size, None), repeats)
        one_by_one = None
        if scorer.merge_windows > 1:   # overlapping windows scored once: the same without it
            unmerged = frame_scorer(window, hop, merge=False)
            one_by_one = _best_seconds(lambda: detection.detect(unmerged, wave, config, batch_size=batch_size),
                                       repeats)

        def stream(config=config):
            s = detection.EventStream(frame_scorer(window, hop), sr, config)
            chunk = sr // 2
            for i in range(0, len(wave), chunk):
                s.push(wave[i:i + chunk])
            s.close()
            return s
        streaming = _best_seconds(stream, repeats)
        streaming_all = _best_seconds(lambda: stream(None), repeats)
        # Tagging: as many clips of the window length as the audio holds windows' worth of, in batches.
        calls = max(1, int(np.ceil(seconds / window / batch_size)))
        tagging = _best_seconds(lambda: [score_batch(clips) for _ in range(calls)], repeats)
        tagging_rtf = calls * batch_size * window / tagging
        detect_rtf = seconds / offline_n
        out[engine] = {
            'offline_rtf_batch_1': round(seconds / offline_1, 2),
            f'offline_rtf_batch_{batch_size}': round(detect_rtf, 2),
            'stream_rtf': round(seconds / streaming, 2),
            f'offline_rtf_batch_{batch_size}_all_classes': round(seconds / offline_all, 2),
            'stream_rtf_all_classes': round(seconds / streaming_all, 2),
            f'tagging_rtf_batch_{batch_size}': round(tagging_rtf, 2),
            'detect_vs_tagging': round(detect_rtf / (tagging_rtf * hop / window), 3),
            'merged_windows': scorer.merge_windows,
            f'offline_rtf_batch_{batch_size}_window_by_window': None if one_by_one is None else round(seconds / one_by_one, 2),
            'threads': threads}
        if engine == 'onnxruntime_int8':
            out[engine]['frames_precision'] = scorer_precision(frame_scorer)
    stream_latency = detection.EventStream(model.frame_scorer(window, hop), sr).latency_seconds
    return {**out, 'stream_latency_s': round(stream_latency, 3), 'window_s': window, 'hop_s': hop,
            'sounding_classes': sounding, 'classes': len(model.labels),
            'audio_s': seconds, 'batch_size': batch_size, 'repeats': repeats}


def scorer_precision(frame_scorer):
    predictor = getattr(frame_scorer, '__self__', None)
    return getattr(predictor, 'frames_precision', None)


def scene_f1(work, num_scenes, seconds):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
    from test_detection import loudness_detector  # the loud-sound detector of the tests
    folder = os.path.join(work, 'scenes')
    make_scenes(folder, num_scenes=num_scenes, seconds=seconds, classes=5, seed=0)
    truth = read_strong_labels(os.path.join(folder, 'meta', 'events.csv'))
    model = loudness_detector()
    export = os.path.join(work, 'detector')
    export_static(model, export, opset=13)
    predictor = Predictor(export)
    config = EventConfig(onset_threshold=0.9, offset_threshold=0.5, median_filter_seconds=0.05)
    files = sorted(truth)
    results = predictor.detect([os.path.join(folder, 'audio', f) for f in files], window=4.0, hop=2.0, config=config)
    # One class: 'a sound is playing' (overlapping events of the scene merge into one span).
    reference = {f: _merge([(a, b) for a, b, _ in truth[f]]) for f in files}
    estimate = {f: [(e['onset'], e['offset'], 'sound') for e in r['events'] if e['label'] == 'event']
                for f, r in zip(files, results)}
    reference = {f: [(a, b, 'sound') for a, b in spans] for f, spans in reference.items()}
    event = event_based_metrics(reference, estimate, labels=['sound'])
    segment = segment_based_metrics(reference, estimate, labels=['sound'], durations={f: seconds for f in files})
    return {'scenes': num_scenes, 'scene_s': seconds, 'reference_events': sum(len(v) for v in reference.values()),
            'event_f1': round(event['micro']['f1'], 4), 'segment_f1': round(segment['micro']['f1'], 4),
            'detector': 'CNN6 with loudness weights (one class), thresholds 0.9 / 0.5, median 0.05 s'}


def _merge(spans):
    merged = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=['panns_cnn14', 'efficientat_mn10'])
    p.add_argument('--seconds', type=float, default=60.0, help='audio per speed measurement (default 60)')
    p.add_argument('--window', type=float, default=2.0, help='detection window, seconds (default 2)')
    p.add_argument('--hop', type=float, default=0.5, help='detection hop, seconds (default 0.5)')
    p.add_argument('--engines', nargs='+', default=list(ENGINES), choices=ENGINES)
    p.add_argument('--batch-size', type=int, default=detection.DEFAULT_BATCH_SIZE,
                   help=f'windows per network call, and clips per tagging call (default '
                        f'{detection.DEFAULT_BATCH_SIZE})')
    p.add_argument('--repeats', type=int, default=2, help='runs per figure, the best kept (default 2)')
    p.add_argument('--sounding-classes', type=int, default=10,
                   help='classes decided on in the detection figures (default 10; the others stay below '
                        'their thresholds); the _all_classes figures decide on every class')
    p.add_argument('--scenes', type=int, default=20, help='generated scenes for the F1 figures (default 20; 0 skips)')
    p.add_argument('--scene-seconds', type=float, default=10.0)
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        result = {name: real_time_factors(name, args.seconds, args.window, args.hop, work, args.engines,
                                          args.batch_size, args.repeats, args.sounding_classes)
                  for name in args.models}
        if args.scenes:
            result['scenes'] = scene_f1(work, args.scenes, args.scene_seconds)
    result['setup'] = {'machine': machine_info(), 'engines': 'onnxruntime(_int8): Predictor defaults; dygraph: Module',
                       'weights': 'random for speed (it does not depend on them)',
                       'load_average_1min': {'before': round(load_before[0], 2), 'after': round(os.getloadavg()[0], 2)}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        n = args.batch_size
        for name in args.models:
            r = result[name]
            for engine in args.engines:
                e = r[engine]
                print(f'{name:20s} {engine:16s} offline {e["offline_rtf_batch_1"]:7.1f}x (batch 1) '
                      f'{e[f"offline_rtf_batch_{n}"]:7.1f}x (batch {n}), stream {e["stream_rtf"]:7.1f}x, '
                      f'tagging {e[f"tagging_rtf_batch_{n}"]:7.1f}x; detection at {e["detect_vs_tagging"]:.2f} '
                      f'of tagging\'s bound')
            print(f'{"":20s} latency {r["stream_latency_s"]} s + compute')
        if args.scenes:
            scenes = result['scenes']
            print(f'scenes: event F1 {scenes["event_f1"]:.3f}, segment F1 {scenes["segment_f1"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
