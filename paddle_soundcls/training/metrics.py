"""Evaluation metrics in plain numpy (no Paddle), plus a confusion-matrix writer.

Scalar results are Python floats and per-class results are lists, so a metrics dict can be
written to JSON or logged as it is.
"""
import csv
import numbers
import os

import numpy as np

from ..errors import ArgumentError
from ..fileio import atomic_write_file

SINGLE_LABEL_METRICS = ('acc', 'top5', 'macro_f1')
MULTI_LABEL_METRICS = ('mAP', 'AUC', 'f1_micro')
# Measured on a dev set with event times (strong labels), from the events of Module.detect:
# micro F1 (all classes pooled) and the class average ('_macro'), event-based (200 ms collars)
# and segment-based (1-s segments), as deploy.event_metrics (sed_eval's definitions) counts them.
STRONG_LABEL_METRICS = ('event_f1', 'segment_f1', 'event_f1_macro', 'segment_f1_macro')
# What can pick the best model; 'loss' is minimised, the others maximised.
COMPARE_METRICS = ('loss',) + SINGLE_LABEL_METRICS + MULTI_LABEL_METRICS + STRONG_LABEL_METRICS


def check_compare_metric(name):
    """compare_metrics as given (None: chosen from the dev set, see default_metric), if known."""
    if name is not None and name not in COMPARE_METRICS:
        raise ArgumentError(f'compare_metrics must be one of {list(COMPARE_METRICS)}, got {name!r}')
    return name


def default_metric(dataset):
    """What picks best_model when compare_metrics is not given: event F1 on data with event
    times, else mAP (multi-label) or accuracy."""
    if getattr(dataset, 'strong', False):
        return 'event_f1'
    return 'mAP' if getattr(dataset, 'multi_label', False) else 'acc'


def check_metric_fits(name, dataset, role):
    """Refuse a compare metric that `dataset` (the run's `role` set) cannot measure. The event
    metrics are measured on the dev set: any training set may go with them."""
    multi_label = bool(getattr(dataset, 'multi_label', False))
    strong = bool(getattr(dataset, 'strong', False))
    allowed = (('loss',) + (MULTI_LABEL_METRICS if multi_label else SINGLE_LABEL_METRICS)
               + (STRONG_LABEL_METRICS if strong or role == 'train' else ()))
    if name in STRONG_LABEL_METRICS and name not in allowed:
        raise ArgumentError(f'compare_metrics={name!r} is measured on a dev set with event times '
                            f'(datasets.StrongLabelDataset), not on this {role} dataset; choose one of {list(allowed)}')
    if name not in allowed:
        raise ArgumentError(f'compare_metrics={name!r} is not measured on {"multi" if multi_label else "single"}-label '
                            f'data; choose one of {list(allowed)}')


def scalars(result):
    """The single-number entries of a metrics dict, as floats."""
    return {name: float(value) for name, value in result.items()
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))}


def _as_labels(labels, num_samples):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ArgumentError(f'labels must be [N] = [{num_samples}] class indices, got shape {labels.shape}')
    if labels.size and not np.all(labels == np.round(labels)):
        raise ArgumentError('labels must be integer class indices')
    return labels.astype(np.int64)


def _as_scores(scores):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ArgumentError(f'scores must be a non-empty [N, C] array, got shape {scores.shape}')
    return scores


def _ratio(numerator, denominator):
    """Elementwise numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_metrics(labels, scores, k=5):
    """Single-label classification metrics.

    Args:
        labels: [N] int true class indices in [0, C).
        scores: [N, C] class scores (probabilities or logits); the prediction is the argmax.
        k (int): top-k accuracy with k = min(k, C), reported under the key 'top5'.
    Returns:
        dict with
          'acc', 'top5', 'macro_f1': floats;
          'precision', 'recall', 'f1': [C] lists (0 for a class never predicted / with no samples);
          'confusion': [C][C] nested list of ints, rows = true class, columns = predicted class.
        'macro_f1' averages F1 over the classes that occur in the labels or the predictions, as
        sklearn's f1_score(average='macro') does; a class absent from both carries no information.
        Ties in the scores go to the lower class index (as numpy's argmax), also for top-k.
    """
    scores = _as_scores(scores)
    num_samples, num_classes = scores.shape
    labels = _as_labels(labels, num_samples)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ArgumentError(f'labels must be in [0, {num_classes}), got values from {labels.min()} to {labels.max()}')
    predicted = scores.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)

    k = max(1, min(int(k), num_classes))
    # A stable sort of the negated scores keeps lower indices first among ties, like argmax.
    top_k = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    top_k_hits = (top_k == labels[:, None]).any(axis=1)

    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = _ratio(true_positive, predicted_count)
    recall = _ratio(true_positive, support)
    # 2tp / (2tp + fp + fn) equals 2pr / (p + r) and is 0 rather than undefined when tp = 0.
    f1 = _ratio(2 * true_positive, predicted_count + support)
    present = (predicted_count + support) > 0
    return {
        'acc': float(np.mean(predicted == labels)),
        'top5': float(np.mean(top_k_hits)),
        'macro_f1': float(f1[present].mean()),
        'precision': precision.tolist(),
        'recall': recall.tolist(),
        'f1': f1.tolist(),
        'confusion': confusion.tolist(),
    }


def _ranked_counts(positive, score):
    """Cumulative true/false positive counts at each distinct score threshold, highest first.

    Samples with equal scores enter together, so ties count the same whatever their order.
    """
    order = np.argsort(-score, kind='stable')
    score, positive = score[order], positive[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    true_pos = np.cumsum(positive)[last_of_value]
    false_pos = last_of_value + 1 - true_pos
    return true_pos.astype(np.float64), false_pos.astype(np.float64)


def average_precision(positive, score):
    """AP = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (sklearn's definition).

    Args:
        positive: [N] bool; at least one True.
        score: [N] float.
    """
    true_pos, false_pos = _ranked_counts(positive, score)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(positive, score):
    """Area under the ROC curve by the trapezoid rule over the distinct thresholds.

    Tied positive/negative pairs count one half, as in sklearn. Needs both classes present.
    """
    true_pos, false_pos = _ranked_counts(positive, score)
    tpr = np.r_[0.0, true_pos / true_pos[-1]]
    fpr = np.r_[0.0, false_pos / false_pos[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def multilabel_metrics(targets, scores):
    """Multi-label tagging metrics.

    Args:
        targets: [N, C] 0/1 multi-hot ground truth.
        scores: [N, C] per-class probabilities (sigmoid outputs).
    Returns:
        dict with floats
          'mAP': mean average precision over the classes with at least one positive;
          'AUC': mean ROC AUC over the classes with both positives and negatives;
          'f1_micro': micro-averaged F1 of the predictions scores >= 0.5.
        'mAP' / 'AUC' are nan when no class qualifies.
    """
    scores = _as_scores(scores)
    targets = np.asarray(targets)
    if targets.shape != scores.shape:
        raise ArgumentError(f'targets must have the scores shape {scores.shape}, got {targets.shape}')
    positive = targets > 0.5
    ap, auc = [], []
    for c in range(scores.shape[1]):
        num_pos = int(positive[:, c].sum())
        if num_pos > 0:
            ap.append(average_precision(positive[:, c], scores[:, c]))
        if 0 < num_pos < scores.shape[0]:
            auc.append(roc_auc(positive[:, c], scores[:, c]))
    predicted = scores >= 0.5
    true_pos = np.sum(predicted & positive)
    wrong = np.sum(predicted != positive)  # false positives + false negatives
    return {
        'mAP': float(np.mean(ap)) if ap else float('nan'),
        'AUC': float(np.mean(auc)) if auc else float('nan'),
        'f1_micro': float(_ratio(2 * true_pos, 2 * true_pos + wrong)),
    }


def save_confusion_matrix(confusion, class_names, directory, name='confusion_matrix'):
    """Write a confusion matrix as `<name>.csv` and `<name>.png` in `directory`.

    Args:
        confusion: [C][C] counts, rows = true class, columns = predicted class.
        class_names: C names (None uses the class indices).
        directory (str): created if missing.
        name (str): file name stem.
    Returns:
        (csv_path, png_path).
    The CSV's header row holds the predicted class names, its first column the true class names.
    The image colours each cell by its share of the true class (so rare classes stay visible)
    and prints the counts when there are at most 20 classes.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ArgumentError(f'confusion must be a square [C, C] matrix, got shape {matrix.shape}')
    num_classes = matrix.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ArgumentError(f'{len(names)} class names for a {num_classes}-class confusion matrix')
    os.makedirs(directory, exist_ok=True)
    csv_path = os.path.join(directory, name + '.csv')
    png_path = os.path.join(directory, name + '.png')

    def write_csv(f):
        writer = csv.writer(f)
        writer.writerow(['true \\ predicted'] + names)
        for row_name, row in zip(names, matrix):
            writer.writerow([row_name] + row.tolist())

    atomic_write_file(csv_path, write_csv, 'w')
    figure = _confusion_figure(matrix, names)
    atomic_write_file(png_path, lambda f: figure.savefig(f, format='png', dpi=100), 'wb')
    return csv_path, png_path


def _confusion_figure(matrix, names):
    # Figure with an Agg canvas, not pyplot: no global backend change, no GUI, thread safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = len(names)
    size = max(5.0, 2.0 + 0.22 * num_classes)  # about 13 inches for 50 classes
    font = 8 if num_classes <= 20 else 6
    figure = Figure(figsize=(size + 1.5, size), layout='constrained')
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    support = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
    image = ax.imshow(share, cmap='Blues', vmin=0.0, vmax=1.0, interpolation='nearest')
    figure.colorbar(image, ax=ax, shrink=0.6, label='share of the true class')
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, labels=names, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=names, fontsize=font)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    if num_classes <= 20:
        for i in range(num_classes):
            for j in range(num_classes):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=font,
                            color='white' if share[i, j] > 0.5 else 'black')
    return figure
