"""The waveform cache of AudioDataset(cache=True): each file decoded and resampled once, kept on
disk, and giving exactly what decoding every time gives.

Every test builds its own 44.1 kHz clips in tmp_path (resampled to the default 32 kHz) and its
own cache folder; the references are the same datasets without the cache.
"""
import glob
import hashlib
import logging
import os
import shutil

import numpy as np
import paddle
import pytest
import soundfile as sf

from paddle_soundcls import audio, cache
from paddle_soundcls.datasets import AudioFolder, DatasetError, StrongLabelDataset
from signals import noise, tone

SR = 44100


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """The waveform cache folder of this test (cache.cache_dir() reads PADDLE_SOUNDCLS_HOME)."""
    monkeypatch.setenv('PADDLE_SOUNDCLS_HOME', str(tmp_path / 'home'))
    return str(tmp_path / 'home' / 'waveforms')


def write(path, wave, sr=SR):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(str(path), wave, sr, subtype='PCM_16')
    return str(path)


def make_folder(root):
    """Two classes of 44.1 kHz clips, 0.5-2.5 s long, one of them stereo."""
    write(root / 'a' / '0.wav', noise(2.5, SR, seed=1))
    write(root / 'a' / '1.wav', tone(440, 0.5, SR))
    write(root / 'b' / '0.wav', np.stack([noise(1.7, SR, seed=2), tone(300, 1.7, SR)], axis=1))
    return str(root)


def items(ds):
    return [ds[i] for i in range(len(ds))]


def assert_same_items(got, expected):
    assert len(got) == len(expected)
    for (wave, target), (ref_wave, ref_target) in zip(got, expected):
        # An ordinary array the caller may change in place, not a view of the cache file.
        assert type(wave) is np.ndarray and wave.dtype == np.float32
        assert wave.flags.writeable and wave.flags.c_contiguous
        assert wave.tobytes() == ref_wave.tobytes()  # bit for bit
        np.testing.assert_array_equal(target, ref_target)


def npy_files(root):
    return sorted(glob.glob(os.path.join(root, '*', '*.npy')))


@pytest.mark.parametrize('mode', ['train', 'dev'])
def test_cached_items_equal_uncached_bit_for_bit(tmp_path, cache_root, mode):
    root = make_folder(tmp_path / 'd')
    plain = AudioFolder(root, mode=mode, duration=1.0, seed=3)
    cached = AudioFolder(root, mode=mode, duration=1.0, seed=3, cache=True)
    for epoch in (0, 2):  # the first epoch decodes and stores, the second reads the cache
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        assert_same_items(items(cached), items(plain))
    for i in range(len(plain)):  # whole clips too, as evaluation reads them
        assert cached.waveform(i).tobytes() == plain.waveform(i).tobytes()
    # The 2.5 s clip was resampled to 32 kHz before it was stored.
    lengths = sorted(len(np.load(f)) for f in npy_files(cache_root))
    assert lengths[-1] == int(np.ceil(2.5 * SR * 32000 / SR))


def test_strong_label_dataset_with_cache_equals_without(tmp_path, cache_root):
    write(tmp_path / 's' / 'x.wav', noise(3.0, SR, seed=4))
    write(tmp_path / 's' / 'y.wav', tone(500, 1.2, SR))
    csv = tmp_path / 's' / 'events.csv'
    csv.write_text('filename,onset,offset,event_label\nx.wav,0.5,2.0,dog\ny.wav,0.1,0.9,bird\n')
    plain = StrongLabelDataset(str(csv), duration=2.0, seed=1)
    cached = StrongLabelDataset(str(csv), duration=2.0, seed=1, cache=True)
    for _ in range(2):
        for (wave, frames), (ref_wave, ref_frames) in zip(items(cached), items(plain)):
            assert type(wave) is np.ndarray and wave.flags.writeable
            assert wave.tobytes() == ref_wave.tobytes()
            np.testing.assert_array_equal(frames, ref_frames)


def test_a_second_dataset_decodes_nothing(tmp_path, cache_root, monkeypatch):
    root = make_folder(tmp_path / 'd')
    expected = items(AudioFolder(root, duration=1.0, seed=5))
    items(AudioFolder(root, duration=1.0, seed=5, cache=True))  # fills the cache

    def no_decoding(*args, **kwargs):
        raise AssertionError('a cached file was decoded again')

    monkeypatch.setattr(audio, 'load', no_decoding)
    assert_same_items(items(AudioFolder(root, duration=1.0, seed=5, cache=True)), expected)
    with pytest.raises(AssertionError, match='decoded again'):  # the patch is the one the dataset calls
        items(AudioFolder(root, duration=1.0, seed=5))


def test_one_cache_file_per_distinct_content(tmp_path, cache_root):
    root = tmp_path / 'd'
    first = write(root / 'a' / 'x.wav', noise(1.0, SR, seed=6))
    os.makedirs(root / 'b')
    second = shutil.copy(first, root / 'b' / 'copy_of_x.wav')
    other = write(root / 'b' / 'other.wav', noise(1.0, SR, seed=7))
    ds = AudioFolder(str(root), mode='dev', duration=1.0, cache=True)
    assert npy_files(cache_root) == []  # nothing is decoded before it is used
    items(ds)
    names = sorted(os.path.basename(f) for f in npy_files(cache_root))
    digests = sorted({hashlib.sha256(open(p, 'rb').read()).hexdigest() for p in (first, second, other)})
    assert names == [f'{d}.npy' for d in digests] and len(names) == 2
    folder = os.path.dirname(npy_files(cache_root)[0])
    assert os.path.isfile(os.path.join(folder, 'settings.json'))


def test_an_edited_file_is_decoded_again(tmp_path, cache_root):
    root = tmp_path / 'd'
    path = write(root / 'a' / 'x.wav', noise(1.5, SR, seed=8))
    items(AudioFolder(str(root), mode='dev', duration=1.0, cache=True))
    write(path, tone(1000, 1.5, SR))  # same name and length, new content
    expected = items(AudioFolder(str(root), mode='dev', duration=1.0))
    assert_same_items(items(AudioFolder(str(root), mode='dev', duration=1.0, cache=True)), expected)
    assert len(npy_files(cache_root)) == 2


@pytest.mark.parametrize('damage', ['truncated', 'header_only', 'empty', 'not_npy'])
def test_a_damaged_cache_file_is_reported_and_rewritten(tmp_path, cache_root, caplog, damage):
    root = tmp_path / 'd'
    write(root / 'a' / 'x.wav', noise(2.0, SR, seed=9))
    expected = items(AudioFolder(str(root), duration=1.0, seed=2))
    items(AudioFolder(str(root), duration=1.0, seed=2, cache=True))
    [file] = npy_files(cache_root)
    data = open(file, 'rb').read()
    damaged = {'truncated': data[:len(data) // 2], 'header_only': data[:40], 'empty': b'',
               'not_npy': b'not an array\n'}[damage]
    with open(file, 'wb') as f:
        f.write(damaged)
    with caplog.at_level(logging.WARNING, logger='paddle_soundcls.datasets.base'):
        got = items(AudioFolder(str(root), duration=1.0, seed=2, cache=True))
    assert_same_items(got, expected)
    assert any(file in r.getMessage() and 'damaged' in r.getMessage() for r in caplog.records)
    assert open(file, 'rb').read() == data  # rewritten whole


@pytest.mark.parametrize('value', ['yes', 1, None])
def test_cache_must_be_a_bool(tmp_path, cache_root, value):
    with pytest.raises(DatasetError, match='cache'):
        AudioFolder(make_folder(tmp_path / 'd'), cache=value)


def test_check_files_can_leave_out_bad_files(tmp_path, cache_root):
    root = make_folder(tmp_path / 'd')
    (tmp_path / 'd' / 'b' / 'text.wav').write_bytes(b'this is not audio\n')
    ds = AudioFolder(root, duration=1.0, cache=True)
    with pytest.warns(UserWarning, match='leaving out 1'):
        ds.check_files(skip_bad=True)
    plain = AudioFolder(root, duration=1.0)
    with pytest.warns(UserWarning):
        plain.check_files(skip_bad=True)
    assert_same_items(items(ds), items(plain))


def test_dataloader_workers_use_the_cache(tmp_path, cache_root, monkeypatch):
    root = make_folder(tmp_path / 'd')
    plain = AudioFolder(root, duration=1.0, seed=4)
    cached = AudioFolder(root, duration=1.0, seed=4, cache=True)

    def no_hashing(*args, **kwargs):
        raise AssertionError('files were hashed again')

    # Workers get the dataset's mapping of files; they must not hash the audio again.
    monkeypatch.setattr(cache, 'file_digest', no_hashing)
    for epoch in (0, 1):  # the worker fills the cache, then reads it
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        expected = [batch for batch in paddle.io.DataLoader(plain, batch_size=2, num_workers=0)]
        got = [batch for batch in paddle.io.DataLoader(cached, batch_size=2, num_workers=1)]
        assert len(got) == len(expected) == 2
        for (waves, labels), (ref_waves, ref_labels) in zip(got, expected):
            assert waves.numpy().tobytes() == ref_waves.numpy().tobytes()
            np.testing.assert_array_equal(labels.numpy(), ref_labels.numpy())
        assert len(npy_files(cache_root)) == 3
