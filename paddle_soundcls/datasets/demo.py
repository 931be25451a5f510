"""A small synthetic dataset in the ESC-50 layout, to try the whole pipeline in minutes.

Each class is one family of synthetic sounds (a steady tone, an upward chirp, noise bursts,
...), varied at random in pitch, timing, length and loudness, over background noise of
random level, sometimes with a quiet sound of another class mixed in: learnable, but
not trivially.
"""
import csv
import json
import os

import numpy as np
import soundfile as sf

from .. import validate
from ..fileio import replace_dir
from .base import DatasetError, check_duration, check_int

NUM_FOLDS = 5
# 8-bit PCM: every WAV reader takes it, the lengths stay exact, and the default set
# (5 classes x 16 clips x 2 s at 32 kHz) is about 5 MB instead of 10 MB with 16 bits.
SUBTYPE = 'PCM_U8'
MARKER = 'demo.json'
VERSION = 1


def _envelope(n, sr, rng):
    """Attack / sustain / release envelope of n samples, 5-50 ms ramps."""
    env = np.ones(n)
    for side in (0, 1):
        ramp = min(n // 2, int(sr * rng.uniform(0.005, 0.05)))
        curve = np.linspace(0.0, 1.0, ramp)
        if side == 0:
            env[:ramp] *= curve
        else:
            env[n - ramp:] *= curve[::-1]
    return env


def _band_noise(n, sr, rng, low, high):
    """White noise kept between `low` and `high` Hz (FFT mask), unit peak."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    out = np.fft.irfft(spectrum, n)
    return out / (np.abs(out).max() + 1e-9)


def _tone(n, sr, rng):
    t = np.arange(n) / sr
    f0 = np.exp(rng.uniform(np.log(300), np.log(2000)))
    return (np.sin(2 * np.pi * f0 * t) + rng.uniform(0, 0.3) * np.sin(4 * np.pi * f0 * t)) * _envelope(n, sr, rng)


def _chirp(n, sr, rng):
    t = np.arange(n) / sr
    f0 = rng.uniform(300, 1000)
    rate = np.log(rng.uniform(2.0, 4.0)) / (n / sr)     # exponential sweep to 2-4x f0
    phase = 2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate
    return np.sin(phase) * _envelope(n, sr, rng)


def _noise_burst(n, sr, rng):
    centre = rng.uniform(1000, 6000)
    width = rng.uniform(300, 2000)
    return _band_noise(n, sr, rng, centre - width / 2, centre + width / 2) * _envelope(n, sr, rng)


def _clicks(n, sr, rng):
    out = np.zeros(n)
    period = sr / rng.uniform(4, 20)
    click_len = int(0.008 * sr)
    t = np.arange(click_len) / sr
    click = np.sin(2 * np.pi * rng.uniform(2000, 6000) * t) * np.exp(-t * rng.uniform(400, 1200))
    pos = rng.uniform(0, period)
    while pos < n - click_len:
        out[int(pos):int(pos) + click_len] += click * rng.uniform(0.6, 1.0)
        pos += period * rng.uniform(0.8, 1.2)  # jittered timing
    return out


def _hum(n, sr, rng):
    t = np.arange(n) / sr
    f0 = rng.uniform(50, 140)
    wave = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k ** rng.uniform(0.8, 1.5)
               for k in range(1, 9))
    wobble = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
    return wave * wobble * _envelope(n, sr, rng)


def _trill(n, sr, rng):
    t = np.arange(n) / sr
    fc, rate, depth = rng.uniform(1000, 3000), rng.uniform(15, 30), rng.uniform(0.05, 0.15)
    phase = 2 * np.pi * fc * t - depth * fc / rate * np.cos(2 * np.pi * rate * t)
    return np.sin(phase) * _envelope(n, sr, rng)


def _beeps(n, sr, rng):
    out = np.zeros(n)
    count = rng.integers(2, 7)
    f0 = rng.uniform(500, 3000)
    beep = int(sr * rng.uniform(0.05, 0.12))
    step = n // count
    t = np.arange(beep) / sr
    for i in range(count):
        if i * step + beep <= n:
            out[i * step:i * step + beep] = np.sin(2 * np.pi * f0 * t) * _envelope(beep, sr, rng)
    return out


def _buzz(n, sr, rng):
    t = np.arange(n) / sr
    f0 = rng.uniform(150, 400)
    harmonics = range(1, int(min(6000, 0.45 * sr) // f0))
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in harmonics) * _envelope(n, sr, rng)


def _drip(n, sr, rng):
    out = np.zeros(n)
    drop = min(n, int(0.06 * sr))
    t = np.arange(drop) / sr
    for _ in range(rng.integers(2, 6)):
        f0 = rng.uniform(600, 1200)
        sweep = 2 * np.pi * f0 * (t + rng.uniform(5, 15) * t ** 2)  # pitch rises, like a water drop
        start = rng.integers(0, max(1, n - drop))
        out[start:start + drop] += np.sin(sweep) * np.exp(-t * 60)
    return out


def _rumble(n, sr, rng):
    return _band_noise(n, sr, rng, 20, rng.uniform(150, 400)) * _envelope(n, sr, rng)


FAMILIES = (('tone', _tone), ('chirp', _chirp), ('noise_burst', _noise_burst), ('clicks', _clicks),
            ('hum', _hum), ('trill', _trill), ('beeps', _beeps), ('buzz', _buzz), ('drip', _drip),
            ('rumble', _rumble))


def _event(family, length, sr, rng):
    """A sound of `family` lasting 25-90 % of the clip, at a random place, unit peak."""
    n = int(length * rng.uniform(0.25, 0.9))
    sound = FAMILIES[family][1](n, sr, rng)
    sound = sound / (np.abs(sound).max() + 1e-9)
    out = np.zeros(length)
    start = rng.integers(0, length - n + 1)
    out[start:start + n] = sound
    return out


def make_clip(family, length, sr, rng, num_classes):
    """One clip of class `family`: the event, maybe a quiet other event, background noise."""
    wave = rng.uniform(0.2, 0.7) * _event(family, length, sr, rng)
    if rng.random() < 0.3:
        other = (family + rng.integers(1, num_classes)) % num_classes
        wave += rng.uniform(0.03, 0.1) * _event(other, length, sr, rng)
    background = rng.standard_normal(length)
    if rng.random() < 0.5:  # pink noise: power falling as 1/f, like most room and street noise
        spectrum = np.fft.rfft(background) / np.sqrt(np.maximum(np.fft.rfftfreq(length, 1.0 / sr), 20.0))
        background = np.fft.irfft(spectrum, length)
        background /= background.std() + 1e-9
    wave += rng.uniform(0.003, 0.03) * background
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _complete(root, params):
    """True when `root` already holds the demo set made with these parameters."""
    try:
        with open(os.path.join(root, 'meta', MARKER), encoding='utf-8') as f:
            if json.load(f) != params:
                return False
        with open(os.path.join(root, 'meta', 'esc50.csv'), newline='', encoding='utf-8') as f:
            names = [row['filename'] for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return False
    return (len(names) == params['num_classes'] * params['clips_per_class']
            and all(os.path.isfile(os.path.join(root, 'audio', name)) for name in names))


def make_demo_dataset(root, num_class=None, clips_per_class=16, seconds=2.0, sample_rate=32000, seed=0,
                      num_classes=None):
    """Write a synthetic dataset in the ESC-50 layout and return `root`.

    root/audio/<fold>-<source id>-A-<target>.wav and root/meta/esc50.csv (5 folds; clip i of
    each class is in fold i % 5 + 1). The same arguments give the same files; a folder that
    already holds the complete set for these arguments is reused as it is. Load it with
    `ESC50(data_dir=root)`.

    Args:
        root: the folder to create (or a folder holding an earlier demo set).
        num_class: 2..10 classes (default 5; num_classes is its deprecated name): tone, chirp,
            noise_burst, clicks, hum, trill, beeps, buzz, drip, rumble (the first num_class).
        clips_per_class: at least 5, so that every fold holds every class.
        seconds: clip length, 0.25..30.
        sample_rate: rate of the files, at least 16000 Hz.
        seed: the random variation of the sounds.
    """
    num_class = validate.renamed('num_classes', num_classes, 'num_class', num_class)
    num_class = 5 if num_class is None else num_class
    if not isinstance(root, (str, os.PathLike)):
        raise DatasetError(f'root must be a folder path, got {root!r}')
    root = os.fspath(root)
    params = {'version': VERSION, 'num_classes': check_int('num_class', num_class, 2, len(FAMILIES)),
              'clips_per_class': check_int('clips_per_class', clips_per_class, low=NUM_FOLDS),
              'seconds': check_duration(seconds), 'sample_rate': check_int('sample_rate', sample_rate, low=16000),
              'seed': check_int('seed', seed, low=0)}
    if not 0.25 <= params['seconds'] <= 30:
        raise DatasetError(f'seconds must be between 0.25 and 30 for the demo set, got {seconds}')
    if _complete(root, params):
        return root
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(os.path.join(root, 'meta', MARKER)):
        raise DatasetError(f'root: {root} already holds other files; give a new or empty folder for the demo set')

    def build(tmp):
        os.makedirs(os.path.join(tmp, 'audio'))
        os.makedirs(os.path.join(tmp, 'meta'))
        length = int(round(params['seconds'] * sample_rate))
        rows = []
        for target in range(num_class):
            for clip in range(clips_per_class):
                rng = np.random.default_rng((seed, target, clip))
                fold = clip % NUM_FOLDS + 1
                source = 100000 + 1000 * target + clip
                name = f'{fold}-{source}-A-{target}.wav'
                sf.write(os.path.join(tmp, 'audio', name), make_clip(target, length, sample_rate, rng, num_class),
                         sample_rate, subtype=SUBTYPE)
                rows.append([name, fold, target, FAMILIES[target][0], 'False', source, 'A'])
        rows.sort(key=lambda row: row[0])
        with open(os.path.join(tmp, 'meta', 'esc50.csv'), 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['filename', 'fold', 'target', 'category', 'esc10', 'src_file', 'take'])
            writer.writerows(rows)
        with open(os.path.join(tmp, 'meta', MARKER), 'w', encoding='utf-8') as f:
            json.dump(params, f)

    # Built beside `root` and swapped in whole, so an interrupted run never leaves half a set.
    replace_dir(build, root)
    return root
