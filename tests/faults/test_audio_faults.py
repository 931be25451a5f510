"""Bad, odd and extreme audio files through every reader: paddle_soundcls.audio.load, the
datasets (check_files, __getitem__), Module.predict and the deployment Predictor.

Usable files must give the right waveform and finite scores; unusable ones an AudioError (or
DatasetError) naming the file and saying what is wrong.
"""
import csv
import os
import re
import time

import numpy as np
import pytest
import soundfile as sf

from helpers import small_module
from paddle_soundcls import audio, cli
from paddle_soundcls.audio import AudioError
from paddle_soundcls.datasets import AudioFolder, CSVDataset, DatasetError
from paddle_soundcls.deploy import Predictor
from paddle_soundcls.export import export_static
from paddle_soundcls.training.trainer import Trainer

TARGET = 32000
LABELS = ['bell', 'hum', 'rain']


def sine(freq, seconds, sr, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * sr))) / sr)).astype('float32')


def peak_hz(wave, sr):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1.0 / sr)[np.argmax(spectrum)]


def rms(wave):
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


# ----- usable files -----

def tone_file(sr=16000, subtype='PCM_16', channels=1, seconds=0.5):
    """A 440 Hz tone in the first channel, silence in the others; the format follows the file name."""
    def write(path):
        wave = sine(440, seconds, sr)
        data = wave if channels == 1 else np.stack([wave] + [np.zeros_like(wave)] * (channels - 1), axis=1)
        sf.write(path, data, sr, subtype=subtype)
        return len(wave), sr
    return write


def silence_file(path):
    sf.write(path, np.zeros(TARGET, 'float32'), TARGET, subtype='PCM_16')
    return TARGET, TARGET


def tiny_six_channel_file(path):
    """Fewer frames than channels: the file, not the array's shape, says which axis holds them."""
    sf.write(path, np.full((4, 6), 0.3, 'float32'), 16000, subtype='FLOAT')
    return 4, 16000


GOOD = {
    # name: (writer, tone Hz, RMS of the mono waveform, tolerance)
    'pcm_u8.wav': (tone_file(subtype='PCM_U8'), 440, 0.5 / 2 ** 0.5, 0.02),
    'pcm_16.wav': (tone_file(subtype='PCM_16'), 440, 0.5 / 2 ** 0.5, 0.01),
    'pcm_24.wav': (tone_file(subtype='PCM_24'), 440, 0.5 / 2 ** 0.5, 0.01),
    'pcm_32.wav': (tone_file(subtype='PCM_32'), 440, 0.5 / 2 ** 0.5, 0.01),
    'float.wav': (tone_file(subtype='FLOAT'), 440, 0.5 / 2 ** 0.5, 0.01),
    'double.wav': (tone_file(subtype='DOUBLE'), 440, 0.5 / 2 ** 0.5, 0.01),
    'flac_16.flac': (tone_file(subtype='PCM_16'), 440, 0.5 / 2 ** 0.5, 0.01),
    'flac_24.flac': (tone_file(subtype='PCM_24'), 440, 0.5 / 2 ** 0.5, 0.01),
    'vorbis.ogg': (tone_file(subtype='VORBIS'), 440, 0.5 / 2 ** 0.5, 0.05),
    # Channels are averaged: one channel holds the tone, the others silence.
    'stereo.wav': (tone_file(channels=2), 440, 0.5 / 2 ** 0.5 / 2, 0.01),
    'six_channels.wav': (tone_file(channels=6), 440, 0.5 / 2 ** 0.5 / 6, 0.01),
    'six_channels_4_frames.wav': (tiny_six_channel_file, None, None, None),
    'rate_8000.wav': (tone_file(sr=8000), 440, 0.5 / 2 ** 0.5, 0.01),
    'rate_16000.wav': (tone_file(sr=16000), 440, 0.5 / 2 ** 0.5, 0.01),
    'rate_22050.wav': (tone_file(sr=22050), 440, 0.5 / 2 ** 0.5, 0.01),
    'rate_44100.wav': (tone_file(sr=44100), 440, 0.5 / 2 ** 0.5, 0.01),
    'rate_48000.wav': (tone_file(sr=48000), 440, 0.5 / 2 ** 0.5, 0.01),
    'rate_96000.wav': (tone_file(sr=96000), 440, 0.5 / 2 ** 0.5, 0.01),
    'ten_ms.wav': (tone_file(sr=44100, seconds=0.01), None, 0.5 / 2 ** 0.5, 0.05),
    'silence.wav': (silence_file, None, 0.0, 0.0),
}


def wav_bytes(wave, sr, subtype='PCM_16'):
    import io
    buffer = io.BytesIO()
    sf.write(buffer, wave, sr, subtype=subtype, format='WAV')
    return buffer.getvalue()


def raw_writer(data):
    def write(path):
        with open(path, 'wb') as f:
            f.write(data() if callable(data) else data)
    return write


def float_writer(values):
    def write(path):
        sf.write(path, np.asarray(values, 'float32'), 16000, subtype='FLOAT')
    return write


VALID = wav_bytes(sine(440, 0.5, 16000), 16000)
PNG = (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00\x90\x91h6'
       + bytes(range(256)) * 4)
BAD = {
    # name: (writer, what the message must say)
    'empty.wav': (raw_writer(b''), 'empty file'),
    'zero_frames.wav': (raw_writer(wav_bytes(np.zeros(0, 'float32'), 16000)), 'no audio frames'),
    'header_cut.wav': (raw_writer(VALID[:30]), 'not readable as audio'),
    'header_only.wav': (raw_writer(VALID[:44]), 'no audio frames'),
    'data_cut.wav': (raw_writer(VALID[:len(VALID) // 2]), 'truncated'),
    'text.wav': (raw_writer(b'label,path\ndog,dog.wav\n' * 20), 'not readable as audio'),
    'image.wav': (raw_writer(PNG), 'not readable as audio'),
    'nan.wav': (float_writer([0.1, np.nan, -0.2] * 2000), 'NaN or Inf'),
    'inf.wav': (float_writer([0.1, np.inf, -0.2] * 2000), 'NaN or Inf'),
    'huge.wav': (float_writer([1e30, -1e30] * 3000), 'not audio'),
    'rate_1_hz.wav': (raw_writer(VALID[:24] + (1).to_bytes(4, 'little') + (2).to_bytes(4, 'little') + VALID[32:]),
                      'sample rate of 1 Hz'),
}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('audio_cases')
    good, bad = {}, {}
    for name, (write, *_rest) in GOOD.items():
        path = str(root / 'good' / name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        frames, sr = write(path)
        good[name] = (path, frames, sr)
    for name, (write, _) in BAD.items():
        path = str(root / 'bad' / name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write(path)
        bad[name] = path
    return good, bad


@pytest.fixture(scope='module')
def module():
    return small_module(label_map=LABELS)


@pytest.fixture(scope='module')
def predictor(module, tmp_path_factory):
    out = tmp_path_factory.mktemp('audio_export') / 'export'
    export_static(module, out, opset=13)
    return Predictor(out)


@pytest.mark.parametrize('name', list(GOOD))
def test_usable_file_loads_as_the_right_waveform(files, name):
    path, frames, sr = files[0][name]
    _, freq, expected_rms, tol = GOOD[name]
    wave = audio.load(path, None, TARGET)
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.all(np.isfinite(wave))
    assert abs(len(wave) - frames * TARGET / sr) <= 1
    if freq is not None:
        assert abs(peak_hz(wave, TARGET) - freq) < 4
    if expected_rms is not None:
        # The ends of a resampled clip lose a few samples of filter ringing: compare the middle.
        middle = wave[len(wave) // 10: -len(wave) // 10] if len(wave) > 100 else wave
        assert rms(middle) == pytest.approx(expected_rms, abs=tol)


def check_scores(results, labels=LABELS):
    for result in results:
        assert sorted(result) == sorted(labels)
        values = np.array(list(result.values()))
        assert np.all(np.isfinite(values)) and np.all(values >= 0)
        assert values.sum() == pytest.approx(1.0, abs=1e-4)
        assert list(values) == sorted(values, reverse=True)


def test_usable_files_predict_finite_scores_everywhere(files, module, predictor):
    paths = [path for path, _, _ in files[0].values()]
    fast = module.predict(paths, batch_size=8)                       # onnxruntime engine (4+ inputs)
    dygraph = module.predict(paths[:3], batch_size=2, engine='dygraph')
    deployed = predictor.predict(paths, batch_size=8)
    assert len(fast) == len(deployed) == len(paths) and len(dygraph) == 3
    for results in (fast, dygraph, deployed):
        check_scores(results)
    for a, b in list(zip(fast, deployed)) + list(zip(dygraph, fast)):
        assert max(abs(a[k] - b[k]) for k in a) < 1e-4


def test_usable_files_pass_the_dataset_checks(files, tmp_path):
    good = files[0]
    csv_path = tmp_path / 'clips.csv'
    with open(csv_path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['path', 'label'])
        for i, (path, _, _) in enumerate(good.values()):
            writer.writerow([path, LABELS[i % 3]])
    for mode in ('train', 'dev'):
        ds = CSVDataset(csv_path, mode=mode, duration=0.5)
        assert ds.check_files() == []
        for i in range(len(ds)):
            wave, label = ds[i]
            assert wave.shape == (TARGET // 2,) and wave.dtype == np.float32 and np.all(np.isfinite(wave))


@pytest.mark.parametrize('name', list(BAD))
def test_unusable_file_is_named_by_every_reader(files, module, predictor, name):
    path = files[1][name]
    what = BAD[name][1]
    for read in (lambda: audio.load(path, None, TARGET), lambda: module.predict([path]),
                 lambda: predictor.predict([path])):
        with pytest.raises(AudioError) as info:
            read()
        assert path in str(info.value)
    with pytest.raises(AudioError) as info:
        audio.load(path, None, TARGET)
    assert what in str(info.value)


@pytest.mark.parametrize('name', list(BAD))
def test_unusable_file_in_a_dataset(files, tmp_path, name):
    path = files[1][name]
    good = files[0]['pcm_16.wav'][0]
    csv_path = tmp_path / 'clips.csv'
    csv_path.write_text(f'path,label\n{good},bell\n{path},hum\n')
    ds = CSVDataset(csv_path, mode='dev', duration=0.5)
    with pytest.raises(AudioError, match=re.escape(path)):  # reading it, e.g. without check_files
        ds[1]
    with pytest.raises(DatasetError) as info:
        ds.check_files()
    message = str(info.value)
    assert '1 of 2 audio files cannot be used' in message and path in message and BAD[name][1] in message
    with pytest.warns(UserWarning, match='leaving out 1'):
        problems = ds.check_files(skip_bad=True)
    assert [p for p, _ in problems] == [path] and BAD[name][1] in problems[0][1]
    assert [p for p, _ in ds.items] == [good]


def test_a_path_that_does_not_exist(tmp_path, module, predictor):
    path = str(tmp_path / 'nowhere' / 'clip.wav')
    for read in (lambda: audio.load(path, None, TARGET), lambda: module.predict([path]),
                 lambda: predictor.predict([path])):
        with pytest.raises(AudioError, match=re.escape(f'not found: {path}')):
            read()


def test_silence_gives_finite_scores(files, module, predictor):
    path = files[0]['silence.wav'][0]
    zeros = np.zeros(TARGET, 'float32')
    results = (module.predict([path], engine='dygraph') + module.predict([zeros] * 4, sample_rate=TARGET)
               + predictor.predict([path, zeros], sample_rate=TARGET))
    check_scores(results)
    first = results[0]
    for other in results[1:]:
        assert max(abs(first[k] - other[k]) for k in first) < 1e-4


def test_numpy_sample_rates_that_are_not_audio(module):
    for rate in (1, 999, 10 ** 7):
        with pytest.raises(AudioError, match=f'sample_rate is {rate} Hz'):
            module.predict([np.zeros(TARGET, 'float32')], sample_rate=rate)


def test_odd_sample_rate_from_a_header_loads_quickly(tmp_path):
    """44101 Hz needs a filter of 1.4 M taps for the exact ratio: the nearest small ratio is used."""
    path = str(tmp_path / 'odd.wav')
    sf.write(path, sine(440, 0.5, 44101), 44101)
    start = time.monotonic()
    wave = audio.load(path, None, TARGET)
    assert time.monotonic() - start < 2
    assert abs(len(wave) - 0.5 * TARGET) <= 2
    assert abs(peak_hz(wave, TARGET) - 440) < 4


def test_ten_minutes_through_windowed_predict(tmp_path, module):
    """Loaded, resampled and scored in about 10 s: one window of 1 s every 30 s."""
    sr = 44100
    wave = 0.01 * np.random.default_rng(0).standard_normal(600 * sr)
    path = str(tmp_path / 'ten_minutes.wav')
    sf.write(path, wave.astype('float32'), sr, subtype='PCM_16')
    result = module.predict([path], window=1.0, hop=30.0, batch_size=8)[0]
    timeline = result['timeline']
    assert len(timeline) == 21 and timeline[0]['start'] == 0 and timeline[-1]['end'] == pytest.approx(600.0)
    check_scores([result['scores']] + [w['scores'] for w in timeline])


# ----- folders and tables -----

def test_a_folder_with_no_audio(tmp_path, predictor):
    root = tmp_path / 'sounds'
    for name in ('dog', 'rain'):
        (root / name).mkdir(parents=True)
        (root / name / 'notes.txt').write_text('recorded on Monday')
    (root / 'rain' / 'clip.WAV.bak').write_bytes(VALID)
    with pytest.raises(DatasetError) as info:
        AudioFolder(root)
    assert str(root) in str(info.value) and 'no class folders with audio' in str(info.value)
    assert cli.main(['predict', predictor.model_dir, str(root)]) == 2


def test_cli_names_a_folder_without_audio(tmp_path, predictor, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert cli.main(['predict', predictor.model_dir, str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and 'no audio files' in err


def test_csv_labels_pointing_to_missing_files(files, tmp_path):
    good = files[0]['pcm_16.wav'][0]
    rows = [(good, 'bell'), ('gone/a.wav', 'hum'), ('gone/b.wav', 'rain'), (str(tmp_path / 'c.flac'), 'bell')]
    csv_path = tmp_path / 'labels.csv'
    with open(csv_path, 'w', newline='') as f:
        csv.writer(f).writerows([('path', 'label')] + rows)
    with pytest.raises(DatasetError) as info:
        CSVDataset(csv_path)
    message = str(info.value)
    assert '3 of 4 audio files listed in' in message and str(csv_path) in message
    for path in (os.path.join(tmp_path, 'gone', 'a.wav'), os.path.join(tmp_path, 'gone', 'b.wav'),
                 str(tmp_path / 'c.flac')):
        assert path in message
    assert 'audio_root' in message


def test_a_class_with_a_single_clip(tmp_path, module):
    root = tmp_path / 'sounds'
    for label, count in (('bell', 4), ('hum', 4), ('rain', 1)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            sf.write(str(root / label / f'{i}.wav'), sine(200 + 300 * i, 0.5, 16000), 16000)
    train = AudioFolder(root, mode='train', duration=0.5, split=(0.25, 0))
    dev = AudioFolder(root, mode='dev', duration=0.5, split=(0.25, 0))
    assert train.labels == dev.labels == LABELS
    assert list(train.class_counts()) == [3, 3, 1] and list(dev.class_counts()) == [1, 1, 0]
    # Evaluating on a part where a class never occurs gives finite metrics.
    import paddle
    trainer = Trainer(module, paddle.optimizer.SGD(parameters=module.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'))
    result = trainer.evaluate(dev, batch_size=4)
    assert np.isfinite(result['loss'])
    for name in ('acc', 'macro_f1', 'top5'):
        assert np.isfinite(result['metrics'][name]), name
    module.eval()


@pytest.mark.parametrize('orig_sr, target_sr', [(16000, 32000), (44100, 32000), (768000, 32000), (1000, 32000),
                                                (44101, 32000), (32000, 16000)])
def test_a_stream_resampled_in_pieces_equals_the_whole_recording_resampled(orig_sr, target_sr):
    rng = np.random.default_rng(0)
    wave = sine(440.0, 0.7, orig_sr) + 0.01 * rng.standard_normal(int(round(0.7 * orig_sr))).astype('float32')
    whole = audio.resample(wave, orig_sr, target_sr)
    assert len(whole) == int(np.ceil(len(wave) * target_sr / orig_sr))
    assert abs(peak_hz(whole, target_sr) - 440.0) < 5.0
    resampler, pieces, pos = audio.Resampler(orig_sr, target_sr), [], 0
    while pos < len(wave):
        size = int(rng.integers(1, 3000))
        pieces.append(resampler.push(wave[pos:pos + size]))
        pos += size
        assert len(resampler.buffer) <= resampler.taps + 3000   # only the filter's span of input is kept
    pieces.append(resampler.flush())
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_resampling_from_the_highest_rate_takes_little_memory():
    import tracemalloc
    wave = sine(440.0, 1.0, audio.MAX_SAMPLE_RATE)
    tracemalloc.start()
    try:
        audio.resample(wave, audio.MAX_SAMPLE_RATE, TARGET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 769 filter taps per output: gathered for all outputs at once, 0.3 GB for one second.
    assert peak < 40e6, peak
