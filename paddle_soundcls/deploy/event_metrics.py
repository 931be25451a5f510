"""Sound event detection metrics as defined by sed_eval (Mesaros, Heittola and Virtanen,
"Metrics for polyphonic sound event detection", Applied Sciences 2016).

    event_based_metrics(references, estimates)     # events matched one to one, with collars
    segment_based_metrics(references, estimates)   # activity compared in 1-s segments

references / estimates: {filename: events} (every estimated file must be in references; a
reference file missing from estimates has no detections), or one list of events for a
single file. An event is an (onset, offset, label) tuple (as read_strong_labels gives) or a
dict with 'label' (or 'event_label'), 'onset' and 'offset' (as detect_events gives).

Both return
    {'micro': {'f1', 'precision', 'recall', 'tp', 'fp', 'fn', 'n_ref', 'n_est'},   # all classes pooled
     'classes': {label: {same keys}},
     'class_average': {'f1', 'precision', 'recall'}}   # mean over classes, ignoring NaN (sed_eval's)
Counted in events (event-based) or in class-segment pairs (segment-based); fp = n_est - tp and
fn = n_ref - tp. As in sed_eval, a ratio with nothing to count is NaN: precision with no
estimated events, recall with no reference events, and F1 then too (unless both are 0).

Numpy only: the Paddle-free runtime uses it.
"""
import math

import numpy as np
from .. import validate
from ..errors import ArgumentError

COLLAR_SECONDS = 0.2           # onset collar, and the smallest offset collar
OFFSET_COLLAR_FRACTION = 0.2   # offset collar: max(COLLAR_SECONDS, this x the reference event's length)
SEGMENT_SECONDS = 1.0


def as_events(events, name, labels=None):
    """A list of events in either form -> [(onset, offset, label)], each checked."""
    if not isinstance(events, (list, tuple)):
        raise ArgumentError(f'{name} must be a list of events, got {type(events).__name__}')
    out = []
    for i, event in enumerate(events):
        if isinstance(event, dict):
            label = event.get('label', event.get('event_label'))
            onset, offset = event.get('onset'), event.get('offset')
        elif isinstance(event, (list, tuple)) and len(event) == 3:
            onset, offset, label = event
        else:
            raise ArgumentError(f'{name}[{i}] must be an (onset, offset, label) tuple or a dict with label, onset '
                             f'and offset, got {event!r}')
        for what, value in (('onset', onset), ('offset', offset)):
            validate.number(f'{name}[{i}]: {what}', value, unit='seconds')
        if not 0 <= onset < offset:
            raise ArgumentError(f'{name}[{i}]: need 0 <= onset < offset, got onset {onset}, offset {offset}')
        if not isinstance(label, str) or not label:
            raise ArgumentError(f'{name}[{i}]: label must be a non-empty string, got {label!r}')
        if labels is not None and label not in labels:
            raise ArgumentError(f'{name}[{i}]: label {label!r} is not one of the labels {list(labels)[:20]}'
                             + (' ...' if len(labels) > 20 else ''))
        out.append((float(onset), float(offset), label))
    return out


def _file_pairs(references, estimates, labels):
    """[(reference events, estimated events)] per file, and the label list."""
    if isinstance(references, (list, tuple)) and isinstance(estimates, (list, tuple)):
        references, estimates = {'': references}, {'': estimates}
    for name, value in (('references', references), ('estimates', estimates)):
        if not isinstance(value, dict):
            raise ArgumentError(f'{name} must be {{filename: events}} or, for one file, a list of events; '
                             f'got {type(value).__name__}')
    extra = [name for name in estimates if name not in references]
    if extra:
        raise ArgumentError(f'estimates has files that references lacks: {extra[:10]}; list every evaluated file in '
                         'references (with [] when it has no events), and check that both use the same file names')
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
            raise ArgumentError(f'labels must be a non-empty list of class names or None, got {labels!r}')
        labels = list(labels)
    pairs = []
    for name, ref in references.items():
        where = f'[{name!r}]' if name else ''
        pairs.append((as_events(ref, f'references{where}', labels),
                      as_events(estimates.get(name, []), f'estimates{where}', labels)))
    if labels is None:  # as sed_eval: the labels seen, sorted
        labels = sorted({e[2] for ref, est in pairs for e in ref + est})
    return pairs, labels


def _scores(tp, n_ref, n_est):
    precision = tp / n_est if n_est else math.nan
    recall = tp / n_ref if n_ref else math.nan
    if precision == 0 and recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)   # NaN if either is NaN
    return {'f1': f1, 'precision': precision, 'recall': recall,
            'tp': tp, 'fp': n_est - tp, 'fn': n_ref - tp, 'n_ref': n_ref, 'n_est': n_est}


def _nanmean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _summary(counts):
    """counts: {label: [tp, n_ref, n_est]} -> the result dict described at the top."""
    classes = {label: _scores(*c) for label, c in counts.items()}
    micro = _scores(*(sum(c[k] for c in counts.values()) for k in range(3)))
    average = {key: _nanmean([c[key] for c in classes.values()]) for key in ('f1', 'precision', 'recall')}
    return {'micro': micro, 'classes': classes, 'class_average': average}


def _largest_matching(candidates):
    """Size of a largest one-to-one matching; candidates[r]: the estimates reference r may match.

    Augmenting paths (Kuhn): each reference in turn searches, breadth first, for a chain
    estimate -> its current reference -> another estimate ... ending at a free estimate,
    then shifts the chain. Trying every reference once gives a largest matching.
    """
    owner = {}      # estimate -> its reference
    matched = {}    # reference -> its estimate
    for root in range(len(candidates)):
        reached_from, queue, free = {}, [root], None
        for ref in queue:   # the queue grows while it is read
            for est in candidates[ref]:
                if est in reached_from:
                    continue
                reached_from[est] = ref
                if est not in owner:
                    free = est
                    break
                queue.append(owner[est])
            if free is not None:
                break
        est = free
        while est is not None:
            ref = reached_from[est]
            est_before = matched.get(ref)
            owner[est], matched[ref] = ref, est
            est = est_before
    return len(matched)


def count_event_matches(reference_pairs, estimated_pairs, collar_seconds=COLLAR_SECONDS,
                        offset_collar_fraction=OFFSET_COLLAR_FRACTION):
    """Events of ONE class in ONE file: [(onset, offset)] each -> how many match one to one.

    A pair may match when |onset difference| <= collar_seconds and |offset difference| <=
    max(collar_seconds, offset_collar_fraction x the reference's length); among all ways to
    pair them, the count is that of a largest matching (sed_eval's 'optimal' matching).
    """
    if not reference_pairs or not estimated_pairs:
        return 0
    ref = np.asarray(reference_pairs, dtype=np.float64).reshape(-1, 2)
    est = np.asarray(estimated_pairs, dtype=np.float64).reshape(-1, 2)
    offset_collar = np.maximum(collar_seconds, offset_collar_fraction * (ref[:, 1] - ref[:, 0]))
    hits = ((np.abs(ref[:, None, 0] - est[None, :, 0]) <= collar_seconds)
            & (np.abs(ref[:, None, 1] - est[None, :, 1]) <= offset_collar[:, None]))
    return _largest_matching([np.flatnonzero(row).tolist() for row in hits])


def event_based_metrics(references, estimates, labels=None, collar_seconds=COLLAR_SECONDS,
                        offset_collar_fraction=OFFSET_COLLAR_FRACTION):
    """Event-based P/R/F1 (sed_eval's EventBasedMetrics, onset and offset evaluated, optimal matching).

    An estimated event is correct when it has the label of a reference event in the same file,
    its onset is within collar_seconds of that event's onset, and its offset within
    max(collar_seconds, offset_collar_fraction x the reference event's length) of its offset;
    each reference event is matched at most once, each estimate too, and the matching is a
    largest one. labels: the classes to report (None: every label seen); an event with another
    label is an error.
    """
    for name, value in (('collar_seconds', collar_seconds), ('offset_collar_fraction', offset_collar_fraction)):
        validate.non_negative_number(name, value)
    pairs, labels = _file_pairs(references, estimates, labels)
    counts = {label: [0, 0, 0] for label in labels}
    for ref, est in pairs:
        for label in labels:
            ref_pairs = [(on, off) for on, off, name in ref if name == label]
            est_pairs = [(on, off) for on, off, name in est if name == label]
            c = counts[label]
            c[0] += count_event_matches(ref_pairs, est_pairs, collar_seconds, offset_collar_fraction)
            c[1] += len(ref_pairs)
            c[2] += len(est_pairs)
    return _summary(counts)


def _activity(events, labels, segments, segment_seconds):
    """[segments, classes] bool: a class is active in every segment its events touch."""
    roll = np.zeros((segments, len(labels)), dtype=bool)
    column = {label: i for i, label in enumerate(labels)}
    for onset, offset, label in events:
        # sed_eval's rounding: from floor(onset / segment) to ceil(offset / segment), exclusive.
        roll[int(math.floor(onset / segment_seconds)):int(math.ceil(offset / segment_seconds)), column[label]] = True
    return roll


def segment_based_metrics(references, estimates, labels=None, segment_seconds=SEGMENT_SECONDS, durations=None):
    """Segment-based P/R/F1 (sed_eval's SegmentBasedMetrics, time_resolution = segment_seconds).

    Each file is cut into segments of segment_seconds from 0; a class is active in a segment
    if any of its events overlaps it. Every (segment, class) pair active in both is a true
    positive. A file is evaluated up to durations[filename] seconds if given (for a single
    file given as a list: durations is a number), else up to the last offset among its
    reference and estimated events.
    """
    validate.positive_number('segment_seconds', segment_seconds, unit='seconds')
    single = isinstance(references, (list, tuple))
    if durations is not None and not single and not isinstance(durations, dict):
        raise ArgumentError(f'durations must be {{filename: seconds}} or None, got {type(durations).__name__}')
    durations = {'': durations} if single else (durations or {})
    pairs, labels = _file_pairs(references, estimates, labels)
    names = [''] if single else list(references)
    tp, n_ref, n_est = (np.zeros(len(labels), dtype=np.int64) for _ in range(3))
    for name, (ref, est) in zip(names, pairs):
        length = durations.get(name)
        if length is None:
            length = max([e[1] for e in ref + est], default=0.0)
        else:
            length = validate.non_negative_number(f'durations[{name!r}]' if name else 'durations', length,
                                                  unit='seconds')
        segments = int(math.ceil(length / segment_seconds))
        ref_roll = _activity(ref, labels, segments, segment_seconds)
        est_roll = _activity(est, labels, segments, segment_seconds)
        tp += (ref_roll & est_roll).sum(axis=0)
        n_ref += ref_roll.sum(axis=0)
        n_est += est_roll.sum(axis=0)
    return _summary({label: [int(tp[i]), int(n_ref[i]), int(n_est[i])] for i, label in enumerate(labels)})
