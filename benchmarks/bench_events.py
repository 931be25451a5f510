"""Event detection: real-time factors (audio seconds per compute second) of offline detection and
of streaming, for registered models, on the Paddle-free runtime; and event and segment F1 on
generated scenes with known event times. Prints figures (JSON with --json); asserts nothing.

    python benchmarks/bench_events.py --models panns_cnn14 efficientat_mn10 --seconds 60 --json

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

from paddle_soundcls import Module  # noqa: E402
from paddle_soundcls.datasets.scenes import make_scenes  # noqa: E402
from paddle_soundcls.datasets.strong import read_strong_labels  # noqa: E402
from paddle_soundcls.deploy import Predictor  # noqa: E402
from paddle_soundcls.deploy.event_metrics import event_based_metrics, segment_based_metrics  # noqa: E402
from paddle_soundcls.deploy.events import EventConfig  # noqa: E402
from paddle_soundcls.export import export_static  # noqa: E402
from paddle_soundcls.analysis.benchmark import machine_info  # noqa: E402


def real_time_factors(name, seconds, window, hop, work):
    """Audio seconds per compute second of Predictor.detect and of Predictor.stream (0.5-s chunks)."""
    model = Module(name, task='tagging', pretrained=False, seed=0)
    export = os.path.join(work, name)
    export_static(model, export, opset=13)
    predictor = Predictor(export)
    sr = predictor.frontend_cfg.sample_rate
    wave = (0.05 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32)
    predictor.detect([wave[:sr]], sr, window=window, hop=hop)  # warm-up
    start = time.perf_counter()
    predictor.detect([wave], sr, window=window, hop=hop)
    offline = time.perf_counter() - start
    stream = predictor.stream(sr, window=window, hop=hop)
    chunk = sr // 2
    start = time.perf_counter()
    for i in range(0, len(wave), chunk):
        stream.push(wave[i:i + chunk])
    stream.close()
    streaming = time.perf_counter() - start
    return {'offline_rtf': round(seconds / offline, 2), 'stream_rtf': round(seconds / streaming, 2),
            'stream_latency_s': round(stream.latency_seconds, 3), 'window_s': window, 'hop_s': hop,
            'audio_s': seconds}


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
    p.add_argument('--scenes', type=int, default=20, help='generated scenes for the F1 figures (default 20)')
    p.add_argument('--scene-seconds', type=float, default=10.0)
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = {name: real_time_factors(name, args.seconds, args.window, args.hop, work) for name in args.models}
        result['scenes'] = scene_f1(work, args.scenes, args.scene_seconds)
    result['setup'] = {'machine': machine_info(), 'engine': 'onnxruntime (Predictor defaults)',
                       'weights': 'random for speed (it does not depend on them)'}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in args.models:
            r = result[name]
            print(f'{name:20s} offline {r["offline_rtf"]:8.1f}x real time, stream {r["stream_rtf"]:8.1f}x, '
                  f'latency {r["stream_latency_s"]} s + compute')
        print(f'scenes: event F1 {result["scenes"]["event_f1"]:.3f}, segment F1 {result["scenes"]["segment_f1"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
