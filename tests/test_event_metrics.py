"""Event-based and segment-based metrics against hand-worked cases and against sed_eval's own
results recorded in tests/data/sed_eval_reference.json (by tests/data/make_sed_eval_reference.py)."""
import json
import math
import os

import pytest

from paddle_soundcls.deploy.event_metrics import count_event_matches, event_based_metrics, segment_based_metrics

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'sed_eval_reference.json')


def micro(result):
    m = result['micro']
    return m['tp'], m['fp'], m['fn']


# ----- event-based, by hand -----

def test_onset_collar_is_200_ms():
    reference = [(1.0, 2.0, 'dog')]
    # onsets 0.15 s off: inside the collar; 0.25 s off: outside (the offsets match exactly).
    assert micro(event_based_metrics(reference, [(1.15, 2.0, 'dog')])) == (1, 0, 0)
    assert micro(event_based_metrics(reference, [(0.85, 2.0, 'dog')])) == (1, 0, 0)
    assert micro(event_based_metrics(reference, [(1.25, 2.0, 'dog')])) == (0, 1, 1)
    assert micro(event_based_metrics(reference, [(0.75, 2.0, 'dog')])) == (0, 1, 1)


def test_offset_collar_is_200_ms_or_20_percent_of_the_reference_length():
    # A 5 s event: the offset collar is max(0.2, 0.2 * 5) = 1.0 s.
    long = [(0.0, 5.0, 'rain')]
    assert micro(event_based_metrics(long, [(0.1, 5.9, 'rain')])) == (1, 0, 0)
    assert micro(event_based_metrics(long, [(0.1, 4.1, 'rain')])) == (1, 0, 0)
    assert micro(event_based_metrics(long, [(0.1, 6.1, 'rain')])) == (0, 1, 1)
    # A 0.5 s event: 20 % is 0.1 s, so the 0.2 s floor applies.
    short = [(1.0, 1.5, 'knock')]
    assert micro(event_based_metrics(short, [(1.0, 1.65, 'knock')])) == (1, 0, 0)
    assert micro(event_based_metrics(short, [(1.0, 1.75, 'knock')])) == (0, 1, 1)
    # The collar is set by the reference's length, not the estimate's: a 5 s estimate of a
    # 0.5 s event is wrong.
    assert micro(event_based_metrics(short, [(1.0, 6.0, 'knock')])) == (0, 1, 1)
    # Other collars on request: with offsets ignored in practice (a huge fraction), only onsets count.
    assert micro(event_based_metrics(short, [(1.0, 6.0, 'knock')], offset_collar_fraction=100.0)) == (1, 0, 0)
    assert micro(event_based_metrics(short, [(1.3, 1.5, 'knock')], collar_seconds=0.5)) == (1, 0, 0)


def test_labels_must_agree():
    # Right times, wrong label: a false positive for 'cat' and a miss for 'dog'.
    result = event_based_metrics([(1.0, 2.0, 'dog')], [(1.0, 2.0, 'cat')])
    assert micro(result) == (0, 1, 1)
    assert (result['classes']['dog']['fn'], result['classes']['cat']['fp']) == (1, 1)


def test_matching_is_one_to_one():
    # Two estimates of one event: one is correct, the other a false positive.
    result = event_based_metrics([(1.0, 2.0, 'dog')], [(1.0, 2.0, 'dog'), (1.05, 2.05, 'dog')])
    assert micro(result) == (1, 1, 0)
    # P = 1/2, R = 1/1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert result['micro']['precision'] == 0.5 and result['micro']['recall'] == 1.0
    assert result['micro']['f1'] == pytest.approx(2 / 3)
    # One estimate for two close events: one hit, one miss.
    assert micro(event_based_metrics([(1.0, 2.0, 'dog'), (1.1, 2.1, 'dog')], [(1.05, 2.05, 'dog')])) == (1, 0, 1)


def test_matching_is_a_largest_one():
    # r1 = (1.0, 2.0) and r2 = (1.3, 2.3); eA = (1.15, 2.15) fits both (0.15 s off each), eB =
    # (0.85, 1.85) fits only r1. Pairing in list order gives r1-eA and leaves r2 alone;
    # the largest matching is r1-eB, r2-eA: 2 hits.
    references = [(1.0, 2.0, 'dog'), (1.3, 2.3, 'dog')]
    estimates = [(1.15, 2.15, 'dog'), (0.85, 1.85, 'dog')]
    assert micro(event_based_metrics(references, estimates)) == (2, 0, 0)
    assert count_event_matches([(1.0, 2.0), (1.3, 2.3)], [(1.15, 2.15), (0.85, 1.85)]) == 2
    # A longer chain: each estimate fits its reference and the next one; only the shifted
    # assignment matches all four.
    refs = [(float(i), i + 1.0) for i in range(4)]
    ests = [(i + 0.1, i + 1.1) for i in range(4)]
    assert count_event_matches(refs, ests, collar_seconds=1.0) == 4
    assert count_event_matches([], ests) == 0 and count_event_matches(refs, []) == 0


def test_per_class_micro_and_average():
    references = {'a.wav': [(0.0, 1.0, 'dog'), (2.0, 3.0, 'dog'), (4.0, 5.0, 'cat')],
                  'b.wav': [(1.0, 2.0, 'cat')]}
    estimates = {'a.wav': [(0.1, 1.1, 'dog'), (4.0, 5.0, 'cat'), (6.0, 7.0, 'cat')]}
    result = event_based_metrics(references, estimates)
    # dog: 1 of 2 found, no false alarm -> P 1, R 0.5, F1 2/3.
    # cat: 1 of 2 found (b.wav has no estimates), 1 false alarm -> P 0.5, R 0.5, F1 0.5.
    dog, cat = result['classes']['dog'], result['classes']['cat']
    assert (dog['tp'], dog['fp'], dog['fn'], dog['n_ref'], dog['n_est']) == (1, 0, 1, 2, 1)
    assert (cat['tp'], cat['fp'], cat['fn'], cat['n_ref'], cat['n_est']) == (1, 1, 1, 2, 2)
    assert dog['f1'] == pytest.approx(2 / 3) and cat['f1'] == pytest.approx(0.5)
    # micro: tp 2 of 4 references and 3 estimates -> P 2/3, R 1/2, F1 = 2*2/(4+3) = 4/7.
    assert micro(result) == (2, 1, 2)
    assert result['micro']['f1'] == pytest.approx(4 / 7)
    # class average: (2/3 + 1/2) / 2 = 7/12.
    assert result['class_average']['f1'] == pytest.approx(7 / 12)
    assert list(result['classes']) == ['cat', 'dog']   # labels seen, sorted, as sed_eval


def test_nothing_to_count_is_nan_as_in_sed_eval():
    # No estimates: precision undefined (NaN), recall 0, F1 NaN.
    result = event_based_metrics([(1.0, 2.0, 'dog')], [])
    assert math.isnan(result['micro']['precision']) and result['micro']['recall'] == 0
    assert math.isnan(result['micro']['f1'])
    # Estimates but no references: precision 0, recall NaN.
    result = event_based_metrics([], [(1.0, 2.0, 'dog')])
    assert result['micro']['precision'] == 0 and math.isnan(result['micro']['recall'])
    # Estimates all wrong: P = R = 0 -> F1 0.
    assert event_based_metrics([(1.0, 2.0, 'dog')], [(5.0, 6.0, 'dog')])['micro']['f1'] == 0.0
    # A listed class with no events at all is NaN and left out of the class average.
    result = event_based_metrics([(1.0, 2.0, 'dog')], [(1.0, 2.0, 'dog')], labels=['dog', 'cat'])
    assert math.isnan(result['classes']['cat']['f1']) and result['class_average']['f1'] == 1.0


def test_accepts_detect_events_dicts_and_dcase_dicts():
    estimates = [{'label': 'dog', 'onset': 1.0, 'offset': 2.0, 'confidence': 0.9},
                 {'event_label': 'cat', 'onset': 3.0, 'offset': 4.0}]
    assert micro(event_based_metrics([(1.0, 2.0, 'dog'), (3.0, 4.0, 'cat')], estimates)) == (2, 0, 0)


# ----- segment-based, by hand -----

def test_segment_based_by_hand():
    # dog 0.5 - 2.2 touches segments 0, 1, 2; the estimate 1.1 - 1.5 only segment 1.
    # cat 3.2 - 3.4 is estimated in segment 3 with no reference. The file is 4 segments long.
    result = segment_based_metrics([(0.5, 2.2, 'dog')], [(1.1, 1.5, 'dog'), (3.2, 3.4, 'cat')])
    assert micro(result) == (1, 1, 2)
    # P = 1/2, R = 1/3, F1 = 2 * (1/2) * (1/3) / (1/2 + 1/3) = 0.4
    assert result['micro']['f1'] == pytest.approx(0.4)
    assert result['classes']['dog']['n_ref'] == 3 and result['classes']['cat']['n_est'] == 1
    # An offset on a segment border does not touch the next segment: 1.0 - 2.0 is segment 1 only.
    assert micro(segment_based_metrics([(1.0, 2.0, 'dog')], [(1.5, 1.7, 'dog')])) == (1, 0, 0)
    # Two overlapping estimates of one class count once per segment.
    assert micro(segment_based_metrics([(0.0, 1.0, 'dog')], [(0.0, 0.5, 'dog'), (0.2, 0.9, 'dog')])) == (1, 0, 0)


def test_segment_length_and_durations():
    # Half-second segments: dog 0.0 - 1.0 is segments 0, 1; the estimate 0.6 - 0.8 segment 1.
    assert micro(segment_based_metrics([(0.0, 1.0, 'dog')], [(0.6, 0.8, 'dog')], segment_seconds=0.5)) == (1, 0, 1)
    # durations cut the evaluation: up to 2 s, the estimate at 5 s is not counted.
    refs, ests = {'a': [(0.0, 1.0, 'dog')]}, {'a': [(0.0, 1.0, 'dog'), (5.0, 6.0, 'dog')]}
    assert micro(segment_based_metrics(refs, ests)) == (1, 1, 0)
    assert micro(segment_based_metrics(refs, ests, durations={'a': 2.0})) == (1, 0, 0)
    assert micro(segment_based_metrics(refs['a'], ests['a'], durations=2.0)) == (1, 0, 0)


# ----- against sed_eval -----

def load_reference():
    with open(REFERENCE, encoding='utf-8') as f:
        return json.load(f)


def assert_same(ours, theirs, where):
    for key, expected in theirs.items():
        got = ours[key]
        if expected is None:
            assert math.isnan(got), f'{where} {key}: {got}, sed_eval NaN'
        else:
            assert got == pytest.approx(expected, abs=1e-12), f'{where} {key}: {got}, sed_eval {expected}'


@pytest.mark.parametrize('kind, metric', [('event_based', event_based_metrics),
                                          ('segment_based', segment_based_metrics)])
def test_matches_sed_eval(kind, metric):
    data = load_reference()
    assert data['settings'] == {'t_collar': 0.2, 'percentage_of_length': 0.2, 'event_matching_type': 'optimal',
                                'time_resolution': 1.0}
    assert len(data['cases']) >= 10
    for index, case in enumerate(data['cases']):
        references = {name: [tuple(e) for e in pair['reference']] for name, pair in case['files'].items()}
        estimates = {name: [tuple(e) for e in pair['estimate']] for name, pair in case['files'].items()}
        ours, theirs = metric(references, estimates, labels=case['labels']), case[kind]
        assert_same(ours['micro'], theirs['micro'], f'case {index} micro')
        assert_same(ours['class_average'], theirs['class_average'], f'case {index} class average')
        assert list(ours['classes']) == case['labels']
        for label in case['labels']:
            assert_same(ours['classes'][label], theirs['classes'][label], f'case {index} {label}')


# ----- bad input -----

@pytest.mark.parametrize('references, estimates, words', [
    ([(1.0, 2.0, 'dog')], [(2.0, 1.0, 'dog')], 'estimates[0]: need 0 <= onset < offset, got onset 2.0, offset 1.0'),
    ([(-1.0, 2.0, 'dog')], [], 'references[0]: need 0 <= onset < offset'),
    ([(1.0, float('nan'), 'dog')], [], 'references[0]: offset must be a finite number of seconds'),
    ([(1.0, 2.0, '')], [], 'references[0]: label must be a non-empty string'),
    ([(1.0, 2.0)], [], 'references[0] must be an (onset, offset, label) tuple'),
    ([{'label': 'dog', 'onset': 1.0}], [], 'references[0]: offset must be a finite number'),
    ({'a.wav': []}, {'b.wav': []}, "estimates has files that references lacks: ['b.wav']"),
    ({'a.wav': [(1.0, 2.0, 'dog', 0.5)]}, {}, "references['a.wav'][0] must be an (onset, offset, label) tuple"),
    ({'a.wav': 'dog'}, {}, "references['a.wav'] must be a list of events"),
    ('a.csv', {}, 'references must be {filename: events}'),
])
def test_bad_events_are_named(references, estimates, words):
    for metric in (event_based_metrics, segment_based_metrics):
        with pytest.raises(ValueError) as info:
            metric(references, estimates)
        assert words in str(info.value)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="label 'cat' is not one of the labels"):
        event_based_metrics([(1.0, 2.0, 'cat')], [], labels=['dog'])
    with pytest.raises(ValueError, match='labels must be a non-empty list'):
        event_based_metrics([], [], labels='dog')
    with pytest.raises(ValueError, match='collar_seconds must be a number >= 0'):
        event_based_metrics([], [], collar_seconds=-0.2)
    with pytest.raises(ValueError, match='offset_collar_fraction must be a number >= 0'):
        event_based_metrics([], [], offset_collar_fraction=float('nan'))
    with pytest.raises(ValueError, match='segment_seconds must be a positive number'):
        segment_based_metrics([], [], segment_seconds=0)
    with pytest.raises(ValueError, match=r"durations\['a'\] must be a number of seconds >= 0"):
        segment_based_metrics({'a': []}, {}, durations={'a': -1})
    with pytest.raises(ValueError, match='durations must be {filename: seconds}'):
        segment_based_metrics({'a': []}, {}, durations=3.0)
