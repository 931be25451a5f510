"""Parity check: the same clips through Paddle Inference and onnxruntime must agree.

Acceptance rule (all must hold):
- top-1 agreement: the two engines pick the same best label on at least `min_agreement`
  of the clips (default 99.5%, so at most one clip in 200 may flip on a near tie);
- accuracies within `max_accuracy_gap` points (default 0.5) when the clips have labels;
- max |score difference| within `tolerance` (default 1e-3; float32 engines agree to ~1e-5).
"""
import csv
import os

import numpy as np

from ..audio import AUDIO_EXTENSIONS
from ..deploy import Predictor


def _audio_files(root):
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(AUDIO_EXTENSIONS)]
    return found


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
            raise ValueError(f'{data}: expected a .csv file with path,label columns or a directory')
        with open(data, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
        if not rows or 'path' not in rows[0]:
            raise ValueError(f'{data} needs a header with a `path` column (and `label` for accuracies)')
        base = os.path.dirname(os.path.abspath(data))
        return [(os.path.join(base, r['path']), r.get('label') or None, None) for r in rows]
    if not os.path.isdir(data):
        raise ValueError(f'data not found: {data}')
    esc50 = os.path.join(data, 'meta', 'esc50.csv')
    if os.path.isfile(esc50):
        with open(esc50, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
        return [(os.path.join(data, 'audio', r['filename']), r['category'], int(r['target'])) for r in rows]
    files = _audio_files(data)
    if not files:
        raise ValueError(f'{data} holds no audio files ({", ".join(AUDIO_EXTENSIONS)})')
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


def check_parity(model_dir, data, limit=None, batch_size=8, num_threads=None, tolerance=1e-3,
                 min_agreement=0.995, max_accuracy_gap=0.5):
    """Run the clips of `data` through both engines of the export `model_dir`.

    Returns a JSON-ready summary; summary['passed'] applies the rule in the module docstring.
    """
    items = list_labelled_files(data)[:limit]
    paths = [path for path, _, _ in items]
    paddle_predictor = Predictor(model_dir, engine='paddle', num_threads=num_threads)
    onnx_predictor = Predictor(model_dir, engine='onnxruntime', num_threads=num_threads)
    a = np.stack(paddle_predictor.scores(paths, batch_size=batch_size))
    b = np.stack(onnx_predictor.scores(paths, batch_size=batch_size))
    top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
    summary = {
        'model_dir': os.fspath(model_dir),
        'data': os.fspath(data),
        'clips': len(paths),
        'max_abs_diff': float(np.abs(a - b).max()),
        'top1_agreement': float((top_a == top_b).mean()),
        'accuracy_paddle': None,
        'accuracy_onnxruntime': None,
    }
    truth = truth_indices(items, onnx_predictor.labels)
    passed = summary['top1_agreement'] >= min_agreement and summary['max_abs_diff'] <= tolerance
    if truth is not None:
        summary['accuracy_paddle'] = round(100.0 * float((top_a == truth).mean()), 3)
        summary['accuracy_onnxruntime'] = round(100.0 * float((top_b == truth).mean()), 3)
        passed = passed and abs(summary['accuracy_paddle'] - summary['accuracy_onnxruntime']) <= max_accuracy_gap
    else:
        summary['note'] = 'no labels that name the model classes: accuracies not computed'
    summary['rule'] = {'min_top1_agreement': min_agreement, 'max_accuracy_gap_points': max_accuracy_gap,
                       'max_abs_diff': tolerance}
    summary['passed'] = bool(passed)
    return summary
