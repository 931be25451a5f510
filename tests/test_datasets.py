"""Datasets: loading, resampling, crops, splits, layouts, file checks and the demo set.

Every test builds its own tiny dataset in tmp_path.
"""
import csv
import http.server
import os
import shutil
import socket
import threading
import time

import numpy as np
import paddle
import pytest
import soundfile as sf

from paddle_soundcls import cache
from paddle_soundcls.datasets import (ESC50, GTZAN, AudioFolder, CSVDataset, DatasetError, UrbanSound8K,
                                      make_demo_dataset)
from paddle_soundcls.datasets import base, esc50
from paddle_soundcls.datasets.gtzan import GENRES
from signals import noise, tone


def write(path, wave, sr, subtype='PCM_16'):
    """Write `wave` ([samples] or [samples, channels]) as WAV or FLAC, chosen by the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(str(path), wave, sr, subtype=subtype)
    return str(path)


def peak_hz(wave, sr):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1.0 / sr)[np.argmax(spectrum)]


def make_esc50(root, categories=('dog', 'rain', 'crackling_fire'), per_fold=1, sr=44100, seconds=0.2):
    """ESC-50 layout with `per_fold` clips of each class in each of the 5 folds."""
    rows = []
    for target, category in enumerate(categories):
        for fold in range(1, 6):
            for take in 'ABCDE'[:per_fold]:
                name = f'{fold}-{1000 + target}-{take}-{target}.wav'
                write(os.path.join(root, 'audio', name), tone(300 + 100 * target, seconds, sr), sr)
                rows.append([name, fold, target, category, 'False', 1000 + target, take])
    os.makedirs(os.path.join(root, 'meta'), exist_ok=True)
    with open(os.path.join(root, 'meta', 'esc50.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['filename', 'fold', 'target', 'category', 'esc10', 'src_file', 'take'])
        writer.writerows(rows)
    return str(root)


def make_folder(root, sizes, seconds=0.05, sr=16000):
    """AudioFolder layout: class name -> number of clips."""
    for name, n in sizes.items():
        for i in range(n):
            write(os.path.join(root, name, f'{i:03d}.wav'), noise(seconds, sr, seed=i), sr)
    return str(root)


# ----- loading, resampling, crops -----

@pytest.mark.parametrize('sr, ext, subtype, channels', [
    (44100, 'wav', 'PCM_16', 2),
    (16000, 'flac', 'PCM_16', 1),
    (48000, 'wav', 'PCM_16', 1),
    (48000, 'flac', 'PCM_24', 2),
])
@pytest.mark.parametrize('target_sr', [None, 16000])
def test_items_are_mono_float32_at_the_target_rate(tmp_path, sr, ext, subtype, channels, target_sr):
    wave = tone(1000, 1.5, sr)
    if channels == 2:
        wave = np.stack([wave, 0.5 * wave], axis=1)
    write(tmp_path / 'data' / 'beep' / f'clip.{ext}', wave, sr, subtype)
    ds = AudioFolder(tmp_path / 'data', mode='dev', sample_rate=target_sr, duration=1.0)
    out, label = ds[0]
    rate = target_sr or 32000
    assert ds.sample_rate == rate
    assert out.shape == (rate,) and out.dtype == np.float32
    assert label == 0 and label.dtype == np.int64
    # 1 s windows give 1 Hz bins: the tone must stay at 1 kHz after resampling.
    assert abs(peak_hz(out, rate) - 1000) <= 2
    expected_amp = 0.5 * (0.75 if channels == 2 else 1.0)
    assert np.max(np.abs(out)) == pytest.approx(expected_amp, rel=0.03)


def test_stereo_is_averaged_to_mono(tmp_path):
    sr = 32000
    left, right = tone(440, 0.5, sr, amp=0.6), noise(0.5, sr, amp=0.2, seed=3)
    path = write(tmp_path / 'd' / 'a' / 'x.wav', np.stack([left, right], axis=1), sr)
    ds = AudioFolder(tmp_path / 'd', mode='dev', duration=0.5)
    stored = sf.read(path, dtype='float32')[0]
    np.testing.assert_allclose(ds[0][0], stored.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(ds[0][0], (left + right) / 2, atol=1e-4)  # PCM_16 rounding


def test_short_clips_are_zero_padded_and_long_dev_clips_centre_cropped(tmp_path):
    sr = 32000
    short = write(tmp_path / 'd' / 'a' / 'short.wav', noise(0.25, sr, seed=1), sr)
    long = write(tmp_path / 'd' / 'a' / 'long.wav', noise(2.0, sr, seed=2), sr)
    ds = AudioFolder(tmp_path / 'd', mode='dev', duration=1.0)
    by_path = {path: i for i, (path, _) in enumerate(ds.items)}
    stored_short, stored_long = sf.read(short, dtype='float32')[0], sf.read(long, dtype='float32')[0]
    out = ds[by_path[short]][0]
    assert out.shape == (sr,)
    np.testing.assert_array_equal(out[:8000], stored_short)
    assert not out[8000:].any()
    np.testing.assert_array_equal(ds[by_path[long]][0], stored_long[16000:48000])
    # Training pads short clips the same way.
    train = AudioFolder(tmp_path / 'd', mode='train', duration=1.0)
    np.testing.assert_array_equal(train[by_path[short]][0], out)


def test_train_crops_are_random_but_reproducible(tmp_path):
    sr = 32000
    for name in ('a.wav', 'b.wav'):
        write(tmp_path / 'd' / 'c' / name, noise(3.0, sr, seed=5), sr)  # two identical files
    stored = sf.read(str(tmp_path / 'd' / 'c' / 'a.wav'), dtype='float32')[0]

    def crops(seed=0, epoch=0):
        ds = AudioFolder(tmp_path / 'd', mode='train', duration=0.5, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i][0] for i in range(len(ds))]

    def offset(crop):
        starts = np.flatnonzero(stored[:len(stored) - len(crop) + 1] == crop[0])
        return [s for s in starts if np.array_equal(stored[s:s + len(crop)], crop)][0]

    state = np.random.get_state()
    first = crops()
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # global RNG untouched
    again = crops()
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    offsets = {offset(c) for c in first + crops(epoch=1) + crops(epoch=2) + crops(seed=1)}
    assert len(offsets) >= 6  # index, epoch and seed each change the window
    # Resuming at epoch 2 gives the crops epoch 2 had.
    ds = AudioFolder(tmp_path / 'd', mode='train', duration=0.5)
    ds.set_epoch(2)
    np.testing.assert_array_equal(ds[1][0], crops(epoch=2)[1])
    # Dev crops do not move.
    dev = AudioFolder(tmp_path / 'd', mode='dev', duration=0.5)
    dev.set_epoch(3)
    assert offset(dev[0][0]) == (3 * sr - sr // 2) // 2


def test_dataloader_batches(tmp_path):
    ds = AudioFolder(make_folder(tmp_path / 'd', {'a': 2, 'b': 2}), mode='dev', duration=0.1)
    waves, labels = next(iter(paddle.io.DataLoader(ds, batch_size=4)))
    assert waves.shape == [4, 3200] and waves.dtype == paddle.float32
    assert labels.shape == [4] and labels.dtype == paddle.int64
    assert labels.numpy().tolist() == [0, 0, 1, 1]


def test_indexing(tmp_path):
    ds = AudioFolder(make_folder(tmp_path / 'd', {'a': 2}), mode='dev', duration=0.1)
    np.testing.assert_array_equal(ds[-1][0], ds[1][0])
    with pytest.raises(IndexError):
        ds[2]


# ----- argument checks -----

@pytest.mark.parametrize('kwargs, word', [
    ({'sample_rate': 0}, 'sample_rate'), ({'sample_rate': 44100.0}, 'sample_rate'),
    ({'sample_rate': True}, 'sample_rate'), ({'duration': 0}, 'duration'),
    ({'duration': float('nan')}, 'duration'), ({'duration': '5'}, 'duration'),
    ({'mode': None}, 'mode'), ({'mode': ''}, 'mode'), ({'split': 0.2}, 'split'),
    ({'split': (1.5, 0)}, 'dev_fraction'), ({'split': (0.2, -1)}, 'seed'), ({'seed': -1}, 'seed'),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, word):
    root = make_folder(tmp_path / 'd', {'a': 2})
    with pytest.raises(DatasetError, match=word):
        AudioFolder(root, **kwargs)


def test_set_epoch_checks_its_argument(tmp_path):
    ds = AudioFolder(make_folder(tmp_path / 'd', {'a': 1}), duration=0.1)
    with pytest.raises(DatasetError, match='epoch'):
        ds.set_epoch(-1)


# ----- ESC-50 -----

@pytest.mark.parametrize('split', [1, 3, 5])
def test_esc50_split_is_the_dev_fold(tmp_path, split):
    root = make_esc50(tmp_path / 'esc', per_fold=2)
    dev = ESC50('dev', split=split, data_dir=root, duration=0.2)
    train = ESC50('train', split=split, data_dir=root, duration=0.2)
    fold_of = lambda path: int(os.path.basename(path).split('-')[0])  # noqa: E731
    assert {fold_of(p) for p, _ in dev.items} == {split}
    assert {fold_of(p) for p, _ in train.items} == set(range(1, 6)) - {split}
    assert len(dev) == 6 and len(train) == 24
    assert dev.labels == train.labels == ['dog', 'rain', 'crackling_fire']  # target order, not sorted
    for path, target in dev.items:
        assert target == int(os.path.basename(path)[:-4].split('-')[-1])
    assert dev.class_counts().tolist() == [2, 2, 2]
    wave, label = dev[0]
    assert wave.shape == (6400,) and label.dtype == np.int64


def test_esc50_errors(tmp_path):
    root = make_esc50(tmp_path / 'esc')
    for bad in (0, 6, '1', 1.0):
        with pytest.raises(DatasetError, match='split'):
            ESC50('dev', split=bad, data_dir=root)
    gone = [os.path.join(root, 'audio', '2-1001-A-1.wav'), os.path.join(root, 'audio', '4-1002-A-2.wav')]
    for path in gone:
        os.remove(path)
    with pytest.raises(DatasetError) as info:
        ESC50('train', split=1, data_dir=root)
    assert all(path in str(info.value) for path in gone) and 'meta/esc50.csv' in str(info.value)
    with pytest.raises(DatasetError, match=r'meta.*esc50\.csv'):
        ESC50(data_dir=tmp_path)
    with pytest.raises(DatasetError, match='data_dir'):
        ESC50(data_dir=tmp_path / 'nowhere')


class _Files(http.server.BaseHTTPRequestHandler):
    files, requests = {}, []

    def do_GET(self):
        type(self).requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    """A local HTTP server: set `handler.files[url_path] = bytes`; `handler.requests` lists what was asked."""
    handler = type('Handler', (_Files,), {'files': {}, 'requests': []})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', handler
    server.shutdown()
    server.server_close()


def test_esc50_downloads_and_unpacks_once(tmp_path, file_server, monkeypatch):
    url, handler = file_server
    source = make_esc50(tmp_path / 'src' / 'ESC-50-master')
    archive = shutil.make_archive(str(tmp_path / 'master'), 'zip', root_dir=tmp_path / 'src')
    handler.files['/master.zip'] = open(archive, 'rb').read()
    monkeypatch.setattr(esc50, 'ESC50_URL', url + '/master.zip')
    ds = ESC50('dev', split=2, duration=0.2)
    home = cache.cache_dir()
    assert ds.data_dir == os.path.join(home, 'ESC-50-master')
    assert sorted(os.listdir(home)) == ['ESC-50-master']  # no archive, no temporary folder left
    assert len(ds) == 3 and ds.labels == ['dog', 'rain', 'crackling_fire']
    assert sorted(os.listdir(os.path.join(home, 'ESC-50-master', 'audio'))) == \
        sorted(os.listdir(os.path.join(source, 'audio')))
    ESC50('train', split=2, duration=0.2)
    assert handler.requests == ['/master.zip']


def test_esc50_bad_archive_says_to_delete_it(tmp_path, file_server, monkeypatch):
    url, handler = file_server
    monkeypatch.setattr(esc50, 'ESC50_URL', url + '/master.zip')
    # A damaged archive already in the cache (a bad download never gets there: tests/faults).
    with open(os.path.join(cache.cache_dir(), 'ESC-50-master.zip'), 'wb') as f:
        f.write(b'not a zip file')
    with pytest.raises(cache.DownloadError, match='not a valid zip archive.*Delete it'):
        ESC50('dev')
    assert handler.requests == []
    assert not os.path.exists(os.path.join(cache.cache_dir(), 'ESC-50-master'))


def test_esc50_offline_says_where_to_put_the_files(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}/master.zip'
    monkeypatch.setattr(esc50, 'ESC50_URL', url)
    start = time.monotonic()
    with pytest.raises(cache.DownloadError) as info:
        ESC50('dev')
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and not os.path.exists(os.path.join(cache.cache_dir(), 'ESC-50-master'))
    assert 'meta/esc50.csv' in message and 'audio/' in message and cache.cache_dir() in message


# ----- folders and CSV files -----

def test_audio_folder_finds_classes_and_files(tmp_path):
    root = tmp_path / 'd'
    write(root / 'zebra' / 'x.wav', noise(0.05, 16000), 16000)
    write(root / 'ant' / 'deep' / 'er' / 'y.FLAC', noise(0.05, 16000), 16000)
    write(root / 'ant' / 'z.wav', noise(0.05, 16000), 16000)
    (root / 'ant' / 'notes.txt').write_text('not audio')
    (root / 'ant' / '._z.wav').write_bytes(b'macOS metadata')
    (root / 'empty').mkdir()
    with pytest.warns(UserWarning, match='empty'):
        ds = AudioFolder(root, duration=0.1)
    assert ds.labels == ['ant', 'zebra']
    assert [os.path.relpath(p, root) for p, _ in ds.items] == [
        os.path.join('ant', 'deep', 'er', 'y.FLAC'), os.path.join('ant', 'z.wav'), os.path.join('zebra', 'x.wav')]
    assert ds.class_counts().tolist() == [2, 1]


def test_audio_folder_without_audio_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match='no class folders'):
        AudioFolder(tmp_path)
    (tmp_path / 'cat').mkdir()
    (tmp_path / 'cat' / 'readme.txt').write_text('x')
    with pytest.raises(DatasetError, match='audio extension'):
        AudioFolder(tmp_path)
    with pytest.raises(DatasetError, match='root'):
        AudioFolder(tmp_path / 'missing')


def test_stratified_split(tmp_path):
    sizes = {'one': 1, 'two': 2, 'five': 5, 'ten': 10}
    root = make_folder(tmp_path / 'd', sizes)

    def parts(seed, fraction=0.3):
        train = AudioFolder(root, 'train', duration=0.1, split=(fraction, seed))
        dev = AudioFolder(root, 'dev', duration=0.1, split=(fraction, seed))
        return train, dev

    train, dev = parts(7)
    train_paths, dev_paths = {p for p, _ in train.items}, {p for p, _ in dev.items}
    assert not train_paths & dev_paths
    assert len(train_paths | dev_paths) == 18
    assert train.labels == dev.labels == ['five', 'one', 'ten', 'two']
    assert dev.class_counts().tolist() == [2, 0, 3, 1]  # round(n * 0.3), at least 1 when n >= 2
    assert train.class_counts().tolist() == [3, 1, 7, 1]
    assert {p for p, _ in parts(7)[1].items} == dev_paths
    assert any({p for p, _ in parts(seed)[1].items} != dev_paths for seed in (1, 2, 3))


def test_split_does_not_depend_on_listing_order(tmp_path):
    root = make_folder(tmp_path / 'd', {'a': 6, 'b': 6})
    rows = [[os.path.join(c, f'{i:03d}.wav'), c] for c in 'ab' for i in range(6)]
    for name, order in (('fwd.csv', rows), ('rev.csv', rows[::-1])):
        with open(os.path.join(root, name), 'w', newline='') as f:
            csv.writer(f).writerows([['path', 'label']] + order)
    dev = [{p for p, _ in CSVDataset(os.path.join(root, name), mode='dev', duration=0.1, split=(0.5, 3)).items}
           for name in ('fwd.csv', 'rev.csv')]
    assert dev[0] == dev[1] and len(dev[0]) == 6


def test_stratified_split_multi_label():
    targets = [(0,), (0, 1), (1,), (1, 2), (2,), (0, 2), (), ()] * 3
    train, dev = base.stratified_split(targets, 3, 0.25, seed=0)
    assert sorted(train + dev) == list(range(len(targets))) and not set(train) & set(dev)
    for c in range(3):
        assert any(c in targets[i] for i in dev)
    assert base.stratified_split(targets, 3, 0.25, seed=0) == (train, dev)


def test_csv_dataset_folds_and_labels(tmp_path):
    sr = 16000
    rows = []
    for i, (label, fold) in enumerate([('10', 1), ('2', 1), ('10', 2), ('2', 2), ('7', 2), ('7', 3)]):
        write(tmp_path / 'audio' / f'{i}.wav', noise(0.05, sr, seed=i), sr)
        rows.append([f'{i}.wav', label, fold])
    with open(tmp_path / 'list.csv', 'w', newline='') as f:
        csv.writer(f).writerows([['file', 'cls', 'fold']] + rows)
    common = dict(csv_path=tmp_path / 'list.csv', audio_root=tmp_path / 'audio', path_column='file',
                  label_column='cls', duration=0.1)
    ds = CSVDataset(fold_column='fold', folds=[1, 3], **common)
    assert ds.labels == ['2', '7', '10']  # numeric names sorted as numbers, from the whole file
    assert [(os.path.basename(p), t) for p, t in ds.items] == [('0.wav', 2), ('1.wav', 0), ('5.wav', 1)]
    assert len(CSVDataset(**common)) == 6
    with pytest.raises(DatasetError, match='fold'):
        CSVDataset(fold_column='fold', folds=[9], **common)
    with pytest.raises(DatasetError, match="'label'"):
        CSVDataset(tmp_path / 'list.csv', audio_root=tmp_path / 'audio', path_column='file')


def test_csv_missing_files_are_listed(tmp_path):
    write(tmp_path / 'ok.wav', noise(0.05, 16000), 16000)
    with open(tmp_path / 'list.csv', 'w', newline='') as f:
        csv.writer(f).writerows([['path', 'label'], ['ok.wav', 'a'], ['gone1.wav', 'a'], ['sub/gone2.wav', 'b']])
    with pytest.raises(DatasetError) as info:
        CSVDataset(tmp_path / 'list.csv')  # audio_root defaults to the CSV's folder
    message = str(info.value)
    assert '2 of 3' in message
    assert str(tmp_path / 'gone1.wav') in message and str(tmp_path / 'sub' / 'gone2.wav') in message


def test_csv_multi_label_targets_are_multi_hot(tmp_path):
    sr = 16000
    for i in range(4):
        write(tmp_path / f'{i}.wav', noise(0.05, sr, seed=i), sr)
    with open(tmp_path / 'tags.csv', 'w', newline='') as f:
        csv.writer(f).writerows([['path', 'label'], ['0.wav', 'dog;rain'], ['1.wav', 'rain'],
                                 ['2.wav', ''], ['3.wav', 'bird; dog ;dog']])
    ds = CSVDataset(tmp_path / 'tags.csv', label_separator=';', mode='dev', duration=0.1)
    assert ds.multi_label and ds.labels == ['bird', 'dog', 'rain']
    targets = np.stack([ds[i][1] for i in range(4)])
    assert targets.dtype == np.float32 and targets.shape == (4, 3)
    np.testing.assert_array_equal(targets, [[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0]])
    assert ds.class_counts().tolist() == [1, 2, 2]
    with pytest.raises(DatasetError, match='empty'):
        CSVDataset(tmp_path / 'tags.csv')  # single-label: a blank label is an error


# ----- file checks -----

def test_check_files_lists_every_bad_file_or_skips_them(tmp_path):
    sr = 16000
    root = make_folder(tmp_path / 'd', {'a': 2, 'b': 1})
    good = write(tmp_path / 'good.wav', noise(0.5, sr), sr)
    data = open(good, 'rb').read()
    bad = {
        'cut.wav': data[:len(data) // 2],     # an interrupted copy: header promises more audio
        'header.wav': data[:20],              # cut inside the header
        'text.wav': b'this is not audio at all\n',
        'empty.wav': b'',
    }
    for name, content in bad.items():
        (tmp_path / 'd' / 'b' / name).write_bytes(content)
    ds = AudioFolder(root, duration=0.1)
    assert len(ds) == 7
    with pytest.raises(DatasetError) as info:
        ds.check_files()
    message = str(info.value)
    assert '4 of 7' in message and 'skip_bad=True' in message
    for name in bad:
        assert os.path.join(root, 'b', name) in message
    assert 'truncated' in message and 'empty' in message
    with pytest.warns(UserWarning, match='leaving out 4') as record:
        problems = ds.check_files(skip_bad=True)
    assert all(os.path.join(root, 'b', name) in str(record[0].message) for name in bad)
    assert len(problems) == 4 and len(ds) == 3
    assert ds.check_files() == []


# ----- GTZAN and UrbanSound8K -----

def test_gtzan_index_folds(tmp_path):
    sr = 22050
    for genre in GENRES:
        for number in (0, 15, 95):
            write(tmp_path / 'genres' / genre / f'{genre}.{number:05d}.wav', noise(0.05, sr), sr)
    dev = GTZAN('dev', split=2, data_dir=tmp_path, duration=0.1)
    train = GTZAN('train', split=2, data_dir=tmp_path, duration=0.1)
    assert dev.labels[:2] == ['blues', 'classical'] and len(dev.labels) == 10
    assert {os.path.basename(p).split('.')[1] for p, _ in dev.items} == {'00015'}
    assert {os.path.basename(p).split('.')[1] for p, _ in train.items} == {'00000', '00095'}
    assert dev.class_counts().tolist() == [1] * 10 and dev[0][0].shape == (3200,)
    with pytest.raises(DatasetError, match='split'):
        GTZAN('dev', split=11, data_dir=tmp_path)
    shutil.rmtree(tmp_path / 'genres' / 'rock')
    with pytest.raises(DatasetError, match='rock'):
        GTZAN('dev', data_dir=tmp_path)
    with pytest.raises(DatasetError, match='marsyas'):
        GTZAN('dev')


def test_urbansound8k_folds(tmp_path):
    sr = 22050
    rows = []
    for fold in (1, 2, 3):
        for class_id, name in enumerate(['air_conditioner', 'car_horn', 'children_playing']):
            clip = f'{100 + class_id}-{fold}-0-0.wav'
            write(tmp_path / 'audio' / f'fold{fold}' / clip, noise(0.1, sr), sr)
            rows.append([clip, 100 + class_id, 0.0, 0.1, 1, fold, class_id, name])
    os.makedirs(tmp_path / 'metadata')
    with open(tmp_path / 'metadata' / 'UrbanSound8K.csv', 'w', newline='') as f:
        csv.writer(f).writerows([['slice_file_name', 'fsID', 'start', 'end', 'salience', 'fold', 'classID',
                                  'class']] + rows)
    dev = UrbanSound8K('dev', split=2, data_dir=tmp_path)
    train = UrbanSound8K('train', split=2, data_dir=tmp_path)
    assert {os.path.basename(os.path.dirname(p)) for p, _ in dev.items} == {'fold2'}
    assert len(train) == 6 and dev.labels == ['air_conditioner', 'car_horn', 'children_playing']
    assert dev[0][0].shape == (4 * 32000,)
    with pytest.raises(DatasetError, match='urbansounddataset'):
        UrbanSound8K('dev')


# ----- demo set -----

def test_demo_set_is_deterministic_small_and_loads_as_esc50(tmp_path):
    kwargs = dict(num_class=3, clips_per_class=5, seconds=0.5, sample_rate=16000)
    a = make_demo_dataset(tmp_path / 'a', seed=1, **kwargs)
    b = make_demo_dataset(tmp_path / 'b', seed=1, **kwargs)
    c = make_demo_dataset(tmp_path / 'c', seed=2, **kwargs)
    names = sorted(os.listdir(os.path.join(a, 'audio')))
    assert len(names) == 15
    read = lambda root, name: open(os.path.join(root, 'audio', name), 'rb').read()  # noqa: E731
    assert all(read(a, n) == read(b, n) for n in names)
    assert any(read(a, n) != read(c, n) for n in names)
    size = sum(os.path.getsize(os.path.join(a, 'audio', n)) for n in names)
    assert size < 200_000

    mtime = os.path.getmtime(os.path.join(a, 'audio', names[0]))
    assert make_demo_dataset(tmp_path / 'a', seed=1, **kwargs) == a  # reused, not rewritten
    assert os.path.getmtime(os.path.join(a, 'audio', names[0])) == mtime

    dev = ESC50('dev', split=3, data_dir=a, sample_rate=16000, duration=0.5)
    assert dev.labels == ['tone', 'chirp', 'noise_burst'] and len(dev) == 3
    wave, label = dev[0]
    assert wave.shape == (8000,) and np.abs(wave).max() > 0.1
    assert ESC50('train', split=3, data_dir=a, duration=0.5).check_files() == []

    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'mine.txt').write_text('keep me')
    with pytest.raises(DatasetError, match='other files'):
        make_demo_dataset(tmp_path / 'other')
    with pytest.raises(DatasetError, match='clips_per_class'):
        make_demo_dataset(tmp_path / 'x', clips_per_class=4)
    # num_classes is the old name of num_class: the same set, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match='num_classes is deprecated: use num_class'):
        old_name = make_demo_dataset(tmp_path / 'old', seed=1, num_classes=3, clips_per_class=5, seconds=0.5,
                                     sample_rate=16000)
    assert all(read(old_name, n) == read(a, n) for n in names)
    with pytest.raises(ValueError, match='give num_class only'):
        make_demo_dataset(tmp_path / 'both', num_class=3, num_classes=3)
