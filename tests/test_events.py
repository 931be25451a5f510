"""From frame scores to events: EventConfig, detect_events, the streaming EventTracker, tune_thresholds.

The expected events are worked out by hand in the comments (frame i covers [i * hop, (i + 1) * hop)).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import BLOCK_PADDLE
from paddle_soundcls.deploy.events import EventConfig, EventTracker, detect_events, median_filter, tune_thresholds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOP = 0.1
# No smoothing, no minimum duration, no gap bridging: only the thresholds decide.
PLAIN = EventConfig(onset_threshold=0.5, offset_threshold=0.3, median_filter_seconds=0.0,
                    min_duration_seconds=0.0, min_gap_seconds=0.0)


def column(*values):
    return np.asarray(values, dtype=np.float64)[:, None]


def spans(events):
    return [(e['label'], e['onset'], e['offset']) for e in events]


# ----- EventConfig -----

def test_config_defaults_round_trip_through_json():
    config = EventConfig()
    assert (config.onset_threshold, config.offset_threshold) == (0.5, 0.3)
    assert EventConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    per_class = EventConfig(onset_threshold=[0.6, 0.7], offset_threshold=(0.2, 0.7), median_filter_seconds=0.25)
    data = json.loads(json.dumps(per_class.to_dict()))
    assert data['onset_threshold'] == [0.6, 0.7]
    assert EventConfig.from_dict(data) == per_class
    assert EventConfig.from_dict({'onset_threshold': 0.8}) == EventConfig(onset_threshold=0.8)  # the rest: defaults
    onset, offset = per_class.thresholds(2)
    assert onset.tolist() == [0.6, 0.7] and offset.tolist() == [0.2, 0.7]
    assert EventConfig().thresholds(3)[0].tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize('kwargs, words', [
    ({'onset_threshold': 1.5}, 'onset_threshold must be a score in (0, 1]'),
    ({'onset_threshold': 0.0}, 'onset_threshold must be a score in (0, 1]'),
    ({'offset_threshold': float('nan')}, 'offset_threshold must be a score'),
    ({'onset_threshold': '0.5'}, 'onset_threshold must be a score'),
    ({'onset_threshold': [0.5, True]}, 'onset_threshold[1] must be a score'),
    ({'onset_threshold': []}, 'non-empty list'),
    ({'onset_threshold': 0.4, 'offset_threshold': 0.6}, 'offset_threshold (0.6) must be <= onset_threshold (0.4)'),
    ({'onset_threshold': [0.5, 0.2]}, 'for class 1'),   # offset 0.3 > onset 0.2 for class 1
    ({'onset_threshold': [0.5, 0.6], 'offset_threshold': [0.3]},
     'onset_threshold has 2 values but offset_threshold has 1'),
    ({'median_filter_seconds': -1}, 'median_filter_seconds must be a number of seconds >= 0'),
    ({'min_duration_seconds': float('inf')}, 'min_duration_seconds'),
    ({'min_gap_seconds': None}, 'min_gap_seconds'),
])
def test_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ValueError) as info:
        EventConfig(**kwargs)
    assert words in str(info.value)


def test_config_from_dict_rejects_unknown_keys_and_wrong_counts():
    with pytest.raises(ValueError, match=r"unknown event settings \['threshold'\]"):
        EventConfig.from_dict({'threshold': 0.5})
    with pytest.raises(ValueError, match='must be a dict'):
        EventConfig.from_dict([('onset_threshold', 0.5)])
    with pytest.raises(ValueError, match=r'config.onset_threshold has 2 values but there are 3 classes'):
        EventConfig(onset_threshold=[0.5, 0.5]).thresholds(3)
    with pytest.raises(ValueError, match='config.onset_threshold has 2 values but there are 3 classes'):
        detect_events(np.zeros((4, 3)), HOP, ['a', 'b', 'c'], EventConfig(onset_threshold=[0.5, 0.5]))


def test_median_window_is_the_nearest_odd_frame_count():
    # 0.1 s at 10 ms = 10 frames, widened to 11: 5 each side; 0.03 s = 3 frames: 1 each side.
    assert EventConfig(median_filter_seconds=0.1).median_half_width(0.01) == 5
    assert EventConfig(median_filter_seconds=0.03).median_half_width(0.01) == 1
    assert EventConfig(median_filter_seconds=0.0).median_half_width(0.01) == 0
    assert EventConfig(median_filter_seconds=0.004).median_half_width(0.01) == 0


# ----- detect_events, worked by hand -----

def test_hysteresis_starts_at_onset_threshold_and_ends_below_offset_threshold():
    # frame:   0    1    2    3     4    5    6     7    8
    scores = column(0.1, 0.6, 0.4, 0.35, 0.2, 0.1, 0.45, 0.3, 0.1)
    # Starts at frame 1 (0.6 >= 0.5); frames 2, 3 stay >= 0.3; frame 4 (0.2 < 0.3) ends it.
    # Frame 6 (0.45) never reaches 0.5: no second event.
    assert detect_events(scores, HOP, ['dog'], PLAIN) == [
        {'label': 'dog', 'onset': 0.1, 'offset': 0.4, 'confidence': 0.6}]


def test_score_exactly_at_the_thresholds():
    # 0.5 >= 0.5 starts; 0.3 is not below 0.3 so it continues; 0.29 ends.
    scores = column(0.5, 0.3, 0.29)
    assert spans(detect_events(scores, HOP, ['x'], PLAIN)) == [('x', 0.0, 0.2)]


def test_silence_and_sounds_below_threshold_give_no_events():
    assert detect_events(np.zeros((50, 3)), HOP, ['a', 'b', 'c']) == []
    assert detect_events(np.full((50, 3), 0.49), HOP, ['a', 'b', 'c']) == []
    assert detect_events(np.zeros((0, 3)), HOP, ['a', 'b', 'c']) == []


def test_event_still_on_at_the_end_ends_with_the_last_frame():
    scores = column(0.0, 0.0, 0.9, 0.9)
    assert spans(detect_events(scores, HOP, ['x'], PLAIN)) == [('x', 0.2, 0.4)]


def test_median_filter_removes_spikes_and_keeps_the_edges():
    config = EventConfig(median_filter_seconds=0.3, min_duration_seconds=0.0, min_gap_seconds=0.0)  # 3 frames
    # A one-frame spike: the median of (0, 0.9, 0) is 0, no event.
    assert detect_events(column(0, 0, 0.9, 0, 0), HOP, ['x'], config) == []
    # Two frames: the medians are (0, 0.9, 0.9, 0, 0) -> frames 1..2.
    assert spans(detect_events(column(0, 0.9, 0.9, 0, 0), HOP, ['x'], config)) == [('x', 0.1, 0.3)]
    # A one-frame dip inside an event is filled: (0.9, 0.9, 0, 0.9, 0.9) -> 0.9 everywhere. The first
    # and last frames are repeated at the edges, so the event covers the whole clip.
    assert spans(detect_events(column(0.9, 0.9, 0, 0.9, 0.9), HOP, ['x'], config)) == [('x', 0.0, 0.5)]


def test_confidence_is_the_peak_of_the_filtered_scores():
    config = EventConfig(median_filter_seconds=0.3, min_duration_seconds=0.0, min_gap_seconds=0.0)
    # Medians: frame 1 median(0, .6, 1) = .6, frame 2 median(.6, 1, .7) = .7, frame 3 median(1, .7, 0) = .7;
    # the raw 1.0 never survives the filter.
    [event] = detect_events(column(0, 0.6, 1.0, 0.7, 0, 0), HOP, ['x'], config)
    assert (event['onset'], event['offset'], event['confidence']) == (0.1, 0.4, 0.7)


def test_short_gaps_are_bridged_and_short_events_dropped():
    # runs: frames 1-2, gap 3 (one frame, 0.1 s), frames 4-6, gap 7-9 (0.3 s), frame 10
    scores = column(0, .9, .9, 0, .9, .9, .9, 0, 0, 0, .9, 0)
    bridged = EventConfig(median_filter_seconds=0, min_duration_seconds=0, min_gap_seconds=0.15)
    # 0.1 s < 0.15 s: the first two runs become one (0.1 - 0.7); 0.3 s is not bridged.
    assert spans(detect_events(scores, HOP, ['x'], bridged)) == [('x', 0.1, 0.7), ('x', 1.0, 1.1)]
    # A gap equal to min_gap is kept: two events.
    equal = EventConfig(median_filter_seconds=0, min_duration_seconds=0, min_gap_seconds=0.1)
    assert spans(detect_events(scores, HOP, ['x'], equal)) == [('x', 0.1, 0.3), ('x', 0.4, 0.7), ('x', 1.0, 1.1)]
    # min_duration 0.2 s drops the one-frame event at 1.0 but keeps 0.2 s (frames 1-2) exactly.
    short = EventConfig(median_filter_seconds=0, min_duration_seconds=0.2, min_gap_seconds=0)
    assert spans(detect_events(scores, HOP, ['x'], short)) == [('x', 0.1, 0.3), ('x', 0.4, 0.7)]
    # Bridging comes first: the merged 0.1 - 0.7 event passes a 0.5 s minimum, the rest do not.
    both = EventConfig(median_filter_seconds=0, min_duration_seconds=0.5, min_gap_seconds=0.15)
    assert spans(detect_events(scores, HOP, ['x'], both)) == [('x', 0.1, 0.7)]


def test_per_class_thresholds_order_and_frame_offset():
    scores = np.zeros((6, 3))
    scores[3:5, 0] = 0.6      # a: 0.3 - 0.5, but its onset threshold is 0.7: no event
    scores[1:3, 1] = 0.6      # b: 0.1 - 0.3
    scores[1:6, 2] = 0.4      # c: onset threshold 0.35 -> 0.1 - 0.6 (ends with the clip)
    config = EventConfig(onset_threshold=[0.7, 0.5, 0.35], offset_threshold=[0.3, 0.3, 0.2],
                         median_filter_seconds=0, min_duration_seconds=0, min_gap_seconds=0)
    # Sorted by onset, then label order; every time shifted by frame_offset_seconds.
    assert spans(detect_events(scores, HOP, ['a', 'b', 'c'], config, frame_offset_seconds=10.0)) == [
        ('b', 10.1, 10.3), ('c', 10.1, 10.6)]


def test_overlapping_events_of_different_classes():
    scores = np.zeros((10, 2))
    scores[2:7, 0] = 0.8
    scores[4:9, 1] = 0.9
    events = detect_events(scores, 0.5, ['speech', 'music'], PLAIN)
    assert events == [{'label': 'speech', 'onset': 1.0, 'offset': 3.5, 'confidence': 0.8},
                      {'label': 'music', 'onset': 2.0, 'offset': 4.5, 'confidence': 0.9}]


def test_times_are_rounded_to_the_microsecond():
    scores = np.zeros((40, 1))
    scores[3:30] = 0.9
    [event] = detect_events(scores, 0.01, ['x'], PLAIN)
    assert (event['onset'], event['offset']) == (0.03, 0.3)   # not 0.30000000000000004


@pytest.mark.parametrize('scores, words', [
    (np.full((4, 2), np.nan), 'frame_scores holds 8 NaN/Inf values (first at frame 0, class 0)'),
    (np.array([[0.1, np.inf]]), 'NaN/Inf'),
    (np.zeros(2), 'frame_scores must have shape [frames, classes], got shape [2]; for one frame use scores[None, :]'),
    (np.zeros((2, 2, 1)), 'got shape [2, 2, 1]'),
    (np.zeros((4, 3)), 'frame_scores has 3 classes (columns) but there are 2 labels'),
    (np.full((4, 2), 3.0), 'must be probabilities in [0, 1]'),
    (np.full((4, 2), -0.1), 'apply a sigmoid'),
    ([['a', 'b']], 'frame_scores must be a numeric array'),
    ([[0.1, 0.2], [0.3]], 'frame_scores must be a numeric array'),
])
def test_detect_events_rejects_bad_scores(scores, words):
    with pytest.raises(ValueError) as info:
        detect_events(scores, HOP, ['a', 'b'])
    assert words in str(info.value)


@pytest.mark.parametrize('kwargs, words', [
    ({'frame_hop_seconds': 0}, 'frame_hop_seconds must be a positive number'),
    ({'frame_hop_seconds': float('nan')}, 'frame_hop_seconds'),
    ({'labels': 'ab'}, 'labels must be a non-empty list'),
    ({'labels': []}, 'labels must be a non-empty list'),
    ({'labels': ['a', 'a']}, "labels must be distinct; repeated: ['a']"),
    ({'labels': ['a', 3]}, 'labels[1] must be a non-empty string'),
    ({'config': {'onset_threshold': 0.5}}, 'config must be an EventConfig'),
    ({'frame_offset_seconds': float('inf')}, 'frame_offset_seconds must be a finite number'),
])
def test_detect_events_rejects_bad_arguments(kwargs, words):
    args = {'frame_scores': np.zeros((3, 2)), 'frame_hop_seconds': HOP, 'labels': ['a', 'b']}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        detect_events(**args)
    assert words in str(info.value)


# ----- streaming -----

def stream(scores, chunk_sizes, labels, config, hop=HOP):
    """Push `scores` in chunks of the given sizes; returns (reports of every push, reports of close)."""
    tracker = EventTracker(labels, hop, config)
    pushes, position = [], 0
    for size in chunk_sizes:
        pushes.append(tracker.push(scores[position:position + size]))
        position += size
    assert position == len(scores)
    return pushes, tracker.close()


def random_chunks(rng, total):
    """Chunk sizes of 1 to 30 frames that add up to `total`."""
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(min(rng.integers(1, 31), total - sum(sizes))))
    return sizes


def bumpy_scores(rng, frames, classes):
    """Scores in steps of 1-11 frames at levels around the thresholds, some frames jittered: events
    start, end, hover at a threshold, merge across short gaps and get dropped as too short."""
    scores = np.empty((frames, classes))
    for c in range(classes):
        position = 0
        while position < frames:
            length = int(rng.integers(1, 12))
            scores[position:position + length, c] = rng.choice([0.05, 0.25, 0.3, 0.4, 0.5, 0.6, 0.9])
            position += length
    jitter = rng.normal(0, 0.05, scores.shape) * (rng.random(scores.shape) < 0.3)
    return np.clip(np.round(scores + jitter, 2), 0, 1)   # rounded: ties between neighbours, as in real scores


CONFIGS = [
    PLAIN,
    EventConfig(),                                                       # 0.1 s filter at 0.1 s hop: 1 frame
    EventConfig(median_filter_seconds=0.3, min_duration_seconds=0.3, min_gap_seconds=0.45),
    EventConfig(onset_threshold=[0.5, 0.6, 0.4], offset_threshold=[0.5, 0.2, 0.35],
                median_filter_seconds=0.4, min_duration_seconds=0.0, min_gap_seconds=0.7),  # even -> 5 frames
]


@pytest.mark.parametrize('config', CONFIGS)
def test_stream_gives_the_offline_events_for_any_chunking(config):
    labels = ['a', 'b', 'c']
    rng = np.random.default_rng(7)
    for trial in range(16):
        scores = bumpy_scores(rng, int(rng.integers(0, 300)), len(labels))
        offline = detect_events(scores, HOP, labels, config)
        assert offline or len(scores) < 30, 'the generated scores should give events'
        sizes = []
        while sum(sizes) < len(scores):   # chunks of 0 (allowed) to 40 frames, half of them 0 to 3
            size = int(rng.integers(0, 41 if rng.random() < 0.5 else 4))
            sizes.append(min(size, len(scores) - sum(sizes)))
        pushes, closing = stream(scores, sizes, labels, config)
        reports = [(i, r) for i, push in enumerate(pushes + [closing]) for r in push]
        ends = [{k: v for k, v in r.items() if k != 'type'} for _, r in reports if r['type'] == 'end']
        order = {label: i for i, label in enumerate(labels)}
        assert sorted(ends, key=lambda e: (e['onset'], order[e['label']])) == offline
        # Every event is reported exactly twice: a start, then (in the same push or later) its end.
        starts = {(r['label'], r['onset']): (i, r) for i, r in reports if r['type'] == 'start'}
        assert len(starts) == len(offline) == len(ends)
        for i, end in reports:
            if end['type'] == 'end':
                start_push, start = starts[end['label'], end['onset']]
                assert start_push <= i
                assert start['confidence'] <= end['confidence']   # the peak so far <= the peak


def test_stream_reports_within_the_stated_delay():
    # Frame by frame, hop 0.1 s, a 5-frame median filter (2 frames of delay), events kept from
    # 0.3 s (3 frames) and ended after a 0.2 s (2 frame) gap.
    config = EventConfig(median_filter_seconds=0.5, min_duration_seconds=0.3, min_gap_seconds=0.2)
    scores = np.zeros((40, 1))
    scores[10:20] = 0.9      # event over frames 10..19
    tracker = EventTracker(['x'], HOP, config)
    assert tracker.delay_seconds == pytest.approx(0.2)
    seen = {}
    for i in range(len(scores)):
        for report in tracker.push(scores[i:i + 1]):
            seen[report['type']] = i
    # Start: frames 10, 11, 12 make 0.3 s, known once frame 12's median (needing raw frame 14) is in.
    assert seen['start'] == 12 + 2
    # End: frame 20 is the first low one; after 2 low frames (20, 21) no event can bridge the gap,
    # which is known with frame 21's median, i.e. raw frame 23.
    assert seen['end'] == 21 + 2
    assert tracker.close() == []


def test_stream_without_filter_or_gap_reports_the_end_on_the_first_low_frame():
    tracker = EventTracker(['x'], HOP, PLAIN)
    assert tracker.delay_seconds == 0
    assert tracker.push(column(0.0, 0.9)) == [{'type': 'start', 'label': 'x', 'onset': 0.1, 'confidence': 0.9}]
    assert tracker.push(column(0.95)) == []
    assert tracker.push(column(0.1)) == [
        {'type': 'end', 'label': 'x', 'onset': 0.1, 'offset': 0.3, 'confidence': 0.95}]


def test_close_ends_the_events_still_on_and_reports_short_streams():
    config = EventConfig(median_filter_seconds=0.5, min_duration_seconds=0.0, min_gap_seconds=0.0)
    tracker = EventTracker(['x', 'y'], HOP, config)
    assert tracker.push(np.array([[0.9, 0.0]])) == []     # the filter still waits for 2 more frames
    assert tracker.close() == [
        {'type': 'start', 'label': 'x', 'onset': 0.0, 'confidence': 0.9},
        {'type': 'end', 'label': 'x', 'onset': 0.0, 'offset': 0.1, 'confidence': 0.9}]
    assert detect_events(np.array([[0.9, 0.0]]), HOP, ['x', 'y'], config) == [
        {'label': 'x', 'onset': 0.0, 'offset': 0.1, 'confidence': 0.9}]
    assert tracker.close() == []    # a second close has nothing left
    assert EventTracker(['x'], HOP).close() == []


def test_a_bad_chunk_leaves_the_tracker_as_it_was():
    rng = np.random.default_rng(3)
    scores = bumpy_scores(rng, 200, 2)
    config = EventConfig(median_filter_seconds=0.3)
    clean = EventTracker(['a', 'b'], HOP, config)
    hit = EventTracker(['a', 'b'], HOP, config)
    expected, got = [], []
    bad_chunks = [np.full((5, 2), np.nan), np.zeros((5, 3)), np.zeros(2), np.full((3, 2), 2.0), 'noise']
    for i in range(0, 200, 20):
        expected += clean.push(scores[i:i + 20])
        with pytest.raises(ValueError, match='frame_scores'):
            hit.push(bad_chunks[(i // 20) % len(bad_chunks)])
        got += hit.push(scores[i:i + 20])
    assert got + hit.close() == expected + clean.close()


def test_push_after_close_is_an_error():
    tracker = EventTracker(['x'], HOP)
    tracker.push(np.zeros((3, 1)))
    tracker.close()
    with pytest.raises(ValueError, match=r'push\(\) after close\(\).*make a new one'):
        tracker.push(np.zeros((3, 1)))


def test_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError, match='frame_hop_seconds must be a positive number'):
        EventTracker(['x'], -0.01)
    with pytest.raises(ValueError, match='labels must be a non-empty list'):
        EventTracker('x', HOP)
    with pytest.raises(ValueError, match='config.offset_threshold has 3 values but there are 2 classes'):
        EventTracker(['x', 'y'], HOP, EventConfig(onset_threshold=0.9, offset_threshold=[0.1, 0.2, 0.3]))


def test_tracker_memory_does_not_grow_with_the_stream():
    config = EventConfig(median_filter_seconds=0.7)    # 7 frames: 3 each side
    tracker = EventTracker(['a', 'b'], HOP, config)
    rng = np.random.default_rng(0)
    for _ in range(300):
        tracker.push(bumpy_scores(rng, 37, 2))
        assert len(tracker._tail) <= 2 * 3    # the median filter's window, never the stream


# ----- tune_thresholds -----

def test_tune_thresholds_finds_the_best_pair_per_class():
    labels = ['bell', 'hum', 'quiet']
    hop = 0.1
    config = EventConfig(median_filter_seconds=0, min_duration_seconds=0, min_gap_seconds=0)
    clips, references = [], []
    for clip in range(3):
        scores = np.zeros((100, 3))
        # bell: true events score 0.7, false alarms 0.45 -> an onset threshold in (0.45, 0.7] is perfect.
        scores[10:20, 0] = 0.7
        scores[50:55, 0] = 0.45
        # hum: true events score 0.35 and dip to 0.25 in the middle, false alarms 0.2 -> the onset
        # must be in (0.2, 0.35] and the offset <= 0.25, else each event splits in two.
        scores[30:40, 1] = 0.35
        scores[34:36, 1] = 0.25
        scores[70:75, 1] = 0.2
        clips.append(scores)
        references.append([(1.0, 2.0, 'bell'), (3.0, 4.0, 'hum')])
    grid = [(0.3, 0.3), (0.3, 0.2), (0.5, 0.4), (0.8, 0.5), (0.15, 0.1)]
    # bell: (0.3, *) also finds the 0.45 false alarms: F1 = 2*3/(3+6) = 0.67; (0.5, 0.4) is perfect (1.0);
    # (0.8, 0.5) finds nothing. hum: (0.3, 0.3) splits each event at the dip (no half fits the collars):
    # F1 0; (0.3, 0.2) is perfect; (0.15, 0.1) also finds the false alarms. quiet: no reference events,
    # keeps the base thresholds.
    tuned = tune_thresholds(clips, hop, references, labels, config, grid=grid)
    assert tuned.onset_threshold == (0.5, 0.3, 0.5)
    assert tuned.offset_threshold == (0.4, 0.2, 0.3)
    assert tuned.median_filter_seconds == 0 and tuned.min_gap_seconds == 0   # the rest is base_config's
    # The tuned config gives exactly the reference events.
    for scores, reference in zip(clips, references):
        assert spans(detect_events(scores, hop, labels, tuned)) == [(l, on, off) for on, off, l in reference]


def test_tune_thresholds_keeps_the_base_when_nothing_is_found_and_takes_dict_references():
    scores = np.zeros((50, 1))
    base = EventConfig(onset_threshold=0.6, offset_threshold=0.4)
    references = [[{'label': 'x', 'onset': 1.0, 'offset': 2.0}]]
    tuned = tune_thresholds([scores], HOP, references, ['x'], base)
    assert (tuned.onset_threshold, tuned.offset_threshold) == ((0.6,), (0.4,))


def test_tune_thresholds_default_grid_and_ties_go_to_the_first_pair():
    scores = np.zeros((60, 1))
    scores[10:30, 0] = 0.95     # every grid pair finds this event: all tie at F1 = 1
    tuned = tune_thresholds([scores], HOP, [[(1.0, 3.0, 'x')]], ['x'])
    assert (tuned.onset_threshold, tuned.offset_threshold) == ((0.1,), (0.1,))


@pytest.mark.parametrize('kwargs, words', [
    ({'grid': [0.5]}, 'grid[0] must be an (onset_threshold, offset_threshold) pair'),
    ({'grid': [(0.3, 0.5)]}, 'grid[0]: the offset threshold 0.5 must be <= the onset threshold 0.3'),
    ({'grid': [(1.3, 0.5)]}, 'grid[0][0] (onset threshold) must be a score'),
    ({'grid': []}, 'at least one'),
    ({'grid': 0.5}, 'grid must be a list of (onset_threshold, offset_threshold) pairs'),
    ({'references': [[]]}, 'references must be a list with the events of each clip, one per score array (2), got 1'),
    ({'frame_scores_list': np.zeros((2, 5, 1))}, 'frame_scores_list must be a list'),
    ({'frame_scores_list': [], 'references': []}, 'frame_scores_list is empty'),
    ({'frame_scores_list': [np.zeros((5, 1)), np.zeros((5, 2))]}, 'frame_scores_list[1] has 2 classes'),
    ({'references': [[(1.0, 2.0, 'y')], []]}, "references[0][0]: label 'y' is not one of the labels"),
    ({'references': [[(2.0, 1.0, 'x')], []]}, 'references[0][0]: need 0 <= onset < offset'),
])
def test_tune_thresholds_rejects_bad_arguments(kwargs, words):
    args = {'frame_scores_list': [np.zeros((5, 1)), np.zeros((5, 1))], 'frame_hop_seconds': HOP,
            'references': [[], []], 'labels': ['x']}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        tune_thresholds(**args)
    assert words in str(info.value)


# ----- no Paddle needed -----

def test_event_modules_work_without_paddle():
    """events, event_metrics and strong labels import and run with Paddle made unimportable."""
    code = BLOCK_PADDLE + textwrap.dedent('''
        import os, types
        import numpy as np
        import paddle_soundcls
        # paddle_soundcls/datasets/__init__.py imports the Paddle dataset classes; strong.py itself
        # must not need them, so it is loaded under a bare package here.
        package = types.ModuleType('paddle_soundcls.datasets')
        package.__path__ = [os.path.join(os.path.dirname(paddle_soundcls.__file__), 'datasets')]
        sys.modules['paddle_soundcls.datasets'] = package
        from paddle_soundcls.datasets.strong import frame_targets
        from paddle_soundcls.deploy.event_metrics import event_based_metrics, segment_based_metrics
        from paddle_soundcls.deploy.events import EventConfig, EventTracker, detect_events, tune_thresholds

        truth = [(0.5, 1.5, 'a'), (1.0, 2.0, 'b')]
        scores = frame_targets(truth, 30, 0.1, ['a', 'b'])
        config = EventConfig(median_filter_seconds=0.3)
        events = detect_events(scores, 0.1, ['a', 'b'], config)
        tracker = EventTracker(['a', 'b'], 0.1, config)
        reports = tracker.push(scores[:7]) + tracker.push(scores[7:]) + tracker.close()
        tuned = tune_thresholds([scores], 0.1, [truth], ['a', 'b'], config)
        assert not any(m == 'paddle' or m.startswith('paddle.') for m in sys.modules), 'paddle was imported'
        print(json.dumps({'events': events, 'ends': sum(r['type'] == 'end' for r in reports),
                          'f1': event_based_metrics(truth, events)['micro']['f1'],
                          'segment_f1': segment_based_metrics(truth, events)['micro']['f1']}))
    ''')
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(e['label'], e['onset'], e['offset']) for e in out['events']] == [('a', 0.5, 1.5), ('b', 1.0, 2.0)]
    assert out['ends'] == 2 and out['f1'] == 1.0 and out['segment_f1'] == 1.0


@pytest.mark.parametrize('half_width', [1, 4, 25])
def test_median_filter_is_scipys_with_repeated_edges(half_width):
    from scipy import ndimage
    scores = np.random.default_rng(half_width).random((700, 5)).astype(np.float32)
    want = ndimage.median_filter(scores, size=(2 * half_width + 1, 1), mode='nearest')
    np.testing.assert_array_equal(median_filter(scores, half_width), want)


def test_classes_that_never_reach_their_onset_threshold_change_nothing():
    """detect_events and the stream's EventTracker filter only the classes whose scores reach their
    onset threshold (a median is at most its window's largest score): with 40 quiet classes beside 3
    bumpy ones, the events are those of the 3 alone, and a stream of all 43 in chunks of any size
    reports what a stream of the 3 alone reports, confidences of its starts included."""
    rng = np.random.default_rng(11)
    config = EventConfig(median_filter_seconds=0.3, min_duration_seconds=0.0, min_gap_seconds=0.2)
    for trial in range(8):
        bumpy = bumpy_scores(rng, 200, 3)
        quiet = rng.uniform(0, 0.49, (200, 40))   # below the 0.5 onset threshold
        quiet[rng.integers(0, 200, 20), rng.integers(0, 40, 20)] = 0.4999
        scores = np.concatenate([quiet[:, :20], bumpy, quiet[:, 20:]], axis=1)
        labels = [f'c{i}' for i in range(scores.shape[1])]
        offline = detect_events(scores, HOP, labels, config)
        alone = detect_events(bumpy, HOP, labels[20:23], config)
        assert offline == alone and offline
        pushes, closing = stream(scores, [len(scores)], labels, config)
        ends = [{k: v for k, v in r.items() if k != 'type'} for r in pushes[0] + closing if r['type'] == 'end']
        assert sorted(ends, key=lambda e: (e['onset'], labels.index(e['label']))) == offline
        sizes = random_chunks(rng, len(scores))
        pushes, closing = stream(scores, sizes, labels, config)
        assert (pushes, closing) == stream(bumpy, sizes, labels[20:23], config)
        ends = [{k: v for k, v in r.items() if k != 'type'} for r in sum(pushes, []) + closing if r['type'] == 'end']
        assert sorted(ends, key=lambda e: (e['onset'], labels.index(e['label']))) == offline


def test_no_class_reaching_its_threshold_gives_no_events():
    for config in CONFIGS:
        assert detect_events(np.full((50, 3), 0.01), HOP, ['a', 'b', 'c'], config) == []
