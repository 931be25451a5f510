"""Seeded random corruption of valid WAV and FLAC files (bytes changed in the header and in the
audio, header fields set to edge values, files cut short, bytes inserted).

Every case must load (a finite mono waveform) and then predict finite scores, or raise
AudioError naming the file; never another exception, a hang, or a crash of the interpreter.
The files are read first in a child process (fuzz_child.py), which is where a crash inside
libsndfile would show; the same files then go through predict and the dataset checks here.
"""
import collections
import csv
import json
import os

import numpy as np
import pytest

from faultkit import HERE, run_child
from helpers import small_module
from paddle_soundcls.audio import AudioError
from paddle_soundcls.datasets import CSVDataset

CASES = 300
SEED = 20240611


@pytest.fixture(scope='module')
def fuzzed(tmp_path_factory):
    out = tmp_path_factory.mktemp('fuzz')
    result = run_child([os.path.join(HERE, 'fuzz_child.py'), str(out), str(CASES), str(SEED)], timeout=300)
    # A negative status is a signal: libsndfile (or numpy) crashed on one of the files.
    assert result.returncode == 0, f'the reader process died (status {result.returncode}):\n{result.stderr[-3000:]}'
    with open(out / 'results.json') as f:
        return json.load(f)


def test_every_case_loads_or_raises_a_named_audio_error(fuzzed):
    assert len(fuzzed) == CASES
    others = [r for r in fuzzed if r['outcome'] not in ('ok', 'AudioError')]
    assert not others, '\n'.join(f"{r['path']} ({r['how']}): {r['outcome']}: {r['message']}" for r in others[:20])
    for r in fuzzed:
        if r['outcome'] == 'AudioError':
            assert r['path'] in r['message'], r
        else:
            assert r['samples'] > 0 and r['finite'] and r['mono'], r
    # The corruptions reach both outcomes, for both formats, or the test proves little.
    seen = collections.Counter((r['base'].rsplit('.', 1)[1], r['outcome']) for r in fuzzed)
    for key in (('wav', 'ok'), ('wav', 'AudioError'), ('flac', 'ok'), ('flac', 'AudioError')):
        assert seen[key] >= 10, seen


def test_loadable_cases_predict_finite_scores(fuzzed):
    module = small_module(num_class=4)
    paths = [r['path'] for r in fuzzed if r['outcome'] == 'ok']
    results = module.predict(paths, batch_size=32)
    assert len(results) == len(paths)
    for path, result in zip(paths, results):
        values = np.array(list(result.values()))
        assert len(values) == 4 and np.all(np.isfinite(values)), path
        assert values.sum() == pytest.approx(1.0, abs=1e-4), path


def test_unloadable_cases_fail_predict_with_a_named_audio_error(fuzzed):
    module = small_module(num_class=4)
    for r in fuzzed:
        if r['outcome'] != 'AudioError':
            continue
        with pytest.raises(AudioError) as info:
            module.predict([r['path']])
        assert r['path'] in str(info.value)


def test_dataset_check_finds_exactly_the_unloadable_cases(fuzzed, tmp_path):
    csv_path = tmp_path / 'fuzz.csv'
    with open(csv_path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['path', 'label'])
        writer.writerows([r['path'], r['base']] for r in fuzzed)
    ds = CSVDataset(csv_path, mode='dev', duration=0.5)
    with pytest.warns(UserWarning, match='leaving out'):
        problems = ds.check_files(skip_bad=True)
    assert {path for path, _ in problems} == {r['path'] for r in fuzzed if r['outcome'] == 'AudioError'}
    for i in range(len(ds)):  # what is left reads without error
        wave, _ = ds[i]
        assert np.all(np.isfinite(wave))
