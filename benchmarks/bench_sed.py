"""The whole detection pipeline on generated scenes: train, tune thresholds, detect, score.

    python benchmarks/bench_sed.py --json
    python benchmarks/bench_sed.py --scenes 100 --epochs 40 --model cpmobile --json

Generated scenes (datasets/scenes.make_scenes, with its train / dev / test split) hold known
events of five synthetic sound families in background noise. Two models of the same network
are trained from random weights on the train scenes:
- 'strong': on the event times (StrongLabelDataset: frame targets on the network's frames);
- 'weak': on the clip labels only (which families occur in the scene), with decision-level
  pooling, so its frame scores are trained through the pooled clip score.
For each, per-class event thresholds are tuned on the dev scenes (Module.tune_event_thresholds),
then `detect` runs on the test scenes and a stream (Predictor.stream, 0.5-s chunks, on the
export) over each of them; both are scored with event-based F1 (200-ms onset collar, offset
collar max(200 ms, 20 % of the length)) and segment-based F1 (1-s segments), micro and
class-average (deploy/event_metrics.py, checked against sed_eval). Prints figures (JSON with
--json); asserts nothing. On scenes this clean, a pipeline whose times are right reaches
event F1 close to its segment F1.
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

from paddle_soundcls import Module, Trainer  # noqa: E402
from paddle_soundcls.datasets import StrongLabelDataset  # noqa: E402
from paddle_soundcls.datasets.base import AudioDataset  # noqa: E402
from paddle_soundcls.datasets.scenes import make_scenes  # noqa: E402
from paddle_soundcls.datasets.strong import read_strong_labels  # noqa: E402
from paddle_soundcls.deploy import Predictor  # noqa: E402
from paddle_soundcls.deploy.event_metrics import event_based_metrics, segment_based_metrics  # noqa: E402
from paddle_soundcls.export import export_static  # noqa: E402
from paddle_soundcls.analysis.benchmark import machine_info  # noqa: E402
from paddle_soundcls.training.schedules import build_scheduler, steps_per_epoch  # noqa: E402

CLASSES = ['tone', 'chirp', 'noise_burst', 'clicks', 'hum']
SCENE_SECONDS = 10.0


def scene_sets(folder, labels, sample_rate, frame_hop, crop_seconds):
    """{part: (StrongLabelDataset, file paths, {path: events})} for train, dev and test."""
    sets = {}
    for part in ('train', 'dev', 'test'):
        csv = os.path.join(folder, 'meta', f'{part}_events.csv')
        duration = crop_seconds if part == 'train' else SCENE_SECONDS
        data = StrongLabelDataset(csv, audio_dir=os.path.join(folder, 'audio'), labels=labels,
                                  mode='train' if part == 'train' else 'dev', sample_rate=sample_rate,
                                  duration=duration, frame_hop_seconds=frame_hop, seed=0)
        files = [path for path, _ in data.items]
        sets[part] = (data, files, {path: read_strong_labels(csv, labels)[os.path.basename(path)] for path in files})
    return sets


def clip_labels(strong, crop_seconds):
    """The scenes of a StrongLabelDataset with their clip labels only (which classes occur)."""
    return AudioDataset(strong.items, strong.labels, mode=strong.mode, sample_rate=strong.sample_rate,
                        duration=crop_seconds, multi_label=True, seed=0)


def train(name, pooling, train_set, dev_set, epochs, batch_size, lr, checkpoint_dir):
    model = Module(name, task='sound-cls', label_map=train_set.labels, multi_label=True, pretrained=False,
                   pooling=pooling, seed=0)
    steps = steps_per_epoch(len(train_set), batch_size) * epochs
    schedule = build_scheduler('warmup_cosine', lr, total_steps=steps, warmup_steps=min(10, steps // 10))
    optimizer = paddle.optimizer.Adam(learning_rate=schedule, parameters=model.parameters())
    trainer = Trainer(model, optimizer, checkpoint_dir=checkpoint_dir, use_vdl=False, keep_last=1)
    started = time.perf_counter()
    state = trainer.train(train_set, epochs=epochs, batch_size=batch_size, eval_dataset=dev_set, save_interval=1)
    seconds = time.perf_counter() - started
    best = Module(name, load_checkpoint=os.path.join(checkpoint_dir, 'best_model'))
    return best, {'train_seconds': round(seconds, 1), 'best_epoch': state['best_epoch'],
                  'compare_metrics': trainer.compare_metrics, 'best_metric': state['best_metric']}


def scores(references, estimates, labels):
    """references, estimates: {file: [(onset, offset, label)]}."""
    events = event_based_metrics(references, estimates, labels)
    segments = segment_based_metrics(references, estimates, labels, durations={f: SCENE_SECONDS for f in references})
    return {'event_f1_micro': events['micro']['f1'], 'event_f1_class_average': events['class_average']['f1'],
            'segment_f1_micro': segments['micro']['f1'], 'segment_f1_class_average': segments['class_average']['f1']}


def as_tuples(events):
    return [(e['onset'], e['offset'], e['label']) for e in events]


def stream_events(predictor, path, chunk_seconds=0.5):
    import soundfile as sf
    wave, sr = sf.read(path, dtype='float32')
    stream = predictor.stream(sample_rate=sr)
    chunk, reports = int(chunk_seconds * sr), []
    for start in range(0, len(wave), chunk):
        reports += stream.push(wave[start:start + chunk])
    reports += stream.close()
    return [(r['onset'], r['offset'], r['label']) for r in reports if r['type'] == 'end']


def evaluate(model, sets, work):
    _, dev_files, dev_events = sets['dev']
    _, test_files, test_events = sets['test']
    model.tune_event_thresholds(dev_files, {path: dev_events[path] for path in dev_files})
    references = {path: test_events[path] for path in test_files}
    detected = {path: as_tuples(r['events']) for path, r in zip(test_files, model.detect(test_files))}
    export = os.path.join(work, 'export')
    export_static(model, export, opset=13)
    predictor = Predictor(export)
    streamed = {path: stream_events(predictor, path) for path in test_files}
    exported = {path: as_tuples(r['events']) for path, r in zip(test_files, predictor.detect(test_files))}
    return {'detect': scores(references, detected, model.labels),
            'stream': scores(references, streamed, model.labels),
            # The stream runs the windows of offline detection on the same engine: the same events.
            'stream_equals_export_detect': all(sorted(streamed[p]) == sorted(exported[p]) for p in test_files),
            'thresholds': model.event_config.to_dict()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='cpmobile', help='network to train (default cpmobile)')
    p.add_argument('--scenes', type=int, default=60, help='generated 10-s scenes, split 60/20/20 (default 60)')
    p.add_argument('--epochs', type=int, default=30, help='training epochs per model (default 30)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--crop-seconds', type=float, default=4.0, help='random training crops of the scenes (default 4)')
    p.add_argument('--learning-rate', type=float, default=5e-3)
    p.add_argument('--weak-pooling', default='linear_softmax', choices=['max', 'linear_softmax'])
    p.add_argument('--work', default=None, help='folder for scenes and checkpoints (default: a temporary one)')
    p.add_argument('--json', action='store_true')
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix='bench_sed_')
    folder = make_scenes(os.path.join(work, 'scenes'), num_scenes=args.scenes, seconds=SCENE_SECONDS,
                         classes=CLASSES, seed=0, split=(0.6, 0.2, 0.2))
    probe = Module(args.model, task='sound-cls', label_map=CLASSES, multi_label=True, pretrained=False,
                   pooling='max')
    frontend = probe.frontend_cfg
    sets = scene_sets(folder, CLASSES, frontend.sample_rate, frontend.hop_length / frontend.sample_rate,
                      args.crop_seconds)
    report = {'machine': machine_info(), 'model': args.model, 'scenes': args.scenes,
              'split': {part: len(sets[part][1]) for part in sets}, 'epochs': args.epochs,
              'crop_seconds': args.crop_seconds, 'frame_hop': frontend.hop_length / frontend.sample_rate,
              'network_frame_seconds': probe.frame_geometry.seconds(frontend), 'models': {}}
    runs = {'strong': ('max', sets['train'][0], sets['dev'][0]),
            'weak': (args.weak_pooling, clip_labels(sets['train'][0], args.crop_seconds),
                     clip_labels(sets['dev'][0], SCENE_SECONDS))}
    for kind, (pooling, train_set, dev_set) in runs.items():
        model, trained = train(args.model, pooling, train_set, dev_set, args.epochs, args.batch_size,
                               args.learning_rate, os.path.join(work, f'ckpt_{kind}'))
        report['models'][kind] = {'pooling': pooling, **trained, **evaluate(model, sets, os.path.join(work, kind))}
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return
    for kind, result in report['models'].items():
        for how in ('detect', 'stream'):
            figures = ', '.join(f'{k} {v:.3f}' for k, v in result[how].items())
            print(f'{kind:6s} {how:6s} {figures}')


if __name__ == '__main__':
    main()
