"""Evaluation as `predict` and `detect` score: the Trainer's figures are those users get.

Each clip is scored as predict scores it (deploy.pipeline.clip_segments: padded to the
training clip length, or the mean over consecutive windows of it), so the accuracy the Trainer
reports is the accuracy predict, the exports and the command line give. A dev set with event
times (strong labels) is also scored as `detect` scores it: event- and segment-based F1 of the
events Module.detect finds with the model's event config. A single-label dev set that names
each clip's recording device (`devices`, and `seen_devices` for the training split's) is also
scored as DCASE task 1 scores acoustic scenes (metrics.scene_metrics).
"""
import math

import numpy as np
import paddle

from ..errors import DatasetError
from ..progress import progress_bar
from . import embeddings, metrics, steps
from .data import target_of


def clip_samples(model, dataset):
    """The clip length evaluation cuts clips to: the model's training clip length, else the dataset's."""
    if model.clip_seconds is not None:
        return int(round(model.clip_seconds * dataset.sample_rate))
    return getattr(dataset, 'num_samples', None)


def scene_devices(dataset, role='eval'):
    """(devices, seen_devices) of a dataset that names each clip's recording device, else
    (None, None). The device list must hold one name per clip, in item order, so that the
    scores (computed clip by clip, in that order) line up with it."""
    devices = getattr(dataset, 'devices', None)
    if devices is None:
        return None, None
    if isinstance(devices, str) or not all(isinstance(device, str) for device in devices):
        raise DatasetError(f'the {role} dataset\'s `devices` must be a list of device names (str), one per clip; '
                           f'got {devices!r:.200}')
    devices = list(devices)
    if len(devices) != len(dataset):
        raise DatasetError(f'the {role} dataset names {len(devices)} recording devices (its `devices`) for '
                           f'{len(dataset)} clips: it must name one per clip, in item order (if clips were left out, '
                           f'e.g. unreadable files, their devices must go too)')
    seen = getattr(dataset, 'seen_devices', None)
    if seen is not None and (isinstance(seen, str) or not all(isinstance(device, str) for device in seen)):
        raise DatasetError(f'the {role} dataset\'s `seen_devices` must be a tuple of device names (str), e.g. '
                           f"('a', 'b'); got {seen!r:.200}")
    return devices, None if seen is None else tuple(seen)


@paddle.no_grad()
def evaluate(model, net, data, loss_fn, batch_size, use_gpu=False, show=True, devices=None, seen_devices=None):
    """{'loss': float, 'metrics': {...}} of `net` (a batch of segments -> logits: the model on
    waveforms, or the head on a frozen backbone's embeddings) on `data` (an audio dataset, or an
    EmbeddingDataset). A clip's scores are the mean of its segments' scores, its loss that of the
    mean of their logits, over the whole set at once (so neither depends on batch_size).

    Data with event times (a StrongLabelDataset): 'loss' is the training loss of the frame
    logits on its clips, and the events detect() finds in every whole recording give the event
    metrics (see event_scores).

    `devices` (one name per clip of `data`, in its order) adds the scene scores of
    metrics.scene_metrics to a single-label result, with `seen_devices` the seen/unseen split.
    Clips are scored in item order (no loader, no shuffling), so the devices line up."""
    clip_logits, clip_scores = _clip_outputs(model, net, data, batch_size, show)
    targets = np.stack([np.asarray(target_of(data, i)) for i in range(len(data))])
    loss = float(loss_fn(paddle.to_tensor(clip_logits.astype(np.float32)), paddle.to_tensor(targets)))
    if model.multi_label:
        result = metrics.multilabel_metrics(targets, clip_scores)
    else:
        result = metrics.classification_metrics(targets.astype('int64'), clip_scores)
        if devices is not None:
            result.update(metrics.scene_metrics(targets.astype('int64'), clip_scores, devices, seen_devices))
    if getattr(data, 'strong', False):
        loss = frame_loss(model, data, loss_fn, batch_size)
        result.update(event_scores(model, data, use_gpu, show))
    return {'loss': loss, 'metrics': result}


def _segments(model, data):
    """(clip index, input) for every segment of every clip: embeddings of a frozen backbone,
    waveform segments of an AudioDataset (cut as predict cuts them), or what another dataset gives."""
    for index in range(len(data)):
        if isinstance(data, embeddings.EmbeddingDataset):
            rows = data.embeddings[index]
        elif hasattr(data, 'waveform'):
            rows = embeddings.clip_inputs(model, data, index, 'segments', clip_samples(model, data))
        else:
            rows = [np.asarray(data[index][0], dtype=np.float32)]
        for row in rows:
            yield index, row


def _clip_outputs(model, net, data, batch_size, show):
    """(mean logits, mean scores) over each clip's segments [clips, classes]."""
    clips, logits, scores, batch = [], [], [], []

    def flush():
        out = net(paddle.to_tensor(np.stack([row for _, row in batch])))
        logits.append(out.numpy())
        scores.append(model.scores(out).numpy())
        clips.extend(index for index, _ in batch)
        batch.clear()

    for item in progress_bar(_segments(model, data), desc='evaluate', show=show, leave=False):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    clips, logits, scores = np.asarray(clips), np.concatenate(logits), np.concatenate(scores)
    count = np.bincount(clips, minlength=len(data))[:, None]
    clip_logits = np.zeros((len(data), logits.shape[1]), np.float64)
    clip_scores = np.zeros_like(clip_logits)
    np.add.at(clip_logits, clips, logits)
    np.add.at(clip_scores, clips, scores)
    return clip_logits / count, (clip_scores / count).astype(np.float32)


def frame_loss(model, data, loss_fn, batch_size):
    """The training loss of the frame logits on the clips of a dataset with event times."""
    total = 0.0
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        frame_logits = model.frame_logits(model.frontend(paddle.to_tensor(np.stack([w for w, _ in items]))))
        _, count, classes = frame_logits.shape
        targets = steps.network_targets(model, np.stack([t for _, t in items]), count, frame_logits.place)
        loss = loss_fn(frame_logits.reshape([-1, classes]), targets.reshape([-1, classes]))
        total += float(loss) * len(items)
    return total / len(data)


def event_scores(model, data, use_gpu=False, show=True):
    """Event- and segment-based scores of the events Module.detect finds in every recording of
    `data` (whole, at the model's rate; the model's event config) against its event times,
    counted as deploy.event_metrics (sed_eval) counts them: onset collar 200 ms, offset collar
    max(200 ms, 20 % of the event), 1-s segments over the whole recording. F1 is
    2 TP / (2 TP + FP + FN): 0 for a model that detects nothing (sed_eval says NaN, and leaves
    such a class out of its class average; here it counts as 0). The class averages run over
    the classes with events or detections."""
    from ..deploy import event_metrics
    references, estimates, durations = {}, {}, {}
    for index, (path, _) in enumerate(progress_bar(data.items, desc='detect', show=show, leave=False)):
        wave = data.waveform(index)
        [found] = model.detect([wave], sample_rate=data.sample_rate, use_gpu=use_gpu)
        references[path], estimates[path] = data.events[path], found['events']
        durations[path] = len(wave) / data.sample_rate
    labels = list(model.labels)
    result = {}
    for kind, scores in (('event', event_metrics.event_based_metrics(references, estimates, labels)),
                         ('segment', event_metrics.segment_based_metrics(references, estimates, labels,
                                                                         durations=durations))):
        micro = scores['micro']
        result[f'{kind}_f1'] = _f1(micro)
        result[f'{kind}_precision'], result[f'{kind}_recall'] = micro['precision'], micro['recall']
        per_class = [_f1(c) for c in scores['classes'].values() if c['n_ref'] + c['n_est']]
        result[f'{kind}_f1_macro'] = float(np.mean(per_class)) if per_class else math.nan
    return result


def _f1(counts):
    """2 TP / (n_ref + n_est) from deploy.event_metrics' counts; NaN when there is nothing to count."""
    total = counts['n_ref'] + counts['n_est']
    return 2 * counts['tp'] / total if total else math.nan
