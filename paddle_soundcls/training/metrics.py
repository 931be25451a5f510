"""Evaluation metrics in plain numpy (no Paddle), plus a confusion-matrix writer.

Scalar results are Python floats and per-class results are lists, so a metrics dict can be
written to JSON or logged as it is.
"""
import csv
import math
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
# Measured on single-label data that knows each clip's recording device (a dataset with
# `devices`, e.g. TAU Urban Acoustic Scenes 2022 Mobile): the scores DCASE task 1 reports
# (scene_metrics). 'seen_acc' / 'unseen_acc' also need the dataset's `seen_devices`.
SEEN_METRICS = ('seen_acc', 'unseen_acc')
SCENE_METRICS = ('macro_acc', 'log_loss', 'macro_log_loss') + SEEN_METRICS
# What can pick the best model; these are minimised, the others maximised.
MINIMISED_METRICS = ('loss', 'log_loss', 'macro_log_loss')
COMPARE_METRICS = ('loss',) + SINGLE_LABEL_METRICS + MULTI_LABEL_METRICS + STRONG_LABEL_METRICS + SCENE_METRICS


def check_compare_metric(name):
    """compare_metrics as given (None: chosen from the dev set, see default_metric), if known."""
    if name is not None and name not in COMPARE_METRICS:
        raise ArgumentError(f'compare_metrics must be one of {list(COMPARE_METRICS)}, got {name!r}')
    return name


def default_metric(dataset):
    """What picks best_model when compare_metrics is not given: event F1 on data with event
    times, mAP on multi-label data, the class-averaged accuracy (DCASE task 1's figure) on data
    that knows each clip's recording device, else accuracy."""
    if getattr(dataset, 'strong', False):
        return 'event_f1'
    if getattr(dataset, 'multi_label', False):
        return 'mAP'
    return 'macro_acc' if getattr(dataset, 'devices', None) is not None else 'acc'


def check_metric_fits(name, dataset, role):
    """Refuse a compare metric that `dataset` (the run's `role` set) cannot measure. The event
    and scene metrics are measured on the dev set: any training set may go with them."""
    multi_label = bool(getattr(dataset, 'multi_label', False))
    strong = bool(getattr(dataset, 'strong', False))
    devices = getattr(dataset, 'devices', None) is not None
    seen = getattr(dataset, 'seen_devices', None) is not None
    if role == 'train' or (devices and seen):
        scene = SCENE_METRICS
    else:
        scene = tuple(m for m in SCENE_METRICS if m not in SEEN_METRICS) if devices else ()
    allowed = (('loss',) + (MULTI_LABEL_METRICS if multi_label else SINGLE_LABEL_METRICS + scene)
               + (STRONG_LABEL_METRICS if strong or role == 'train' else ()))
    if name in STRONG_LABEL_METRICS and name not in allowed:
        raise ArgumentError(f'compare_metrics={name!r} is measured on a dev set with event times '
                            f'(datasets.StrongLabelDataset), not on this {role} dataset; choose one of {list(allowed)}')
    if name in SCENE_METRICS and name not in allowed and not multi_label:
        needs = ("`devices` and `seen_devices` (the training split's devices)" if name in SEEN_METRICS
                 else '`devices` (the recording device of each clip)')
        raise ArgumentError(f'compare_metrics={name!r} is measured on a dev set that names {needs}, such as '
                            f'the TAU22 scenes; this {role} dataset does not; choose one of {list(allowed)}')
    if name not in allowed:
        raise ArgumentError(f'compare_metrics={name!r} is not measured on {"multi" if multi_label else "single"}-label '
                            f'data; choose one of {list(allowed)}')


def scalars(result):
    """The single-number entries of a metrics dict, as floats."""
    return {name: float(value) for name, value in result.items()
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))}


def device_scalars(result):
    """The per-device figures of a metrics dict (scene_metrics' {device: value} dicts) as
    single numbers named 'device_acc/<device>', ..., for the training log."""
    return {f'{name}/{device}': float(value) for name in ('device_acc', 'device_macro_acc', 'device_log_loss')
            for device, value in result.get(name, {}).items()}


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


def _as_probabilities(scores):
    """[N, C] float64 class probabilities and the eps sklearn.metrics.log_loss clips them with:
    the machine precision of the scores' own float type (float64 for other types)."""
    raw = np.asarray(scores)
    eps = float(np.finfo(raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.float64).eps)
    probabilities = _as_scores(raw)
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0:
        raise ArgumentError('scores must be class probabilities (a softmax, not logits): finite and at least 0')
    sums = probabilities.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > 1e-3:
        raise ArgumentError(f'scores must be class probabilities whose rows sum to 1 (a softmax, not logits); '
                            f'row {worst} sums to {sums[worst]:.6g}')
    return probabilities, eps


def _as_devices(devices, num_samples):
    if isinstance(devices, str) or not hasattr(devices, '__len__'):
        raise ArgumentError(f'devices must be a list of {num_samples} device names, one per clip, got {devices!r}')
    devices = [str(device) for device in devices]
    if len(devices) != num_samples:
        raise ArgumentError(f'devices must name the recording device of each of the {num_samples} clips, in clip '
                            f'order; got {len(devices)} names')
    return np.asarray(devices, dtype=object)


def _class_means(values, labels, mask, num_classes):
    """([C] the mean of `values` [N] over the clips of each class within `mask`, NaN for a class
    without clips there; the mean of those over the classes that have clips)."""
    per_class = []
    for c in range(num_classes):
        picked = mask & (labels == c)
        per_class.append(float(values[picked].mean()) if picked.any() else math.nan)
    present = [v for v in per_class if not math.isnan(v)]
    return per_class, float(np.mean(present)) if present else math.nan


def scene_metrics(labels, scores, devices=None, seen_devices=None):
    """The scores DCASE task 1 (acoustic scene classification) reports.

    Args:
        labels: [N] int true class indices in [0, C).
        scores: [N, C] class probabilities (softmax outputs: rows sum to 1); the prediction is
            the argmax (ties go to the lower class index, as in classification_metrics).
        devices: N recording device names, in clip order; None gives the class figures only.
        seen_devices: the devices of the training split; the others count as unseen. None
            gives no seen/unseen figures.
    Returns:
        dict with
          'class_acc': [C] accuracy of each class, the share of its clips predicted right
              (NaN for a class without clips);
          'macro_acc': their mean over the classes with clips, DCASE's headline figure
              ("macro average accuracy");
          'log_loss': the mean over clips of -ln p(true class), p clipped to [eps, 1 - eps]
              with eps the machine precision of the scores' float type, as
              sklearn.metrics.log_loss computes it;
          'class_log_loss': [C] that mean over each class's clips, 'macro_log_loss' their
              mean over the classes with clips;
        with devices, {device: figure} dicts in sorted device order:
          'device_count': clips; 'device_acc': the share of its clips predicted right;
          'device_macro_acc': the mean class accuracy over its clips (over the classes it has);
          'device_log_loss': the mean log loss of its clips;
        with seen_devices:
          'seen_acc', 'unseen_acc': the share predicted right of all clips of seen / unseen
              devices (NaN where the set has none); 'unseen_devices': the unseen ones, sorted.
        Per-device and seen/unseen accuracies count clips, not classes, as the DCASE 2024
        baseline (CPJKU/dcase2024_task1_baseline, run_training.py) computes its device-wise
        and device-group accuracies; 'device_macro_acc' is the class-averaged figure beside it.
    """
    probabilities, eps = _as_probabilities(scores)
    num_samples, num_classes = probabilities.shape
    labels = _as_labels(labels, num_samples)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ArgumentError(f'labels must be in [0, {num_classes}), got values from {labels.min()} to {labels.max()}')
    if devices is not None:
        devices = _as_devices(devices, num_samples)
    if seen_devices is not None:
        if isinstance(seen_devices, str):
            raise ArgumentError(f'seen_devices must be a list or tuple of device names, got the string '
                                f'{seen_devices!r}')
        seen_devices = {str(device) for device in seen_devices}

    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    true_class = np.clip(probabilities[np.arange(num_samples), labels], eps, 1 - eps)
    losses = -np.log(true_class)
    every = np.ones(num_samples, dtype=bool)
    class_acc, macro_acc = _class_means(correct, labels, every, num_classes)
    class_log_loss, macro_log_loss = _class_means(losses, labels, every, num_classes)
    result = {'class_acc': class_acc, 'macro_acc': macro_acc, 'log_loss': float(losses.mean()),
              'class_log_loss': class_log_loss, 'macro_log_loss': macro_log_loss}
    if devices is None:
        return result

    names = sorted(set(devices))
    result.update({'device_count': {}, 'device_acc': {}, 'device_macro_acc': {}, 'device_log_loss': {}})
    for name in names:
        mask = devices == name
        result['device_count'][name] = int(mask.sum())
        result['device_acc'][name] = float(correct[mask].mean())
        result['device_macro_acc'][name] = _class_means(correct, labels, mask, num_classes)[1]
        result['device_log_loss'][name] = float(losses[mask].mean())
    if seen_devices is not None:
        seen = np.asarray([device in seen_devices for device in devices], dtype=bool)
        result['seen_acc'] = float(correct[seen].mean()) if seen.any() else math.nan
        result['unseen_acc'] = float(correct[~seen].mean()) if (~seen).any() else math.nan
        result['unseen_devices'] = [name for name in names if name not in seen_devices]
    return result


def scene_table(result, class_names=None):
    """The scores of scene_metrics (or the 'metrics' of an evaluation of data that names its
    recording devices) as a text table, for printing.

    One row per device (clips, accuracy, class-averaged accuracy, log loss; '*' marks an
    unseen device), then the seen and unseen devices together (accuracy and log loss over
    their clips) and all clips; below it the accuracy of each class and their mean, DCASE's
    headline figure. Accuracies are percentages, as DCASE reports them.
    """
    for key in ('class_acc', 'macro_acc', 'log_loss', 'device_count'):
        if key not in result:
            raise ArgumentError(f'result has no {key!r}: pass the dict scene_metrics returns (with devices), or the '
                                f'metrics of an evaluation of data that names its recording devices')
    class_acc = result['class_acc']
    names = [str(i) for i in range(len(class_acc))] if class_names is None else [str(n) for n in class_names]
    if len(names) != len(class_acc):
        raise ArgumentError(f'{len(names)} class names for {len(class_acc)} classes')

    def percent(value):
        return '-' if math.isnan(value) else f'{100 * value:.2f}'

    def row(name, clips, acc, macro, log_loss):
        text_loss = '-' if math.isnan(log_loss) else f'{log_loss:.3f}'
        return f'{name:<{width}}  {clips:>7}  {percent(acc):>7}  {percent(macro):>7}  {text_loss:>8}'

    counts, unseen = result['device_count'], set(result.get('unseen_devices', ()))
    width = max([len('unseen'), len('device')] + [len(d) + 2 for d in counts])
    header = f'{"device":<{width}}  {"clips":>7}  {"acc %":>7}  {"macro %":>7}  {"log loss":>8}'
    rule = '-' * len(header)
    lines = [header, rule]
    for device, count in counts.items():
        lines.append(row(device + (' *' if device in unseen else ''), count, result['device_acc'][device],
                         result['device_macro_acc'][device], result['device_log_loss'][device]))
    lines.append(rule)
    if 'seen_acc' in result:
        for group, members in (('seen', [d for d in counts if d not in unseen]), ('unseen', sorted(unseen))):
            clips = sum(counts[d] for d in members)
            # The log loss over a group's clips: its devices' means weighted by their clip counts.
            group_loss = sum(result['device_log_loss'][d] * counts[d] for d in members) / clips if clips else math.nan
            lines.append(row(group, clips, result[group + '_acc'], math.nan, group_loss))
    total = sum(counts.values())
    overall = sum(result['device_acc'][d] * counts[d] for d in counts) / total
    lines.append(row('all', total, overall, result['macro_acc'], result['log_loss']))
    name_width = max([len('macro average')] + [len(n) for n in names])
    class_rule = '-' * (name_width + 9)
    lines += ['', f'{"class":<{name_width}}  {"acc %":>7}', class_rule]
    lines += [f'{name:<{name_width}}  {percent(value):>7}' for name, value in zip(names, class_acc)]
    lines += [class_rule, f'{"macro average":<{name_width}}  {percent(result["macro_acc"]):>7}']
    return '\n'.join(lines)


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
