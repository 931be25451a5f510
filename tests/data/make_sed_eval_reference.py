"""Record sed_eval's event-based and segment-based metrics in tests/data/sed_eval_reference.json.

tests/test_event_metrics.py compares paddle_soundcls.deploy.event_metrics with these
recordings, so the test itself does not need sed_eval. sed_eval (github.com/TUT-ARG/sed_eval,
MIT licence) is installed from PyPI, never copied here:

    pip install sed_eval==0.2.1        # pulls dcase_util
    python tests/data/make_sed_eval_reference.py

The cases are random reference / estimate event lists (fixed seed) made to hit what the
definitions decide: onsets and offsets near the collars (times on a 10 ms grid, so some
differences are exactly 200 ms), offset collars of 20 % of long events, two estimates for one
reference, same-class references close enough that the matching has choices (including
where pairing in list order finds fewer matches than the largest matching), wrong labels,
files without estimates, classes without events, events crossing 1-s segment borders.

sed_eval settings: EventBasedMetrics(t_collar=0.2, percentage_of_length=0.2, evaluate_onset,
evaluate_offset, event_matching_type='optimal'); SegmentBasedMetrics(time_resolution=1.0).
NaN (a ratio with nothing to count) is stored as null.
"""
import json
import math
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sed_eval_reference.json')
SEED = 20240601
NUM_CASES = 12


def random_events(rng, labels, seconds, count, grid):
    events = []
    for _ in range(count):
        length = rng.choice([rng.uniform(0.1, 0.8), rng.uniform(0.8, 6.0)])
        onset = rng.uniform(0, seconds - length)
        events.append([onset, onset + length, str(rng.choice(labels))])
    events = [[round(on, grid), round(off, grid), label] for on, off, label in events]
    return [event for event in events if event[1] > event[0]]


def estimates_for(rng, reference, labels, seconds, grid):
    """A detector's output: most references found with jitter, some relabelled, doubled or missed, extra events."""
    out = []
    for onset, offset, label in reference:
        roll = rng.random()
        if roll < 0.15:
            continue   # missed
        if roll < 0.25:
            label = str(rng.choice(labels))   # often another label
        copies = 2 if rng.random() < 0.15 else 1
        for _ in range(copies):
            on = max(0.0, onset + rng.normal(0, 0.15))
            off = max(on + 0.01, offset + rng.normal(0, 0.1 + 0.15 * (offset - onset)))
            edge = rng.random()
            if edge < 0.15:     # exactly on the onset collar (in decimal; the float may fall either side)
                on, off = onset + rng.choice([-0.2, 0.2]), offset
            elif edge < 0.3:    # exactly on the offset collar
                on, off = onset, offset + rng.choice([-1, 1]) * max(0.2, 0.2 * (offset - onset))
            out.append([round(max(on, 0.0), grid), round(off, grid), label])
    out += random_events(rng, labels, seconds, int(rng.integers(0, 4)), grid)   # false alarms
    return [e for e in out if e[1] > e[0]]


def make_case(rng, index):
    labels = ['alarm', 'dog', 'speech', 'water'][:int(rng.integers(2, 5))]
    seconds = float(rng.choice([10.0, 30.0]))
    grid = 2 if index % 2 == 0 else 4
    files = {}
    for f in range(int(rng.integers(1, 5))):
        reference = random_events(rng, labels, seconds, int(rng.integers(0, 12)), grid)
        if rng.random() < 0.3 and reference:   # a same-class neighbour the matching can confuse
            on, off, label = reference[0]
            reference.append([round(on + 0.15, grid), round(off + 0.15, grid), label])
        estimate = [] if rng.random() < 0.15 else estimates_for(rng, reference, labels, seconds, grid)
        if estimate and rng.random() < 0.5:
            # Two references and two estimates where the first estimate fits both references and
            # the second only the first: matching in list order finds one pair, a largest matching two.
            t, label = round(rng.uniform(0.5, seconds - 3), 2), str(rng.choice(labels))
            reference += [[t, t + 1.0, label], [t + 0.3, t + 1.3, label]]
            estimate += [[t + 0.15, t + 1.15, label], [t - 0.15, t + 0.85, label]]
        files[f'clip{f}.wav'] = {'reference': reference, 'estimate': estimate}
    # A class listed but never seen exercises the NaN paths.
    return {'labels': labels + ['unused'] if index % 3 == 0 else labels, 'files': files}


def nan_to_none(value):
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def summarise(metrics, labels):
    """sed_eval's results in the layout of event_metrics' results."""
    results = metrics.results()
    overall = metrics.overall
    f = results['overall']['f_measure']

    def block(counts, f):
        return {'f1': f['f_measure'], 'precision': f['precision'], 'recall': f['recall'],
                'tp': counts['Ntp'], 'n_ref': counts['Nref'], 'n_est': counts['Nsys']}

    average = results['class_wise_average']['f_measure']
    return nan_to_none({
        'micro': block(overall, f),
        'classes': {label: block(metrics.class_wise[label], results['class_wise'][label]['f_measure'])
                    for label in labels},
        'class_average': {'f1': average['f_measure'], 'precision': average['precision'],
                          'recall': average['recall']}})


def main():
    import sed_eval

    rng = np.random.default_rng(SEED)
    cases = []
    for index in range(NUM_CASES):
        case = make_case(rng, index)
        event_based = sed_eval.sound_event.EventBasedMetrics(
            event_label_list=case['labels'], t_collar=0.2, percentage_of_length=0.2,
            evaluate_onset=True, evaluate_offset=True, event_matching_type='optimal')
        segment_based = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=case['labels'], time_resolution=1.0)
        for name, pair in case['files'].items():
            as_dicts = [[{'filename': name, 'onset': on, 'offset': off, 'event_label': label}
                         for on, off, label in pair[side]] for side in ('reference', 'estimate')]
            event_based.evaluate(reference_event_list=as_dicts[0], estimated_event_list=as_dicts[1])
            segment_based.evaluate(reference_event_list=as_dicts[0], estimated_event_list=as_dicts[1])
        case['event_based'] = summarise(event_based, case['labels'])
        case['segment_based'] = summarise(segment_based, case['labels'])
        cases.append(case)
    data = {'sed_eval_version': sed_eval.__version__, 'seed': SEED,
            'settings': {'t_collar': 0.2, 'percentage_of_length': 0.2, 'event_matching_type': 'optimal',
                         'time_resolution': 1.0},
            'cases': cases}
    with open(OUT, 'w', encoding='utf-8') as f:   # one case per line: small, and diffs stay readable
        head = json.dumps({k: v for k, v in data.items() if k != 'cases'})
        f.write(head[:-1] + ', "cases": [\n' + ',\n'.join(json.dumps(c) for c in cases) + '\n]}\n')
    print(f'wrote {OUT}: {len(cases)} cases, '
          f'{sum(len(c["files"]) for c in cases)} files, '
          f'{sum(len(p["reference"]) for c in cases for p in c["files"].values())} reference events')


if __name__ == '__main__':
    main()
