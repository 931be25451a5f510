"""Parity checks: the same clips through two runtimes must give the same answers.

check_parity: Paddle Inference vs onnxruntime (float32), or vs the TFLite interpreter
(model.tflite, engine='tflite'). Acceptance rule (all must hold):
- top-1 agreement: the two engines pick the same best label on at least `min_agreement`
  of the clips (default 99.5%, so at most one clip in 200 may flip on a near tie);
- accuracies within `max_accuracy_gap` points (default 0.5) when the clips have labels;
- max |score difference| within `tolerance` (default 1e-3; float32 engines agree to ~1e-5).

check_int8: the int8 model (model.int8.onnx) vs the float32 one (model.onnx), both in
onnxruntime; or model.int8.tflite vs model.tflite in the TFLite interpreter (runtime='tflite'). Acceptance rule: top-1 agreement of at least `min_agreement` (default 99%),
and, when the clips have labels, an accuracy drop of at most `max_accuracy_drop` points
(default 0.5). The max score difference is reported, not judged: int8 scores move by a
few hundredths without changing the answer. check_parity adds this comparison (as
summary['int8']) when the export holds an int8 model.

check_int8_frames: the int8 frame-scores graph (model.frames.int8.onnx) vs the float one
(model.frames.onnx), through Predictor.detect on the same clips (the export's saved event
settings, else EventConfig()). Figures: max and mean |frame score difference| over every
frame and class, the lowest per-class Pearson correlation of the frame scores (classes whose
float scores vary), and the event-based F1 (event_metrics, default collars) of the int8
events against the float events. Acceptance rule: mean |difference| at most
`max_mean_abs_diff` (default 0.02) and event F1 at least `min_event_f1` (default 0.9); the max
difference and the correlation are reported, not judged.
"""
import csv
import os

import numpy as np

from ..audio import AUDIO_EXTENSIONS, list_audio_files
from ..deploy import Predictor, exportdir
from ..errors import DatasetError, ExportError

INT8_MIN_AGREEMENT = 0.99
INT8_MAX_ACCURACY_DROP = 0.5
# Detection with the int8 frames graph: events are what it answers, so they are judged against
# the float events; an onset on a near-threshold score may move past the 0.2 s collar on a
# recording or two, hence an F1 of 0.9 rather than 1. The mean frame-score difference catches
# a graph whose ranges are wrong everywhere even where no event crosses a threshold; well
# calibrated int8 frame scores move by about a hundredth on average. The largest difference
# is reported, not judged: one frame can move by a tenth without changing an event.
INT8_FRAMES_MIN_EVENT_F1 = 0.9
INT8_FRAMES_MAX_MEAN_ABS_DIFF = 0.02


def list_labelled_files(data):
    """Clips of a data set and their labels: [(path, label or None, class index or None)].

    data: a CSV file with `path,label` columns (paths relative to the CSV's folder), or a
    directory in ESC-50 layout (meta/esc50.csv + audio/; label = category, index = target),
    or a class-folder layout (every audio file in a sub-folder named after its label), or
    any folder of audio files (searched recursively; no labels).
    """
    data = os.fspath(data)
    if os.path.isfile(data):
        if not data.lower().endswith('.csv'):
            raise DatasetError(f'{data}: expected a .csv file with path,label columns or a directory')
        with open(data, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
        if not rows or 'path' not in rows[0]:
            raise DatasetError(f'{data} needs a header with a `path` column (and `label` for accuracies)')
        base = os.path.dirname(os.path.abspath(data))
        return [(os.path.join(base, r['path']), r.get('label') or None, None) for r in rows]
    if not os.path.isdir(data):
        raise DatasetError(f'data not found: {data}')
    esc50 = os.path.join(data, 'meta', 'esc50.csv')
    if os.path.isfile(esc50):
        with open(esc50, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
        return [(os.path.join(data, 'audio', r['filename']), r['category'], int(r['target'])) for r in rows]
    files = list_audio_files(data)
    if not files:
        raise DatasetError(f'{data} holds no audio files ({", ".join(AUDIO_EXTENSIONS)})')
    parents = [os.path.relpath(p, data).split(os.sep) for p in files]
    if all(len(parts) == 2 for parts in parents):
        return [(p, parts[0], None) for p, parts in zip(files, parents)]
    return [(p, None, None) for p in files]


def truth_indices(items, labels):
    """Class indices of the clips, or None when their labels do not name the model's classes."""
    names = [label for _, label, _ in items]
    if all(name is not None for name in names):
        if all(name in labels for name in names):
            return np.array([labels.index(name) for name in names])
    indices = [index for _, _, index in items]
    if all(index is not None and 0 <= index < len(labels) for index in indices):
        return np.array(indices)
    return None


def _accuracy(top, truth):
    """Percentage of clips whose best label is the true one."""
    return round(100.0 * float((top == truth).mean()), 3)


def compare_int8(fp32, int8, truth, min_agreement=INT8_MIN_AGREEMENT, max_accuracy_drop=INT8_MAX_ACCURACY_DROP):
    """Scores [clips, classes] of the float32 and the int8 model -> JSON-ready figures and `passed`.

    truth: class indices [clips], or None when the clips have no usable labels.
    """
    top_a, top_b = fp32.argmax(axis=1), int8.argmax(axis=1)
    summary = {
        'max_abs_diff': float(np.abs(fp32 - int8).max()),
        'top1_agreement': float((top_a == top_b).mean()),
        'disagreements': int((top_a != top_b).sum()),
        'accuracy_fp32': None,
        'accuracy_int8': None,
        'accuracy_drop': None,
    }
    passed = summary['top1_agreement'] >= min_agreement
    if truth is not None:
        summary['accuracy_fp32'] = _accuracy(top_a, truth)
        summary['accuracy_int8'] = _accuracy(top_b, truth)
        summary['accuracy_drop'] = round(summary['accuracy_fp32'] - summary['accuracy_int8'], 3)
        passed = passed and summary['accuracy_drop'] <= max_accuracy_drop
    else:
        summary['note'] = 'no labels that name the model classes: accuracies not computed'
    summary['rule'] = {'min_top1_agreement': min_agreement, 'max_accuracy_drop_points': max_accuracy_drop}
    summary['passed'] = bool(passed)
    return summary


def check_int8(model_dir, data, limit=None, batch_size=8, num_threads=None, min_agreement=INT8_MIN_AGREEMENT,
               max_accuracy_drop=INT8_MAX_ACCURACY_DROP, runtime='onnxruntime'):
    """Run the clips of `data` through the float32 and the int8 models of the export `model_dir`:
    model.onnx and model.int8.onnx (runtime 'onnxruntime'), or model.tflite and model.int8.tflite
    (runtime 'tflite').

    Returns a JSON-ready summary: model_dir, data, clips and the figures of compare_int8
    (max_abs_diff, top1_agreement, disagreements, accuracy_fp32 / accuracy_int8 /
    accuracy_drop in points, rule, passed).
    """
    items = list_labelled_files(data)[:limit]
    paths = [path for path, _, _ in items]
    fp32 = Predictor(model_dir, engine=runtime, num_threads=num_threads)
    int8 = Predictor(model_dir, engine=runtime + '_int8', num_threads=num_threads)
    a = np.stack(fp32.scores(paths, batch_size=batch_size))
    b = np.stack(int8.scores(paths, batch_size=batch_size))
    summary = {'model_dir': os.fspath(model_dir), 'data': os.fspath(data), 'clips': len(paths), 'runtime': runtime}
    summary.update(compare_int8(a, b, truth_indices(items, fp32.labels), min_agreement, max_accuracy_drop))
    return summary


def check_parity(model_dir, data, limit=None, batch_size=8, num_threads=None, tolerance=1e-3,
                 min_agreement=0.995, max_accuracy_gap=0.5, engine='onnxruntime'):
    """Run the clips of `data` through Paddle Inference and `engine` ('onnxruntime': model.onnx,
    or 'tflite': model.tflite) on the export `model_dir`.

    Returns a JSON-ready summary; summary['passed'] applies the rule in the module docstring.
    With an int8 ONNX model in the export (engine 'onnxruntime'), summary['int8'] compares it
    with onnxruntime's float32 scores (compare_int8, with its own 'passed').
    """
    items = list_labelled_files(data)[:limit]
    paths = [path for path, _, _ in items]
    paddle_predictor = Predictor(model_dir, engine='paddle', num_threads=num_threads)
    onnx_predictor = Predictor(model_dir, engine=engine, num_threads=num_threads)
    a = np.stack(paddle_predictor.scores(paths, batch_size=batch_size))
    b = np.stack(onnx_predictor.scores(paths, batch_size=batch_size))
    top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
    summary = {
        'model_dir': os.fspath(model_dir),
        'data': os.fspath(data),
        'clips': len(paths),
        'engine': engine,
        'max_abs_diff': float(np.abs(a - b).max()),
        'top1_agreement': float((top_a == top_b).mean()),
        'accuracy_paddle': None,
        f'accuracy_{engine}': None,
    }
    truth = truth_indices(items, onnx_predictor.labels)
    passed = summary['top1_agreement'] >= min_agreement and summary['max_abs_diff'] <= tolerance
    if truth is not None:
        summary['accuracy_paddle'] = _accuracy(top_a, truth)
        summary[f'accuracy_{engine}'] = _accuracy(top_b, truth)
        passed = passed and abs(summary['accuracy_paddle'] - summary[f'accuracy_{engine}']) <= max_accuracy_gap
    else:
        summary['note'] = 'no labels that name the model classes: accuracies not computed'
    summary['rule'] = {'min_top1_agreement': min_agreement, 'max_accuracy_gap_points': max_accuracy_gap,
                       'max_abs_diff': tolerance}
    summary['passed'] = bool(passed)
    if engine == 'onnxruntime' and exportdir.INT8_FILE in onnx_predictor.meta['files']:
        int8 = Predictor(model_dir, engine='onnxruntime_int8', num_threads=num_threads)
        summary['int8'] = compare_int8(b, np.stack(int8.scores(paths, batch_size=batch_size)), truth)
    return summary



def compare_int8_frames(fp32, int8, labels, min_event_f1=INT8_FRAMES_MIN_EVENT_F1,
                        max_mean_abs_diff=INT8_FRAMES_MAX_MEAN_ABS_DIFF):
    """Predictor.detect results of the same clips with the float32 and the int8 frames graph ->
    JSON-ready figures and `passed` (the rule in the module docstring)."""
    from ..deploy.event_metrics import event_based_metrics
    a = np.concatenate([r['frame_scores'] for r in fp32])
    b = np.concatenate([r['frame_scores'] for r in int8])
    diff = np.abs(a - b)
    varying = [c for c in range(a.shape[1]) if a[:, c].std() > 1e-6 and b[:, c].std() > 1e-6]
    correlation = min((float(np.corrcoef(a[:, c], b[:, c])[0, 1]) for c in varying), default=None)
    references = {str(i): r['events'] for i, r in enumerate(fp32)}
    estimates = {str(i): r['events'] for i, r in enumerate(int8)}
    micro = event_based_metrics(references, estimates, labels)['micro']
    summary = {
        'frames': int(len(a)),
        'max_abs_diff': float(diff.max()) if diff.size else 0.0,
        'mean_abs_diff': float(diff.mean()) if diff.size else 0.0,
        'min_class_correlation': correlation,
        'events_fp32': micro['n_ref'],
        'events_int8': micro['n_est'],
        'events_matched': micro['tp'],
        # No event either way is full agreement (sed_eval would say NaN).
        'event_f1': 1.0 if micro['n_ref'] == micro['n_est'] == 0 else float(np.nan_to_num(micro['f1'])),
    }
    passed = summary['mean_abs_diff'] <= max_mean_abs_diff and summary['event_f1'] >= min_event_f1
    summary['rule'] = {'max_mean_abs_diff': max_mean_abs_diff, 'min_event_f1': min_event_f1,
                       'event_f1': 'int8 events against float events, event-based, default collars'}
    summary['passed'] = bool(passed)
    return summary


def check_int8_frames(model_dir, data, limit=None, batch_size=None, num_threads=None,
                      min_event_f1=INT8_FRAMES_MIN_EVENT_F1, max_mean_abs_diff=INT8_FRAMES_MAX_MEAN_ABS_DIFF):
    """Detect events in the clips of `data` with the float32 and the int8 frames graphs of the
    export `model_dir` (which must record model.frames.int8.onnx in its int8 entry).

    Returns a JSON-ready summary: model_dir, data, clips, events_config (the settings used,
    and 'events_source': 'export' or 'default') and the figures of compare_int8_frames.
    """
    items = list_labelled_files(data)[:limit]
    paths = [path for path, _, _ in items]
    fp32 = Predictor(model_dir, engine='onnxruntime', num_threads=num_threads)
    int8 = Predictor(model_dir, engine='onnxruntime_int8', num_threads=num_threads)
    if int8.frames_precision != 'int8':
        raise ExportError(f'{model_dir}: export.json records no {exportdir.FRAMES_INT8_FILE} to check; quantize the '
                          f'export with a frames graph (paddle-soundcls export --model-dir {model_dir} --quantize int8 '
                          f'--calibration CLIPS --check OTHER_CLIPS)')
    config = fp32._event_config(None)
    a = fp32.detect(paths, batch_size=batch_size, config=config)
    b = int8.detect(paths, batch_size=batch_size, config=config)
    summary = {'model_dir': os.fspath(model_dir), 'data': os.fspath(data), 'clips': len(paths),
               'events_config': config.to_dict(), 'events_source': 'export' if fp32.event_config else 'default'}
    summary.update(compare_int8_frames(a, b, fp32.labels, min_event_f1, max_mean_abs_diff))
    return summary
