"""From frame-level scores to sound events: when each sound starts and ends.

    config = EventConfig(onset_threshold=0.5, offset_threshold=0.3)
    detect_events(scores, 0.01, labels, config)     # scores: [frames, classes] probabilities
    -> [{'label': 'dog', 'onset': 1.23, 'offset': 2.5, 'confidence': 0.91}, ...]   # by onset

    tracker = EventTracker(labels, 0.01, config)    # the same decisions, on a live stream
    tracker.push(chunk) -> [{'type': 'start', ...}, {'type': 'end', ...}];  tracker.close()

    tune_thresholds(dev_scores, 0.01, dev_references, labels) -> EventConfig   # best event F1 per class

The decisions, in order, per class:
1. median filter over time (`median_filter_seconds`, the nearest odd number of frames, centred;
   the first and last frame are repeated to fill the window at the edges);
2. hysteresis: an event starts on the first frame whose filtered score is >= the onset
   threshold and ends on the first frame whose filtered score is < the offset threshold;
3. two events of the class separated by less than `min_gap_seconds` become one;
4. events shorter than `min_duration_seconds` are dropped.
Silence gives no events: there is no "best label" fallback.

Times: frame i covers [frame_offset + i * hop, frame_offset + (i + 1) * hop), so an event over
frames a..b-1 has onset frame_offset + a * hop and offset frame_offset + b * hop (rounded to the
microsecond). `confidence` is the highest filtered score inside the event.

Numpy only: the Paddle-free runtime uses it.
"""
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..features.config import settings_from_dict
from . import event_metrics
from .. import validate
from ..errors import ArgumentError

# Tolerance of the duration and gap comparisons, so that e.g. 10 frames of 0.01 s count as 0.1 s.
TIME_EPS = 1e-9
# Frames per block when median-filtering long inputs: bounds the [frames, classes, window] copy.
MEDIAN_BLOCK_VALUES = 1 << 22


def _check_threshold(name, value):
    return validate.number_in(name, value, 0, 1, low_open=True, noun='score')


def _check_seconds(name, value):
    return validate.non_negative_number(name, value, unit='seconds')


@dataclass(frozen=True)
class EventConfig:
    """How frame scores become events. Thresholds are one number for every class, or one per
    class (a list in label order); every offset threshold must be <= its onset threshold.

    Defaults: an event starts at 0.5 and ends below 0.3 (the gap keeps a score hovering
    around one threshold from flickering on and off), a 0.1 s median filter (removes
    one-frame spikes; delays streaming decisions by 0.05 s), events shorter than 0.1 s are
    dropped and gaps shorter than 0.1 s are bridged.
    """
    onset_threshold: object = 0.5
    offset_threshold: object = 0.3
    median_filter_seconds: float = 0.1
    min_duration_seconds: float = 0.1
    min_gap_seconds: float = 0.1

    def __post_init__(self):
        for name in ('onset_threshold', 'offset_threshold'):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, np.ndarray)):
                if len(value) == 0:
                    raise ArgumentError(f'{name} must be a score or a non-empty list of scores (one per class)')
                value = tuple(_check_threshold(f'{name}[{i}]', v) for i, v in enumerate(value))
            else:
                value = _check_threshold(name, value)
            object.__setattr__(self, name, value)
        for name in ('median_filter_seconds', 'min_duration_seconds', 'min_gap_seconds'):
            object.__setattr__(self, name, _check_seconds(name, getattr(self, name)))
        onset, offset = self.onset_threshold, self.offset_threshold
        if isinstance(onset, tuple) and isinstance(offset, tuple) and len(onset) != len(offset):
            raise ArgumentError(f'onset_threshold has {len(onset)} values but offset_threshold has {len(offset)}; '
                             'give one per class in both')
        count = max(len(t) if isinstance(t, tuple) else 1 for t in (onset, offset))
        onsets, offsets = np.broadcast_to(onset, count), np.broadcast_to(offset, count)
        bad = np.flatnonzero(offsets > onsets)
        if len(bad):
            i = int(bad[0])
            raise ArgumentError(f'offset_threshold ({offsets[i]}) must be <= onset_threshold ({onsets[i]})'
                             + (f' for class {i}' if count > 1 else '') + ': an event ends when the score '
                             'falls below the offset threshold, so it cannot be higher than the onset one')

    def to_dict(self):
        data = asdict(self)
        for name in ('onset_threshold', 'offset_threshold'):
            if isinstance(data[name], tuple):
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ArgumentError(f'event settings must be a dict, got {type(data).__name__}')
        return settings_from_dict(cls, data, 'event')

    def thresholds(self, num_classes):
        """(onset, offset) thresholds as two float arrays of num_classes values."""
        for name in ('onset_threshold', 'offset_threshold'):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != num_classes:
                raise ArgumentError(f'config.{name} has {len(value)} values but there are {num_classes} classes; '
                                 'give one per class (in label order) or a single number')
        return (np.broadcast_to(np.asarray(self.onset_threshold, dtype=np.float64), num_classes).copy(),
                np.broadcast_to(np.asarray(self.offset_threshold, dtype=np.float64), num_classes).copy())

    def median_half_width(self, frame_hop_seconds):
        """Frames on each side of the centre in the median filter window (0: no filter)."""
        frames = max(1, int(round(self.median_filter_seconds / frame_hop_seconds)))
        return frames // 2  # an even count is widened by one frame: the window needs a centre


def merge_settings(config, saved, origin):
    """The EventConfig a detect or stream call runs with.

    config: None (the saved settings, else the defaults), an EventConfig (used as it is), or a
    dict of EventConfig fields that replace those of the saved settings, e.g.
    {'onset_threshold': 0.6}. saved: the EventConfig saved with the model, or None. origin:
    where the saved settings come from (a file), for the message when the given fields do not
    fit with the saved ones (an onset threshold below a saved offset threshold).
    """
    if config is None or isinstance(config, EventConfig):
        return config or saved or EventConfig()
    if not isinstance(config, dict):
        raise ArgumentError(f'config must be an EventConfig, a dict of EventConfig fields to change, or None; '
                            f'got {type(config).__name__}')
    base = saved or EventConfig()
    try:
        return EventConfig.from_dict({**base.to_dict(), **config})
    except ArgumentError as exc:
        kept = {k: v for k, v in base.to_dict().items() if k not in config}
        where = f'the settings saved with the model ({origin}: {kept})' if saved else \
            f'the defaults of EventConfig ({kept})'
        raise ArgumentError(f'{exc}. The fields given ({sorted(config)}) were combined with {where}; give '
                            f'onset_threshold and offset_threshold together') from None


# ----- argument checks (each error names the argument) -----

def check_labels(labels):
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
        raise ArgumentError(f'labels must be a non-empty list of class names, got {labels!r}')
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise ArgumentError(f'labels[{i}] must be a non-empty string, got {label!r}')
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ArgumentError(f'labels must be distinct; repeated: {twice}')
    return list(labels)


def check_hop(frame_hop_seconds):
    return validate.positive_number('frame_hop_seconds', frame_hop_seconds, unit='seconds')


def check_frame_offset(frame_offset_seconds):
    return validate.number('frame_offset_seconds', frame_offset_seconds, unit='seconds')


def check_config(config):
    if config is None:
        return EventConfig()
    if not isinstance(config, EventConfig):
        raise ArgumentError(f'config must be an EventConfig (or None for the defaults), got {type(config).__name__}; '
                         'build one from a dict with EventConfig.from_dict(d)')
    return config


def check_scores(frame_scores, num_classes, name='frame_scores'):
    """[frames, num_classes] finite probabilities -> float64 array (a new one: the caller's is never kept)."""
    try:
        scores = np.array(frame_scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentError(f'{name} must be a numeric array of shape [frames, classes], '
                         f'got {type(frame_scores).__name__}') from None
    if scores.ndim != 2:
        raise ArgumentError(f'{name} must have shape [frames, classes], got shape {list(scores.shape)}'
                         + ('; for one frame use scores[None, :]' if scores.ndim == 1 else ''))
    if scores.shape[1] != num_classes:
        raise ArgumentError(f'{name} has {scores.shape[1]} classes (columns) but there are {num_classes} labels')
    bad = ~np.isfinite(scores)
    if bad.any():
        frame, cls = np.argwhere(bad)[0]
        raise ArgumentError(f'{name} holds {int(bad.sum())} NaN/Inf values (first at frame {frame}, class {cls}); '
                         'scores must be finite: check the audio given to the model for NaN/Inf samples')
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ArgumentError(f'{name} must be probabilities in [0, 1], got values from {scores.min():.4g} to '
                         f'{scores.max():.4g}; apply a sigmoid to logits first')
    return scores


# ----- the decisions, shared by the offline and the streaming paths -----

def _median_windows(padded, half_width):
    """Median of every full window of 2 * half_width + 1 frames in `padded` [frames, classes]."""
    width = 2 * half_width + 1
    count = len(padded) - width + 1
    if count <= 0:
        return np.zeros((0, padded.shape[1]))
    if half_width == 0:
        return padded.copy()
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=0)   # [count, classes, width]
    block = max(1, MEDIAN_BLOCK_VALUES // max(1, padded.shape[1] * width))
    # The median of an odd window is its middle value in order: exact, so any chunking of the
    # stream gives bit-identical results. np.partition puts only that value in place (1.6x faster
    # than sorting the windows, 2-4x faster than scipy.ndimage.median_filter and np.median).
    return np.concatenate([np.partition(windows[i:i + block], half_width, axis=-1)[..., half_width]
                           for i in range(0, count, block)])


def median_filter(scores, half_width):
    """Centred running median over frames; the edge frames are repeated to fill the window."""
    if len(scores) == 0 or half_width == 0:
        return scores.copy()
    return _median_windows(np.pad(scores, ((half_width, half_width), (0, 0)), mode='edge'), half_width)


def _runs(score, onset_threshold, offset_threshold, active):
    """Hysteresis over one class's filtered scores: [(start, end)] frame indices into `score`.

    start is None for a run already going on before these frames (`active`); end is None for
    a run still going on after them.
    """
    starts = np.flatnonzero(score >= onset_threshold)
    stops = np.flatnonzero(score < offset_threshold)
    runs, position, start = [], 0, None
    while True:
        if not active:
            k = np.searchsorted(starts, position)
            if k == len(starts):
                return runs
            start = position = int(starts[k])
        k = np.searchsorted(stops, position)
        if k == len(stops):
            runs.append((start, None))
            return runs
        runs.append((start, int(stops[k])))
        position, active, start = int(stops[k]), False, None


def _short_gap(frames, hop, config):
    return frames * hop < config.min_gap_seconds - TIME_EPS


def _long_enough(frames, hop, config):
    return frames * hop >= config.min_duration_seconds - TIME_EPS


def _time(frame, hop, frame_offset):
    return float(round(frame_offset + int(frame) * hop, 6))


def _class_events(score, onset_threshold, offset_threshold, hop, config):
    """Offline decisions for one class: [(start frame, end frame, confidence)]."""
    merged = []
    for start, end in _runs(score, onset_threshold, offset_threshold, False):
        end = len(score) if end is None else end
        if merged and _short_gap(start - merged[-1][1], hop, config):
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(start, end, float(score[start:end].max())) for start, end in merged
            if _long_enough(end - start, hop, config)]


def detect_events(frame_scores, frame_hop_seconds, labels, config=None, frame_offset_seconds=0.0):
    """Events in one clip's frame scores.

    Args:
        frame_scores: [frames, classes] probabilities (one row per frame, one column per label).
        frame_hop_seconds: time between two frames.
        labels: the class names, in column order.
        config: an EventConfig (None: the defaults).
        frame_offset_seconds: time of the start of frame 0 (e.g. where a chunk begins in a longer file).

    Returns: [{'label', 'onset', 'offset', 'confidence'}] sorted by onset (then label order);
    an empty list when nothing is detected. confidence is the highest median-filtered score
    inside the event.
    """
    labels = check_labels(labels)
    scores = check_scores(frame_scores, len(labels))
    hop, frame_offset = check_hop(frame_hop_seconds), check_frame_offset(frame_offset_seconds)
    config = check_config(config)
    onset_thresholds, offset_thresholds = config.thresholds(len(labels))
    # A median is at most the largest score of its window: a class whose scores all stay below its
    # onset threshold has no event, filtered or not (most of a tagger's 527 classes in a recording).
    candidates = np.flatnonzero(scores.max(axis=0) >= onset_thresholds) if len(scores) else np.zeros(0, int)
    smooth = median_filter(scores[:, candidates], config.median_half_width(hop))
    found = []
    for i, c in enumerate(candidates):
        for start, end, confidence in _class_events(smooth[:, i], onset_thresholds[c], offset_thresholds[c],
                                                    hop, config):
            found.append((start, c, end, confidence))
    return [{'label': labels[c], 'onset': _time(start, hop, frame_offset), 'offset': _time(end, hop, frame_offset),
             'confidence': confidence} for start, c, end, confidence in sorted(found)]


class EventTracker:
    """detect_events on a stream: push frame scores in chunks of any length, get events as they happen.

    push(chunk) returns the reports that became certain with this chunk, in time order:
        {'type': 'start', 'label', 'onset', 'confidence'}            once, when an event is certain
        {'type': 'end', 'label', 'onset', 'offset', 'confidence'}    once, when it is over
    The 'end' reports are exactly the events detect_events gives on all frames pushed
    (whatever the chunking); a 'start' report's confidence is the peak so far.
    close() flushes the end of the stream and returns the last reports.

    Delay: a frame's filtered score needs `delay_seconds` (half the median filter) of later
    frames. On top of that, a start is reported once the event has lasted min_duration_seconds
    (shorter ones are dropped) and an end once the score has stayed low for min_gap_seconds
    (a shorter gap would be bridged).
    Memory: the median filter's window and a few numbers per class, whatever the stream length.
    """

    def __init__(self, labels, frame_hop_seconds, config=None, frame_offset_seconds=0.0):
        self.labels = check_labels(labels)
        self.hop = check_hop(frame_hop_seconds)
        self.frame_offset = check_frame_offset(frame_offset_seconds)
        self.config = check_config(config)
        self._onset, self._offset = self.config.thresholds(len(self.labels))
        self._half = self.config.median_half_width(self.hop)
        classes = len(self.labels)
        self._tail = np.zeros((0, classes))   # raw frames still needed by the median filter
        self._done = 0                        # frames whose filtered score has been decided on
        self._closed = False
        # Per class: the hysteresis state and the event being built (start -1: none).
        self._active = np.zeros(classes, dtype=bool)
        self._start = np.full(classes, -1)
        self._end = np.full(classes, -1)      # -1 while the event is still on
        self._peak = np.zeros(classes)
        self._reported = np.zeros(classes, dtype=bool)

    @property
    def delay_seconds(self):
        """How far behind the newest frame the decisions are: half the median filter."""
        return self._half * self.hop

    def push(self, frame_scores):
        """Add a chunk of [frames, classes] scores; returns the start/end reports it completes."""
        if self._closed:
            raise ArgumentError('push() after close(): this EventTracker is finished; make a new one for a new stream')
        scores = check_scores(frame_scores, len(self.labels))  # before any change: a bad chunk leaves no trace
        if len(scores) == 0:
            return []
        if self._done == 0 and len(self._tail) == 0:
            scores = np.concatenate([np.repeat(scores[:1], self._half, axis=0), scores])  # repeat the first frame
        padded = np.concatenate([self._tail, scores])
        classes = self._candidates(padded)
        smooth = _median_windows(padded[:, classes], self._half)
        self._tail = padded[len(smooth):]
        return self._advance(smooth, classes)

    def close(self):
        """End of the stream: filter the last frames, end the events still on; returns their reports.
        Calling it again returns []."""
        if self._closed:
            return []
        self._closed = True
        reports = []
        if len(self._tail):
            padded = np.concatenate([self._tail, np.repeat(self._tail[-1:], self._half, axis=0)])  # repeat the last
            classes = self._candidates(padded)
            reports += self._advance(_median_windows(padded[:, classes], self._half), classes)
            self._tail = self._tail[:0]
        for c in np.flatnonzero(self._start >= 0):
            if self._active[c]:
                self._end[c], self._active[c] = self._done, False
            reports += self._finish(c)
        return self._sorted(reports)

    def _candidates(self, padded):
        """The classes whose filtered frames of `padded` may change something: an event on or begun, or
        a raw score at its onset threshold (a median is at most the largest score of its window, so the
        others' filtered scores stay below it: most of a tagger's 527 classes, not median-filtered)."""
        return np.flatnonzero((padded.max(axis=0) >= self._onset) | self._active | (self._start >= 0))

    def _advance(self, smooth, classes):
        """Decide on the filtered frames self._done .. self._done + len(smooth) - 1 of `classes` (the
        columns of smooth; the other classes have none that counts, see _candidates)."""
        first, reports = self._done, []
        self._done += len(smooth)
        now = self._done
        busy = (smooth >= self._onset[classes]).any(axis=0) | self._active[classes] | (self._start[classes] >= 0)
        for i in np.flatnonzero(busy):
            c = classes[i]
            for start, end in _runs(smooth[:, i], self._onset[c], self._offset[c], self._active[c]):
                if start is not None:   # a new run: bridges the gap to the last event, or begins a new one
                    if self._start[c] >= 0 and not _short_gap(first + start - self._end[c], self.hop, self.config):
                        reports += self._finish(c)
                    if self._start[c] < 0:
                        self._start[c] = first + start
                    self._end[c] = -1
                lo = 0 if start is None else start
                hi = len(smooth) if end is None else end
                if hi > lo:   # (an ongoing event can end on the first frame of the block)
                    self._peak[c] = max(self._peak[c], smooth[lo:hi, i].max())
                self._active[c] = end is None
                if end is not None:
                    self._end[c] = first + end
            if self._start[c] < 0:
                continue
            known_end = now if self._active[c] else self._end[c]   # the event lasts at least this long
            if not self._reported[c] and _long_enough(known_end - self._start[c], self.hop, self.config):
                self._reported[c] = True
                reports.append(self._report('start', c))
            # Over once no later run could bridge the gap: every later start is at least `now`.
            if not self._active[c] and not _short_gap(now - self._end[c], self.hop, self.config):
                reports += self._finish(c)
        return self._sorted(reports)

    def _finish(self, c):
        """The event of class c is over: its reports (none if too short), and the state cleared."""
        reports = []
        if _long_enough(self._end[c] - self._start[c], self.hop, self.config):
            if not self._reported[c]:
                reports.append(self._report('start', c))
            reports.append(self._report('end', c))
        self._start[c], self._end[c], self._peak[c], self._reported[c] = -1, -1, 0.0, False
        return reports

    def _report(self, kind, c):
        report = {'type': kind, 'label': self.labels[c], 'onset': _time(self._start[c], self.hop, self.frame_offset)}
        if kind == 'end':
            report['offset'] = _time(self._end[c], self.hop, self.frame_offset)
        report['confidence'] = float(self._peak[c])
        return report

    def _sorted(self, reports):
        if not reports:
            return reports
        order = {label: i for i, label in enumerate(self.labels)}
        return sorted(reports, key=lambda r: (r['offset'] if r['type'] == 'end' else r['onset'], order[r['label']]))


# ----- choosing thresholds on a labelled dev set -----

DEFAULT_GRID = tuple((onset / 10, round(onset / 10 * ratio, 3))
                     for onset in range(1, 10) for ratio in (1.0, 0.75, 0.5))


def _check_grid(grid):
    grid = DEFAULT_GRID if grid is None else grid
    if isinstance(grid, (str, bytes)) or not hasattr(grid, '__iter__'):
        raise ArgumentError(f'grid must be a list of (onset_threshold, offset_threshold) pairs, got {grid!r}')
    pairs = []
    for i, pair in enumerate(grid):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ArgumentError(f'grid[{i}] must be an (onset_threshold, offset_threshold) pair, got {pair!r}')
        onset = _check_threshold(f'grid[{i}][0] (onset threshold)', pair[0])
        offset = _check_threshold(f'grid[{i}][1] (offset threshold)', pair[1])
        if offset > onset:
            raise ArgumentError(f'grid[{i}]: the offset threshold {offset} must be <= the onset threshold {onset}')
        pairs.append((onset, offset))
    if not pairs:
        raise ArgumentError('grid must hold at least one (onset_threshold, offset_threshold) pair')
    return pairs


def tune_thresholds(frame_scores_list, frame_hop_seconds, references, labels, base_config=None, grid=None,
                    frame_offset_seconds=0.0):
    """Per class, the (onset, offset) threshold pair from `grid` with the best event-based F1 on a dev set.

    Args:
        frame_scores_list: one [frames, classes] score array per dev clip.
        frame_hop_seconds: time between two frames.
        references: the true events of each clip, in the same order: lists of (onset, offset, label)
            tuples (as read_strong_labels gives) or {'label', 'onset', 'offset'} dicts.
        labels: the class names, in column order.
        base_config: the other settings (median filter, minimum duration and gap) and the
            thresholds kept for classes that cannot be tuned. None: EventConfig().
        grid: (onset, offset) pairs to try; None: onsets 0.1 .. 0.9, offsets 1, 0.75 and 0.5 times the onset.

    Returns: base_config with per-class thresholds. A class keeps base_config's thresholds
    when the dev set has no event of it, or when no pair finds any of its events (F1 0).
    Ties go to the pair listed first in grid. F1 as in event_metrics.event_based_metrics
    (200 ms onset collar, offset collar max(200 ms, 20 % of the event)).
    """
    labels = check_labels(labels)
    hop, frame_offset = check_hop(frame_hop_seconds), check_frame_offset(frame_offset_seconds)
    config = check_config(base_config)
    pairs = _check_grid(grid)
    if isinstance(frame_scores_list, np.ndarray) or not isinstance(frame_scores_list, (list, tuple)):
        raise ArgumentError('frame_scores_list must be a list of [frames, classes] arrays, one per dev clip')
    if not isinstance(references, (list, tuple)) or len(references) != len(frame_scores_list):
        got = len(references) if isinstance(references, (list, tuple)) else type(references).__name__
        raise ArgumentError(f'references must be a list with the events of each clip, one per score array '
                         f'({len(frame_scores_list)}), got {got}')
    if not frame_scores_list:
        raise ArgumentError('frame_scores_list is empty: give the scores of at least one labelled dev clip')
    half = config.median_half_width(hop)
    smooth = [median_filter(check_scores(s, len(labels), f'frame_scores_list[{i}]'), half)
              for i, s in enumerate(frame_scores_list)]
    truth = [event_metrics.as_events(r, f'references[{i}]', labels) for i, r in enumerate(references)]
    onsets, offsets = config.thresholds(len(labels))
    for c, label in enumerate(labels):
        class_truth = [[(on, off) for on, off, name in clip if name == label] for clip in truth]
        count = sum(len(clip) for clip in class_truth)
        if count == 0:
            continue
        best_f1, best_pair = 0.0, None
        for onset, offset in pairs:
            found, matched = 0, 0
            for clip_scores, clip_truth in zip(smooth, class_truth):
                estimated = [(_time(a, hop, frame_offset), _time(b, hop, frame_offset))
                             for a, b, _ in _class_events(clip_scores[:, c], onset, offset, hop, config)]
                found += len(estimated)
                matched += event_metrics.count_event_matches(clip_truth, estimated)
            f1 = 2.0 * matched / (count + found)
            if f1 > best_f1:
                best_f1, best_pair = f1, (onset, offset)
        if best_pair is not None:
            onsets[c], offsets[c] = best_pair
    return replace(config, onset_threshold=tuple(float(v) for v in onsets),
                   offset_threshold=tuple(float(v) for v in offsets))
