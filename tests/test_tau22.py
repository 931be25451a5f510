"""TAU Urban Acoustic Scenes 2022 Mobile: the layout, the DCASE 2024 subsets, reassembly, errors
and the generated demo set.

The layout tests write a tiny development set by hand (meta.csv and split files as text, one
constant level per 1-s slice, so the order of joined slices can be read off the samples).
"""
import hashlib
import json
import os

import numpy as np
import pytest
import soundfile as sf

from paddle_soundcls.datasets import TAU22, DatasetError, make_tau22_demo
from paddle_soundcls.datasets import tau22

SR = 2000   # the fixture's rate: small files, and TAU22(sample_rate=SR) reads them without resampling


def level(recording, slice_index):
    """The constant sample value of a fixture slice: exact in 16-bit PCM, distinct per slice."""
    return (slice_index + 1) / 16 + recording / 256


def write_tau(root, recordings, train, test, meta_order=None, slices=range(10)):
    """A development set in the TAU layout.

    recordings: [(scene, city-location, segment, device)]; train / test: indices of the recordings in
    fold1_train.csv / fold1_evaluate.csv. meta_order: the (recording, slice) rows of meta.csv in order
    (default: recording by recording, slice by slice). Returns {recording index: [file names by slice]}.
    """
    os.makedirs(os.path.join(root, 'audio'), exist_ok=True)
    os.makedirs(os.path.join(root, 'evaluation_setup'), exist_ok=True)
    names = {}
    for r, (scene, identifier, segment, device) in enumerate(recordings):
        names[r] = []
        for j in slices:
            name = f'audio/{scene}-{identifier}-{segment}-{j}-{device}.wav'
            sf.write(os.path.join(root, name), np.full(SR, level(r, j), np.float32), SR, subtype='PCM_16')
            names[r].append(name)
    order = meta_order or [(r, j) for r in names for j in range(len(names[r]))]
    lines = ['filename\tscene_label\tidentifier\tsource_label']
    for r, j in order:
        scene, identifier, _, device = recordings[r]
        lines.append(f'{names[r][j]}\t{scene}\t{identifier}\t{device}')
    with open(os.path.join(root, 'meta.csv'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    for file, part in (('fold1_train.csv', train), ('fold1_evaluate.csv', test)):
        write_split(os.path.join(root, 'evaluation_setup', file), recordings, names, part)
    return names


def write_split(path, recordings, names, part):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('filename\tscene_label\n')
        for r in part:
            for name in names[r]:
                f.write(f'{name}\t{recordings[r][0]}\n')


# tram is listed first: the class order must come from sorting, not from meta.csv.
RECORDINGS = [('tram', 'lisbon-1000', 40000, 'a'),       # 0 train
              ('tram', 'lisbon-1000', 40000, 'b'),       # 1 train (parallel to 0)
              ('airport', 'vienna-101', 5100, 's1'),     # 2 train
              ('airport', 'paris-220', 7000, 'a'),       # 3 test
              ('airport', 'paris-220', 7000, 's5'),      # 4 test, unseen device
              ('tram', 'milan-7', 300, 'c')]             # 5 test
TRAIN, TEST = [0, 1, 2], [3, 4, 5]


@pytest.fixture
def tau(tmp_path):
    root = str(tmp_path / 'TAU-urban-acoustic-scenes-2022-mobile-development')
    return root, write_tau(root, RECORDINGS, TRAIN, TEST)


def test_train_and_test_splits_with_devices(tau):
    root, names = tau
    train = TAU22(root, 'train', sample_rate=SR)
    assert train.labels == ['airport', 'tram'] and train.mode == 'train'
    assert [os.path.relpath(path, root) for path, _ in train.items] == [n for r in TRAIN for n in names[r]]
    assert [target for _, target in train.items] == [1] * 20 + [0] * 10
    assert train.devices == ['a'] * 10 + ['b'] * 10 + ['s1'] * 10
    assert train.seen_devices == ('a', 'b', 's1')
    wave, target = train[25]
    assert wave.shape == (SR,) and int(target) == 0
    np.testing.assert_allclose(wave, level(2, 5), atol=1e-6)

    test = TAU22(root, 'test', sample_rate=SR)
    assert test.mode == 'test' and len(test) == 30
    assert test.devices == ['a'] * 10 + ['s5'] * 10 + ['c'] * 10
    assert test.seen_devices == ('a', 'b', 's1')    # always those of the training split
    assert test.device_names == ('a', 'b', 'c', 's1', 's5')
    assert set(test.devices) - set(test.seen_devices) == {'c', 's5'}

    everything = TAU22(root, 'all', sample_rate=SR)
    assert len(everything) == 60 and len(everything.devices) == 60
    # the folder the download was unpacked in will do too
    assert TAU22(os.path.dirname(root), 'train', sample_rate=SR).items == train.items


def test_item_order_is_meta_order(tmp_path):
    # meta.csv lists the test recordings before the train ones, and the split file in reverse:
    # items follow meta.csv, as the DCASE code selects rows of meta.csv.
    root = str(tmp_path / 'tau')
    order = [(r, j) for r in (5, 4, 3, 2, 1, 0) for j in range(10)]
    names = write_tau(root, RECORDINGS, TRAIN, TEST, meta_order=order)
    with open(os.path.join(root, 'evaluation_setup', 'fold1_train.csv'), 'w') as f:
        f.write('filename\tscene_label\n' + ''.join(f'{n}\t{RECORDINGS[r][0]}\n'
                                                     for r in (0, 1, 2) for n in reversed(names[r])))
    train = TAU22(root, 'train', sample_rate=SR)
    assert [os.path.relpath(path, root) for path, _ in train.items] == [n for r in (2, 1, 0) for n in names[r]]
    assert train.devices == ['s1'] * 10 + ['b'] * 10 + ['a'] * 10


def test_dcase2024_subsets(tau):
    root, names = tau
    write_split(os.path.join(root, 'split_setup', 'split5.csv'), RECORDINGS, names, [1])
    write_split(os.path.join(root, 'split_setup', 'split100.csv'), RECORDINGS, names, TRAIN)
    write_split(os.path.join(root, 'split_setup', 'test.csv'), RECORDINGS, names, [3, 4])
    small = TAU22(root, 'train', subset=5, sample_rate=SR)
    assert len(small) == 10 and small.devices == ['b'] * 10 and small.seen_devices == ('b',)
    assert small.split_file == os.path.join(root, 'split_setup', 'split5.csv')
    full = TAU22(root, 'train', subset=100, sample_rate=SR)
    assert full.items == TAU22(root, 'train', sample_rate=SR).items
    test = TAU22(root, 'test', subset=5, sample_rate=SR)
    assert test.devices == ['a'] * 10 + ['s5'] * 10 and test.seen_devices == ('b',)
    # the split files somewhere else
    elsewhere = os.path.join(os.path.dirname(root), 'splits')
    write_split(os.path.join(elsewhere, 'split10.csv'), RECORDINGS, names, [0, 2])
    ten = TAU22(root, 'train', subset=10, split_dir=elsewhere, sample_rate=SR)
    assert ten.devices == ['a'] * 10 + ['s1'] * 10
    with pytest.raises(DatasetError, match='split25.csv'):
        TAU22(root, 'train', subset=25)
    with pytest.raises(DatasetError, match='subset'):
        TAU22(root, 'train', subset=20)
    with pytest.raises(DatasetError, match='subset'):
        TAU22(root, 'train', split_dir=elsewhere)
    with pytest.raises(DatasetError, match='subset'):
        TAU22(root, 'all', subset=5)


def test_reassembly_joins_slices_in_order(tmp_path):
    root = str(tmp_path / 'tau')
    # meta.csv lists the slices of each recording shuffled: the slice index in the name decides.
    rng = np.random.default_rng(0)
    order = [(r, int(j)) for r in range(len(RECORDINGS)) for j in rng.permutation(10)]
    names = write_tau(root, RECORDINGS, TRAIN, TEST, meta_order=order)
    test = TAU22(root, 'test', reassemble=True, sample_rate=SR)
    assert len(test) == 3 and test.duration == 10
    assert test.devices == ['a', 's5', 'c']
    assert test.recordings[0] == tuple(os.path.join(root, n) for n in names[3])
    assert os.path.basename(test.items[0][0]) == 'airport-paris-220-7000-a.wav'
    for i, r in enumerate(TEST):
        expected = np.repeat([level(r, j) for j in range(10)], SR)
        np.testing.assert_allclose(test.waveform(i), expected, atol=1e-6)
        wave, target = test[i]
        np.testing.assert_allclose(wave, expected, atol=1e-6)
        assert int(target) == test.labels.index(RECORDINGS[r][0])
    assert test.seen_devices == ('a', 'b', 's1')


def test_reassembly_resamples_the_joined_recording_not_each_slice(tmp_path):
    """Slices at another rate than asked are joined at their own rate, then the recording is
    resampled as one: no clicks at the joins (resampling slice by slice disturbs the samples
    around each of them)."""
    from paddle_soundcls import audio
    root = str(tmp_path / 'tau')
    names = write_tau(root, RECORDINGS, TRAIN, TEST)
    rng = np.random.default_rng(1)
    for r in TEST:     # a smooth signal across the joins: a 37-Hz sine at the fixture's rate
        sine = 0.3 * np.sin(2 * np.pi * 37 * np.arange(10 * SR) / SR) + 0.01 * rng.standard_normal(10 * SR)
        for j, name in enumerate(names[r]):
            sf.write(os.path.join(root, name), sine[j * SR:(j + 1) * SR].astype(np.float32), SR, subtype='FLOAT')
    rate = 3000
    test = TAU22(root, 'test', reassemble=True, sample_rate=rate)
    for i, r in enumerate(TEST):
        joined = np.concatenate([sf.read(os.path.join(root, n), dtype='float32')[0] for n in names[r]])
        np.testing.assert_allclose(test.waveform(i), audio.resample(joined, SR, rate), atol=1e-6)
        by_slice = np.concatenate([audio.resample(sf.read(os.path.join(root, n), dtype='float32')[0], SR, rate)
                                   for n in names[r]])
        assert np.abs(by_slice - test.waveform(i)).max() > 1e-3     # what joining resampled slices would give


def test_reassembled_training_draws_random_seconds(tau):
    root, _ = tau
    train = TAU22(root, 'train', reassemble=True, sample_rate=SR, seed=3)
    assert len(train) == 3 and train.duration == 1 and train.devices == ['a', 'b', 's1']
    offsets = set()
    for epoch in range(3):
        train.set_epoch(epoch)
        for i, r in enumerate(TRAIN):
            full = np.repeat([level(r, j) for j in range(10)], SR)
            # the crop rule: a window anywhere in the 10 s, drawn from (seed, epoch, index)
            offset = int(np.random.default_rng((3, epoch, i)).integers(0, 10 * SR - SR + 1))
            wave, _ = train[i]
            np.testing.assert_allclose(wave, full[offset:offset + SR], atol=1e-6)
            offsets.add(offset)
    assert len(offsets) > 1
    again = TAU22(root, 'train', reassemble=True, sample_rate=SR, seed=3)
    again.set_epoch(2)
    np.testing.assert_array_equal(again[1][0], train[1][0])


def test_incomplete_recording_is_left_out_with_a_warning(tmp_path):
    root = str(tmp_path / 'tau')
    names = write_tau(root, RECORDINGS, TRAIN, TEST)
    # slice 3 of recording 1 is not in the train split
    with open(os.path.join(root, 'evaluation_setup', 'fold1_train.csv'), 'w') as f:
        f.write('filename\tscene_label\n' + ''.join(f'{n}\t{RECORDINGS[r][0]}\n' for r in TRAIN
                                                     for n in names[r] if n != names[1][3]))
    with pytest.warns(UserWarning, match=r'tram-lisbon-1000-40000-b: slices 3 missing'):
        train = TAU22(root, 'train', reassemble=True, sample_rate=SR)
    assert train.devices == ['a', 's1']
    assert len(TAU22(root, 'train', sample_rate=SR)) == 29   # the 1-s clips are all still there
    with open(os.path.join(root, 'evaluation_setup', 'fold1_evaluate.csv'), 'w') as f:
        f.write(f'filename\tscene_label\n{names[3][0]}\tairport\n')
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match='no recording has all its 10 slices'):
        TAU22(root, 'test', reassemble=True)


def test_check_files_keeps_devices_in_item_order(tau):
    root, names = tau
    with open(os.path.join(root, names[1][4]), 'wb') as f:
        f.write(b'not audio')
    train = TAU22(root, 'train', sample_rate=SR)
    with pytest.raises(DatasetError, match=names[1][4]):
        train.check_files()
    with pytest.warns(UserWarning):
        train.check_files(skip_bad=True)
    assert len(train) == 29 and train.devices == ['a'] * 10 + ['b'] * 9 + ['s1'] * 10
    joined = TAU22(root, 'train', reassemble=True, sample_rate=SR)
    with pytest.warns(UserWarning, match='recordings with an unusable slice'):
        joined.check_files(skip_bad=True)
    assert joined.devices == ['a', 's1'] and len(joined.recordings) == 2
    np.testing.assert_allclose(joined.waveform(1), np.repeat([level(2, j) for j in range(10)], SR), atol=1e-6)


def rewrite(path, old, new):
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text.replace(old, new))


def test_errors_name_the_file_and_column(tau):
    root, names = tau
    meta = os.path.join(root, 'meta.csv')
    with pytest.raises(DatasetError, match='root'):
        TAU22(os.path.join(root, 'nowhere'))
    with pytest.raises(DatasetError, match='split'):
        TAU22(root, 'evaluate')
    os.rename(meta, meta + '.bak')
    with pytest.raises(DatasetError, match='no such file: .*meta.csv'):
        TAU22(root)
    os.rename(meta + '.bak', meta)

    rewrite(meta, 'source_label', 'device')
    with pytest.raises(DatasetError, match=r"meta.csv has no column 'source_label'"):
        TAU22(root)
    rewrite(meta, 'device', 'source_label')
    rewrite(meta, '\t', ',')
    with pytest.raises(DatasetError, match='tab-separated'):
        TAU22(root)
    rewrite(meta, ',', '\t')
    rewrite(meta, f'{names[0][2]}\ttram\tlisbon-1000\ta', f'{names[0][2]}\ttram\tlisbon-1000\tb')
    with pytest.raises(DatasetError, match="meta.csv, line 4: source_label is 'b' but the file name"):
        TAU22(root)
    rewrite(meta, f'{names[0][2]}\ttram\tlisbon-1000\tb', f'{names[0][2]}\ttram\tlisbon-1000\t')
    with pytest.raises(DatasetError, match='meta.csv, line 4: the source_label column is empty'):
        TAU22(root)
    rewrite(meta, f'{names[0][2]}\ttram\tlisbon-1000\t', f'{names[0][2]}\ttram\tlisbon-1000\ta')

    train_csv = os.path.join(root, 'evaluation_setup', 'fold1_train.csv')
    os.rename(train_csv, train_csv + '.bak')
    with pytest.raises(DatasetError, match=r'the training split \(for seen_devices\): no such file: .*fold1_train.csv'):
        TAU22(root, 'test')
    os.rename(train_csv + '.bak', train_csv)
    rewrite(train_csv, 'filename', 'file')
    with pytest.raises(DatasetError, match=r"fold1_train.csv has no column 'filename'"):
        TAU22(root)
    rewrite(train_csv, 'file', 'filename')
    rewrite(train_csv, names[2][0], 'audio/park-oslo-1-1-0-a.wav')
    with pytest.raises(DatasetError, match='park-oslo-1-1-0-a.wav is not in'):
        TAU22(root)
    rewrite(train_csv, 'audio/park-oslo-1-1-0-a.wav', names[2][0])
    rewrite(train_csv, f'{names[2][0]}\tairport', f'{names[2][0]}\ttram')
    with pytest.raises(DatasetError, match="scene_label 'tram'"):
        TAU22(root)
    rewrite(train_csv, f'{names[2][0]}\ttram', f'{names[2][0]}\tairport')

    os.remove(os.path.join(root, names[2][7]))
    with pytest.raises(DatasetError, match='1 of 30 audio files listed in .*fold1_train.csv are missing'):
        TAU22(root)
    assert len(TAU22(root, 'test')) == 30


def test_file_names_outside_the_dataset_folder_are_refused(tau):
    root, _ = tau
    meta = os.path.join(root, 'meta.csv')
    lines = open(meta).read().splitlines()
    for bad in ('../escape-a.wav', '/etc/passwd', 'audio/../../x.wav'):
        first = lines[1].split('\t')
        with open(meta, 'w') as f:
            f.write('\n'.join([lines[0], '\t'.join([bad] + first[1:])] + lines[2:]) + '\n')
        with pytest.raises(DatasetError, match=r'meta\.csv, line 2: filename .* is outside the dataset folder'):
            TAU22(root, 'train', sample_rate=SR)


def test_reassembly_needs_tau_file_names(tmp_path):
    root = str(tmp_path / 'tau')
    write_tau(root, RECORDINGS, TRAIN, TEST)
    os.rename(os.path.join(root, 'audio', 'tram-milan-7-300-0-c.wav'), os.path.join(root, 'audio', 'odd.wav'))
    for file in ('meta.csv', os.path.join('evaluation_setup', 'fold1_evaluate.csv')):
        rewrite(os.path.join(root, file), 'tram-milan-7-300-0-c.wav', 'odd.wav')
    assert len(TAU22(root, 'test', sample_rate=SR)) == 30
    with pytest.raises(DatasetError, match='cannot reassemble audio/odd.wav'):
        TAU22(root, 'test', reassemble=True)


# ----- the generated demo set -----

DEMO = dict(scenes=2, train_recordings=2, test_recordings=1, sample_rate=16000, seed=5)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_tau22_demo(str(tmp_path_factory.mktemp('tau22') / 'demo'), **DEMO)


def read_rows(path):
    with open(path) as f:
        lines = f.read().splitlines()
    return [line.split('\t') for line in lines[1:]]


def test_demo_layout_counts_and_devices(demo):
    meta = read_rows(os.path.join(demo, 'meta.csv'))
    # per scene: 2 train recordings by a and 2 other devices, 1 test recording by all 9; 10 clips each
    assert len(meta) == 2 * (2 * 3 + 9) * 10
    train, test = TAU22(demo, 'train'), TAU22(demo, 'test')
    assert len(train) == 2 * 2 * 3 * 10 and len(test) == 2 * 9 * 10
    assert train.labels == test.labels == sorted(train.labels) and len(train.labels) == 2
    assert set(train.labels) <= set(tau22.SCENES)
    assert train.seen_devices == ('a', 'b', 'c', 's1', 's2', 's3')
    assert set(test.devices) == set(tau22.DEVICES)
    assert not {'s4', 's5', 's6'} & set(train.devices)
    assert all(device in ('s4', 's5', 's6') or device in train.seen_devices for device in test.devices)
    for dataset in (train, test):
        for (path, _), device in zip(dataset.items, dataset.devices):
            assert path.endswith(f'-{device}.wav')
            assert sf.info(path).frames == 16000 and sf.info(path).samplerate == 16000
    # train and test are recorded at different locations, as in TAU's fold 1
    places = {name: identifier for name, _, identifier, _ in meta}
    train_places = {places[name] for name, _ in read_rows(os.path.join(demo, 'evaluation_setup', 'fold1_train.csv'))}
    test_places = {places[name] for name, _ in read_rows(os.path.join(demo, 'evaluation_setup', 'fold1_evaluate.csv'))}
    assert train_places and test_places and not train_places & test_places
    assert [row[0] for row in read_rows(os.path.join(demo, 'evaluation_setup', 'fold1_test.csv'))] == \
        [row[0] for row in read_rows(os.path.join(demo, 'evaluation_setup', 'fold1_evaluate.csv'))]
    joined = TAU22(demo, 'test', reassemble=True, sample_rate=16000)
    assert len(joined) == 18 and joined.devices == test.devices[::10]
    expected = np.concatenate([sf.read(path, dtype='float32')[0] for path in joined.recordings[4]])
    np.testing.assert_allclose(joined.waveform(4), expected, atol=1e-6)


def test_demo_subsets_are_nested_whole_recordings(demo):
    def recording(name):
        stem, _, device = os.path.basename(name)[:-4].rsplit('-', 2)
        return stem, device

    full = [row[0] for row in read_rows(os.path.join(demo, 'evaluation_setup', 'fold1_train.csv'))]
    previous = set()
    for percent in tau22.SUBSETS:
        rows = read_rows(os.path.join(demo, 'split_setup', f'split{percent}.csv'))
        names = {name for name, _ in rows}
        assert previous <= names <= set(full)
        assert {scene for _, scene in rows} == set(TAU22(demo, 'train').labels)   # every scene in every subset
        for rec in {recording(name) for name in names}:   # a recording is in whole or not at all
            assert sum(recording(name) == rec for name in names) == 10
        previous = names
        assert len(TAU22(demo, 'train', subset=percent)) == len(names)
    assert previous == set(full)
    # 6 recordings per scene: 5 % and 10 % keep one each, 25 % two, 50 % three
    assert [len(read_rows(os.path.join(demo, 'split_setup', f'split{p}.csv'))) for p in tau22.SUBSETS] == \
        [20, 20, 40, 60, 120]
    assert read_rows(os.path.join(demo, 'split_setup', 'test.csv')) == \
        read_rows(os.path.join(demo, 'evaluation_setup', 'fold1_evaluate.csv'))


def band_energy(wave, sr, low, high):
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1.0 / sr)
    return spectrum[(freqs >= low) & (freqs < high)].sum()


def test_demo_devices_are_what_their_simulation_says(demo):
    with open(os.path.join(demo, 'tau22_demo.json')) as f:
        marker = json.load(f)
    assert marker['settings']['seed'] == 5 and marker['devices']['a'] is None
    b = marker['devices']['b']
    train = TAU22(demo, 'train')
    pairs = [path for path, device in zip((p for p, _ in train.items), train.devices) if device == 'b']
    assert pairs
    sr = 16000
    for path in pairs[:5]:
        wave_b, _ = sf.read(path)
        wave_a, _ = sf.read(path[:-len('b.wav')] + 'a.wav')   # the parallel recording of device a
        pass_a, pass_b = (band_energy(w, sr, 2 * b['low_hz'], b['high_hz'] / 2) for w in (wave_a, wave_b))
        high_a, high_b = (band_energy(w, sr, 1.25 * b['high_hz'], sr / 2) for w in (wave_a, wave_b))
        low_a, low_b = (band_energy(w, sr, 0, b['low_hz'] / 1.25) for w in (wave_a, wave_b))
        # relative to the pass band, the band limit takes at least 10 dB above the cut-off and 20 dB below
        assert (high_b / pass_b) < 0.1 * (high_a / pass_a)
        assert (low_b / pass_b) < 0.01 * (low_a / pass_a)
        # the pass band keeps about its level: the gain and the unit-energy impulse response
        assert 0.1 * b['gain'] ** 2 < pass_b / pass_a < 10 * b['gain'] ** 2
        # the codec leaves at most 2**codec_bits sample values; device a has thousands
        assert len(np.unique(wave_b)) <= 2 ** b['codec_bits'] < 1000 < len(np.unique(wave_a))


def test_demo_device_chain_matches_its_description():
    # Reference computed here: shifted taps, tanh, band limit by FFT, gain, mu-law (noise off).
    settings = dict(tau22.demo_devices(0, 16000)['s2'], noise_db=-400)
    clean = 0.1 * np.random.default_rng(1).standard_normal(4000)
    ir = np.zeros(200)
    for delay, gain in zip(settings['ir_delays_ms'], settings['ir_gains']):
        ir[int(round(delay * 16))] += gain
    wave = np.convolve(clean, ir / np.linalg.norm(ir))[:4000]
    wave = np.tanh(settings['drive'] * wave) / settings['drive']
    freqs = np.fft.rfftfreq(4000, 1 / 16000)
    butterworth = 1 / np.sqrt((1 + (settings['low_hz'] / np.maximum(freqs, 1e-6)) ** 16)
                              * (1 + (freqs / settings['high_hz']) ** 16))
    wave = np.fft.irfft(np.fft.rfft(wave) * butterworth, 4000) * settings['gain']
    mu, steps = 255, 2 ** settings['codec_bits'] - 1
    y = np.round((np.sign(wave) * np.log1p(mu * np.abs(wave)) / np.log(256) + 1) / 2 * steps) / steps * 2 - 1
    expected = np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu
    np.testing.assert_allclose(tau22.simulate_device(clean, settings, 16000, np.random.default_rng(0)), expected,
                               atol=1e-9)


def digest(root):
    out = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(folder, name), 'rb') as f:
                out.update(name.encode() + f.read())
    return out.hexdigest()


def test_demo_is_deterministic_reused_and_regenerated(demo, tmp_path):
    again = make_tau22_demo(str(tmp_path / 'again'), **DEMO)
    assert digest(again) == digest(demo)
    marker = os.path.join(again, 'tau22_demo.json')
    stamp = os.stat(marker).st_mtime_ns
    assert make_tau22_demo(again, **DEMO) == again and os.stat(marker).st_mtime_ns == stamp
    other = make_tau22_demo(again, **dict(DEMO, seed=6))    # other settings: made anew, in place
    with open(os.path.join(other, 'tau22_demo.json')) as f:
        assert json.load(f)['settings']['seed'] == 6
    assert digest(other) != digest(demo)
    # the same scene, location and device, another seed: other audio
    name = sorted(os.listdir(os.path.join(demo, 'audio')))[0]
    assert not np.array_equal(sf.read(os.path.join(demo, 'audio', name))[0],
                              sf.read(os.path.join(other, 'audio', name))[0])


def test_demo_refuses_bad_arguments_and_foreign_folders(tmp_path):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'notes.txt').write_text('mine')
    with pytest.raises(DatasetError, match='already holds other files'):
        make_tau22_demo(str(tmp_path / 'busy'), scenes=2, train_recordings=1)
    assert os.listdir(tmp_path / 'busy') == ['notes.txt']
    with pytest.raises(DatasetError, match='scenes'):
        make_tau22_demo(str(tmp_path / 'x'), scenes=['park', 'beach'])
    with pytest.raises(DatasetError, match='scenes'):
        make_tau22_demo(str(tmp_path / 'x'), scenes=1)
    with pytest.raises(DatasetError, match='train_devices'):
        make_tau22_demo(str(tmp_path / 'x'), train_devices=6)
    with pytest.raises(DatasetError, match='sample_rate'):
        make_tau22_demo(str(tmp_path / 'x'), sample_rate=8000)
    assert not os.path.exists(tmp_path / 'x')
