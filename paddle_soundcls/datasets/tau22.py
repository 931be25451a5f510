"""TAU Urban Acoustic Scenes 2022 Mobile (DCASE 2022-2024 task 1): 1-s clips of ten acoustic
scenes recorded with several devices, in the development set's layout; and a small generated
set in the same layout.

The 1-s clips are cut from 10-s recordings: `airport-lisbon-1000-40000-3-a.wav` is slice 3 of
segment 40000 at location lisbon-1000, recorded with device a. Devices a, b and c are real;
s1-s6 are simulated from device a, and s4-s6 appear only in the test split.
"""
import csv
import json
import math
import os
import re
import warnings

import numpy as np
import soundfile as sf

from .. import audio, validate
from ..fileio import replace_dir
from .base import (DEFAULT_SAMPLE_RATE, AudioDataset, DatasetError, check_dir, check_exists, check_int, check_mode,
                   list_problems)

# The ten scene classes, in index order: sorted, as the DCASE code's LabelEncoder orders them.
SCENES = ('airport', 'bus', 'metro', 'metro_station', 'park', 'public_square', 'shopping_mall',
          'street_pedestrian', 'street_traffic', 'tram')
DEVICES = ('a', 'b', 'c', 's1', 's2', 's3', 's4', 's5', 's6')
UNSEEN_DEVICES = ('s4', 's5', 's6')   # in the test split only
SPLITS = ('train', 'test', 'all')
SUBSETS = (5, 10, 25, 50, 100)        # the DCASE 2024 development-train subsets, in percent
SLICES_PER_RECORDING = 10
CLIP_SECONDS = 1.0
META = 'meta.csv'
FOLDER = 'TAU-urban-acoustic-scenes-2022-mobile-development'   # what the download's zips unpack to
SETUP_DIR = 'evaluation_setup'
FOLD_FILES = {'train': 'fold1_train.csv', 'test': 'fold1_evaluate.csv'}
SUBSET_DIR = 'split_setup'            # where the DCASE 2024 baseline puts split{N}.csv and test.csv
SUBSET_TEST = 'test.csv'
META_COLUMNS = ('filename', 'scene_label', 'identifier', 'source_label')
LAYOUT = ('TAU-urban-acoustic-scenes-2022-mobile-development/\n'
          '  meta.csv   tab-separated columns filename, scene_label, identifier, source_label\n'
          '             (audio/airport-lisbon-1000-40000-0-a.wav, airport, lisbon-1000, a)\n'
          '  audio/<scene>-<city>-<location>-<segment>-<slice>-<device>.wav   (1-s clips)\n'
          '  evaluation_setup/fold1_train.csv, fold1_evaluate.csv   tab-separated: filename, scene_label\n'
          '  split_setup/split5.csv ... split100.csv, test.csv   (DCASE 2024 subsets, for subset=; '
          'or give split_dir=)')
# <recording>-<slice>-<device>.wav, where <recording> is <scene>-<city>-<location>-<segment>.
CLIP_NAME = re.compile(r'^(?P<recording>.+)-(?P<slice>\d+)-(?P<device>[A-Za-z0-9]+)\.wav$')


def device_order(names):
    """Device names sorted with their numbers as numbers: a, b, c, s1, s2, ..., s10."""
    return tuple(sorted(set(names), key=lambda name: [int(part) if part.isdigit() else part
                                                       for part in re.split(r'(\d+)', name)]))


def read_table(path, required, what):
    """[(line, row dict)] of a tab-separated file with a header; each column in `required` must be there."""
    if not os.path.isfile(path):
        raise DatasetError(f'{what}: no such file: {path}. Expected the TAU layout:\n{LAYOUT}')
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f, delimiter='\t')
            columns = [(name or '').strip() for name in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f'cannot read {path}: {exc}') from None
    missing = [name for name in required if name not in columns]
    if missing:
        hint = ''
        if len(columns) == 1 and ',' in columns[0]:
            hint = ' (it looks comma-separated: the TAU files are tab-separated)'
        raise DatasetError(f'{path} has no column {", ".join(map(repr, missing))}; its columns are {columns}{hint}')
    if not rows:
        raise DatasetError(f'{path} lists no clips')
    for line, row in rows:
        for name in required:
            row[name] = (row.get(name) or '').strip()
            if not row[name]:
                raise DatasetError(f'{path}, line {line}: the {name} column is empty')
    return rows


def read_meta(path):
    """meta.csv -> {filename: {'scene', 'identifier', 'device', 'line'}}, in file order."""
    clips = {}
    for line, row in read_table(path, META_COLUMNS, 'root'):
        name = row['filename']
        if name in clips:
            raise DatasetError(f'{path}, line {line}: {name} is listed twice (first on line {clips[name]["line"]})')
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise DatasetError(f'{path}, line {line}: filename {name!r} is outside the dataset folder; TAU names '
                               f'its clips audio/<name>.wav, relative to the folder of meta.csv')
        parsed = CLIP_NAME.match(os.path.basename(name))
        if parsed and parsed['device'] != row['source_label']:
            raise DatasetError(f'{path}, line {line}: source_label is {row["source_label"]!r} but the file name '
                               f'{name} says device {parsed["device"]!r}')
        clips[name] = {'scene': row['scene_label'], 'identifier': row['identifier'],
                       'device': row['source_label'], 'line': line}
    return clips


def read_split(path, meta, meta_path, what='split file'):
    """The file names a split file lists (in its order, once each), checked against meta.csv."""
    rows = read_table(path, ['filename'], what)
    names, unknown = {}, []
    for line, row in rows:
        name = row['filename']
        clip = meta.get(name)
        if clip is None:
            unknown.append((f'line {line}', f'{name} is not in {meta_path}'))
            continue
        scene = (row.get('scene_label') or '').strip()
        if scene and scene != clip['scene']:
            raise DatasetError(f'{path}, line {line}: {name} has scene_label {scene!r}, but {meta_path} '
                               f'(line {clip["line"]}) says {clip["scene"]!r}')
        names.setdefault(name, line)
    if unknown:
        raise DatasetError(f'{len(unknown)} of the {len(rows)} clips listed in {path} are not in meta.csv:\n'
                           f'{list_problems(unknown)}\nUse the split files that came with this copy of the data.')
    return list(names)


class TAU22(AudioDataset):
    """TAU Urban Acoustic Scenes 2022 Mobile, development set, in its own layout.

    Args:
        root: the folder holding meta.csv, audio/ and evaluation_setup/ (see LAYOUT), or the
            folder holding that one (TAU-urban-acoustic-scenes-2022-mobile-development/).
        split: 'train' (evaluation_setup/fold1_train.csv), 'test' (fold1_evaluate.csv) or
            'all' (every clip in meta.csv).
        mode: 'train' (random crops) or 'dev'/'test' (centre crops); None: 'train' for the
            train split, 'test' otherwise.
        subset: None for the DCASE 2022 setup above, or 5, 10, 25, 50, 100: the DCASE 2024
            development-train subsets (split{subset}.csv for split='train', test.csv for
            split='test').
        split_dir: the folder holding split5.csv ... split100.csv and test.csv (None:
            root/split_setup); only with `subset`.
        reassemble: join the 1-s clips of each 10-s recording (same location, segment and
            device) in slice order. Each item is then one recording: in train mode a random 1-s
            window anywhere in the 10 s (the DCASE 2022 teachers' crop), in other modes the
            whole 10 s. A recording whose slices 0-9 are not all in the split is left out, with
            one warning naming each.
        sample_rate: rate of the returned waveforms (None: 32000); the clips are 44.1 kHz.
        duration: length of the returned waveforms in seconds; None: 1 s, or 10 s for
            reassembled recordings outside train mode.
        seed: seed of the random training crops.
        cache: decode and resample each file once and keep the result on disk (see AudioDataset).

    Class names come from meta.csv's scene_label, sorted (the ten TAU scenes for the real
    data), the same indices in every split. Besides items and labels:
        devices: the device (source_label) of each item, in item order.
        seen_devices: the devices of the training split (of `subset`, if given), sorted,
            e.g. ('a', 'b', 'c', 's1', 's2', 's3'); the others are unseen in training.
        device_names: every device in meta.csv, sorted.
        recordings: with reassemble, the slice files of each item, in slice order.
    """

    def __init__(self, root, split='train', mode=None, subset=None, split_dir=None, reassemble=False,
                 sample_rate=None, duration=None, seed=0, cache=False):
        root = check_dir('root', root, f'Point it at the unpacked development set:\n{LAYOUT}')
        if not os.path.isfile(os.path.join(root, META)) and os.path.isfile(os.path.join(root, FOLDER, META)):
            root = os.path.join(root, FOLDER)   # the folder the zips were unpacked in
        split = validate.one_of('split', split, SPLITS, error=DatasetError)
        mode = check_mode(mode if mode is not None else ('train' if split == 'train' else 'test'))
        self.reassemble = validate.flag('reassemble', reassemble, error=DatasetError)
        if subset is not None:
            subset = validate.one_of('subset', subset, SUBSETS, error=DatasetError,
                                     hint='percent of the DCASE 2024 development-train set; None for DCASE 2022')
            if split == 'all':
                raise DatasetError("subset chooses the DCASE 2024 train and test files: give split='train' or "
                                   "'test' with it, or subset=None for split='all'")
            split_dir = check_dir('split_dir', os.path.join(root, SUBSET_DIR) if split_dir is None else split_dir,
                                  'It should hold split5.csv ... split100.csv and test.csv of the DCASE 2024 '
                                  'task 1 baseline (github.com/CPJKU/dcase2024_task1_baseline, release "files").')
        elif split_dir is not None:
            raise DatasetError('split_dir is where the DCASE 2024 subset files are: give subset= (5, 10, 25, 50 '
                               'or 100) with it, or leave split_dir out')
        meta_path = os.path.join(root, META)
        meta = read_meta(meta_path)

        def split_file(part):
            if subset is None:
                return os.path.join(root, SETUP_DIR, FOLD_FILES[part])
            return os.path.join(split_dir, f'split{subset}.csv' if part == 'train' else SUBSET_TEST)

        train_names = read_split(split_file('train'), meta, meta_path,
                                 'split file' if split == 'train' else 'the training split (for seen_devices)')
        if split == 'train':
            names, source = train_names, split_file('train')
        elif split == 'test':
            names, source = read_split(split_file('test'), meta, meta_path), split_file('test')
        else:
            names, source = list(meta), meta_path
        chosen = set(names)
        names = [name for name in meta if name in chosen]   # meta.csv's order, as the DCASE code keeps it

        labels = sorted({clip['scene'] for clip in meta.values()})
        index = {label: i for i, label in enumerate(labels)}
        clips = [(os.path.join(root, name), index[meta[name]['scene']]) for name in names]
        check_exists(clips, source, f'Expected the TAU layout:\n{LAYOUT}')
        self.root, self.split, self.subset, self.split_file = root, split, subset, source
        self.seen_devices = device_order(meta[name]['device'] for name in train_names)
        self.device_names = device_order(clip['device'] for clip in meta.values())
        devices = [meta[name]['device'] for name in names]
        if duration is None:
            duration = CLIP_SECONDS * (SLICES_PER_RECORDING if self.reassemble and mode != 'train' else 1)
        if not self.reassemble:
            self.recordings = None
            super().__init__(clips, labels, mode=mode, sample_rate=sample_rate, duration=duration, seed=seed,
                             cache=cache)
            self.devices = devices
            return
        items, self.recordings, self.devices = self._reassemble(names, clips, devices, meta, meta_path, source)
        # The slice files are read (and cached) by a plain dataset of clips at their own rate; this
        # one joins them and resamples the whole recording, as the recordings were cut: slices
        # resampled one by one would click at each of the nine joins.
        slices = [(path, target) for (_, target), paths in zip(items, self.recordings) for path in paths]
        self._slice_rate = _file_rate(slices[0][0], sample_rate or DEFAULT_SAMPLE_RATE)
        self._clips = AudioDataset(slices, labels, mode='test', sample_rate=self._slice_rate, duration=CLIP_SECONDS,
                                   seed=seed, cache=cache)
        self._index_clips()
        super().__init__(items, labels, mode=mode, sample_rate=sample_rate, duration=duration, seed=seed)
        self.cache = self._clips.cache

    @staticmethod
    def _reassemble(names, clips, devices, meta, meta_path, source):
        """(items, [(slice paths in slice order)], devices) of the complete 10-s recordings."""
        groups = {}
        for name, clip, device in zip(names, clips, devices):
            parsed = CLIP_NAME.match(os.path.basename(name))
            if parsed is None:
                raise DatasetError(f'{meta_path}, line {meta[name]["line"]}: cannot reassemble {name}: the name is '
                                   f'not <scene>-<city>-<location>-<segment>-<slice>-<device>.wav')
            key = (os.path.dirname(clip[0]), parsed['recording'], device)
            groups.setdefault(key, []).append((int(parsed['slice']), name, clip))
        items, recordings, kept_devices, incomplete = [], [], [], []
        for (folder, recording, device), members in groups.items():
            members.sort(key=lambda member: member[0])
            scenes = {clip[1] for _, _, clip in members}
            if len(scenes) > 1:
                raise DatasetError(f'{meta_path}: the slices of recording {recording}-{device} have different '
                                   f'scene labels')
            slices = [number for number, _, _ in members]
            if slices != list(range(SLICES_PER_RECORDING)):
                missing = sorted(set(range(SLICES_PER_RECORDING)) - set(slices))
                extra = sorted({n for n in slices if n >= SLICES_PER_RECORDING or slices.count(n) > 1})
                problems = ([f'slices {", ".join(map(str, missing))} missing'] if missing else []) + \
                           ([f'unexpected slices {", ".join(map(str, extra))}'] if extra else [])
                incomplete.append((f'{recording}-{device}', '; '.join(problems)))
                continue
            items.append((os.path.join(folder, f'{recording}-{device}.wav'), members[0][2][1]))
            recordings.append(tuple(clip[0] for _, _, clip in members))
            kept_devices.append(device)
        if incomplete:
            warnings.warn(f'leaving out {len(incomplete)} of the {len(groups)} recordings of {source}: a 10-s '
                          f'recording needs its slices 0-{SLICES_PER_RECORDING - 1}:\n{list_problems(incomplete)}',
                          stacklevel=3)
        if not items:
            raise DatasetError(f'{source}: no recording has all its {SLICES_PER_RECORDING} slices, nothing to '
                               f'reassemble; use reassemble=False for the 1-s clips')
        return items, recordings, kept_devices

    def _index_clips(self):
        self._clip_index = {path: j for j, (path, _) in enumerate(self._clips.items)}

    def waveform(self, index):
        """Item `index` whole: a 1-s clip, or with reassemble its recording's slices joined in order."""
        if not self.reassemble:
            return super().waveform(index)
        paths = self.recordings[self._index(index)]
        joined = np.concatenate([self._clips.waveform(self._clip_index[path]) for path in paths])
        return audio.resample(joined, self._slice_rate, self.sample_rate)

    def check_files(self, skip_bad=False, skip_hint='check_files(skip_bad=True)'):
        """As AudioDataset.check_files; with reassemble, every slice is checked and a recording with
        an unusable slice is left out (skip_bad) as a whole. `devices` stays in item order."""
        if not self.reassemble:
            before = self.items
            problems = super().check_files(skip_bad=skip_bad, skip_hint=skip_hint)
            if problems:
                bad = {path for path, _ in problems}
                self.devices = [device for (path, _), device in zip(before, self.devices) if path not in bad]
            return problems
        problems = self._clips.check_files(skip_bad=skip_bad, skip_hint=skip_hint)
        if problems:
            bad = {path for path, _ in problems}
            keep = [i for i, paths in enumerate(self.recordings) if not bad.intersection(paths)]
            if not keep:
                raise DatasetError(f'every recording of this dataset has an unusable slice:\n'
                                   f'{list_problems(problems)}')
            warnings.warn(f'leaving out {len(self.items) - len(keep)} recordings with an unusable slice',
                          stacklevel=2)
            self.items = [self.items[i] for i in keep]
            self.recordings = [self.recordings[i] for i in keep]
            self.devices = [self.devices[i] for i in keep]
            self._index_clips()
        return problems

    def __repr__(self):
        return (f'TAU22(split={self.split!r}, subset={self.subset}, mode={self.mode!r}, '
                f'{"recordings" if self.reassemble else "clips"}={len(self)}, classes={self.num_classes}, '
                f'devices={list(device_order(self.devices))}, sample_rate={self.sample_rate}, '
                f'duration={self.duration:g})')


def _file_rate(path, default):
    """The sample rate of an audio file, or `default` where it cannot be read (check_files names
    unreadable files later)."""
    try:
        return int(sf.info(path).samplerate)
    except (RuntimeError, OSError, sf.LibsndfileError):
        return default


# ----- the generated demo set -----

DEMO_MARKER = 'tau22_demo.json'
DEMO_VERSION = 1
DEMO_SUBTYPE = 'PCM_16'   # the codec's few levels and the quiet device noise need more than 8 bits
CITIES = ('barcelona', 'helsinki', 'lisbon', 'london', 'lyon', 'milan', 'paris', 'prague', 'stockholm', 'vienna')
TRAIN_DEVICES = ('b', 'c', 's1', 's2', 's3')   # besides a, the devices of the train split
# Most distinct textures first: scenes=N takes the first N.
DEMO_SCENES = ('park', 'bus', 'street_traffic', 'shopping_mall', 'metro', 'airport', 'public_square', 'tram',
               'metro_station', 'street_pedestrian')
# Per scene: colour (power falls as 1/f^colour: 0 white, 1 pink, 2 brown), hum (fundamental range in
# Hz, or None), tones (low Hz, high Hz, per second: chimes, music, screech), clicks (per second:
# footsteps, rail joints), chirps (bird-like sweeps per second), swell (depth of slow loudness changes).
TEXTURES = {
    'airport': dict(colour=1.0, hum=None, tones=(600, 1200, 0.3), clicks=1.0, chirps=0.0, swell=0.1),
    'bus': dict(colour=2.0, hum=(60, 110), tones=None, clicks=0.5, chirps=0.0, swell=0.3),
    'metro': dict(colour=1.5, hum=(150, 250), tones=(2500, 4500, 0.5), clicks=2.0, chirps=0.0, swell=0.5),
    'metro_station': dict(colour=1.0, hum=(50, 60), tones=(400, 800, 0.2), clicks=3.0, chirps=0.0, swell=0.2),
    'park': dict(colour=0.5, hum=None, tones=None, clicks=0.2, chirps=2.0, swell=0.05),
    'public_square': dict(colour=1.0, hum=None, tones=None, clicks=4.0, chirps=0.5, swell=0.15),
    'shopping_mall': dict(colour=1.0, hum=None, tones=(300, 900, 1.5), clicks=1.5, chirps=0.0, swell=0.05),
    'street_pedestrian': dict(colour=1.2, hum=None, tones=None, clicks=5.0, chirps=0.2, swell=0.2),
    'street_traffic': dict(colour=1.8, hum=(30, 60), tones=None, clicks=0.3, chirps=0.0, swell=0.8),
    'tram': dict(colour=1.6, hum=(40, 60), tones=(1500, 2500, 0.1), clicks=1.0, chirps=0.0, swell=0.4),
}


def _coloured_noise(n, sr, colour, rng):
    spectrum = np.fft.rfft(rng.standard_normal(n)) / np.maximum(np.fft.rfftfreq(n, 1.0 / sr), 20.0) ** (colour / 2)
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def _events(wave, sr, rate, rng, make):
    """Add make(rng) sounds at Poisson times, `rate` per second."""
    for _ in range(rng.poisson(rate * len(wave) / sr)):
        sound = make(rng)
        start = int(rng.integers(0, max(1, len(wave) - len(sound))))
        end = min(len(wave), start + len(sound))
        wave[start:end] += sound[:end - start]


def scene_texture(scene, seconds, sr, rng):
    """A recording of `scene`'s synthetic texture (TEXTURES): float64, about 0.1 RMS."""
    recipe = TEXTURES[scene]
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    wave = _coloured_noise(n, sr, recipe['colour'] + rng.uniform(-0.2, 0.2), rng)
    if recipe['swell']:
        wave *= 1 + recipe['swell'] * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    if recipe['hum']:
        f0 = rng.uniform(*recipe['hum'])
        wave += rng.uniform(0.5, 1.0) * sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
                                            for k in range(1, 7) if k * f0 < sr / 2)
    nyquist = sr / 2

    def tone(rng):
        low, high, _ = recipe['tones']
        m = int(sr * rng.uniform(0.2, 0.8))
        u = np.arange(m) / sr
        envelope = np.sin(np.pi * np.arange(m) / m)
        return rng.uniform(0.5, 1.5) * envelope * np.sin(2 * np.pi * min(rng.uniform(low, high), 0.9 * nyquist) * u)

    def click(rng):
        m = int(sr * rng.uniform(0.005, 0.02))
        return rng.uniform(1.0, 3.0) * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.2 * m))

    def chirp(rng):
        m = int(sr * rng.uniform(0.05, 0.15))
        u = np.arange(m) / sr
        f0 = min(rng.uniform(2500, 4500), 0.6 * nyquist)
        f1 = min(f0 * rng.uniform(1.2, 1.6), 0.9 * nyquist)
        phase = 2 * np.pi * (f0 * u + (f1 - f0) * u ** 2 / (2 * u[-1]))
        return rng.uniform(0.5, 1.5) * np.sin(np.pi * np.arange(m) / m) * np.sin(phase)

    if recipe['tones']:
        _events(wave, sr, recipe['tones'][2], rng, tone)
    _events(wave, sr, recipe['clicks'], rng, click)
    _events(wave, sr, recipe['chirps'], rng, chirp)
    return wave * (0.1 * rng.uniform(0.6, 1.4) / (wave.std() + 1e-12))


def demo_devices(seed, sample_rate):
    """The simulated devices of the demo set: {device: settings}, fixed by the seed.

    a is the clean reference (None). Every other device applies, in this order: its impulse
    response (a direct path and a few early reflections: ir_delays_ms, ir_gains), a soft
    saturation (tanh with `drive`, like a compressor), its self-noise (noise_db below the signal),
    a band limit (8th-order Butterworth magnitude high-pass at low_hz and low-pass at high_hz),
    its `gain`, and a mu-law codec of `codec_bits` bits.
    """
    devices = {'a': None}
    for number, device in enumerate(DEVICES[1:], start=1):
        rng = np.random.default_rng((seed, 7919, number))
        reflections = int(rng.integers(2, 5))
        devices[device] = {
            'ir_delays_ms': [0.0] + sorted(round(float(d), 3) for d in rng.uniform(0.3, 6.0, reflections)),
            'ir_gains': [1.0] + [round(float(g), 3) for g in rng.uniform(0.1, 0.5, reflections)
                                 * rng.choice([-1, 1], reflections)],
            'drive': round(float(rng.uniform(1.0, 3.0)), 3),
            'noise_db': round(float(rng.uniform(-45, -32)), 2),
            'low_hz': round(float(rng.uniform(80, 400)), 1),
            'high_hz': round(float(sample_rate * rng.uniform(0.12, 0.3)), 1),
            'gain': round(float(rng.uniform(0.5, 1.0)), 3),
            'codec_bits': int(rng.integers(7, 9)),
        }
    return devices


def impulse_response(settings, sr):
    """The device's impulse response at `sr`: its taps, unit energy."""
    delays = np.round(np.asarray(settings['ir_delays_ms']) * sr / 1000).astype(int)
    ir = np.zeros(delays.max() + 1)
    np.add.at(ir, delays, settings['ir_gains'])
    return ir / np.sqrt(np.sum(ir ** 2))


def band_response(freqs, low_hz, high_hz, order=8):
    """The magnitude of the band limit: Butterworth high-pass at low_hz times low-pass at high_hz."""
    freqs = np.maximum(np.asarray(freqs, dtype=np.float64), 1e-6)
    return 1 / np.sqrt((1 + (low_hz / freqs) ** (2 * order)) * (1 + (freqs / high_hz) ** (2 * order)))


def mu_law(wave, bits, mu=255.0):
    """Mu-law companding, quantised to 2**bits levels, and expanded back."""
    levels = 2 ** bits
    y = np.sign(wave) * np.log1p(mu * np.abs(np.clip(wave, -1, 1))) / np.log1p(mu)
    y = np.round((y + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def simulate_device(clean, settings, sr, rng):
    """What device `settings` (demo_devices) records of `clean`; None: the clean reference."""
    if settings is None:
        return clean
    n = len(clean)
    ir = impulse_response(settings, sr)
    wave = np.zeros(n)
    for delay in np.flatnonzero(ir):   # a few taps: shifted copies are faster than a full convolution
        wave[delay:] += ir[delay] * clean[:n - delay]
    wave = np.tanh(settings['drive'] * wave) / settings['drive']
    wave = wave + 10 ** (settings['noise_db'] / 20) * wave.std() * rng.standard_normal(n)
    spectrum = np.fft.rfft(wave) * band_response(np.fft.rfftfreq(n, 1.0 / sr), settings['low_hz'],
                                                 settings['high_hz'])
    wave = np.fft.irfft(spectrum, n) * settings['gain']
    return mu_law(wave, settings['codec_bits'])


def _check_scenes(scenes):
    if isinstance(scenes, int) and not isinstance(scenes, bool):
        return sorted(DEMO_SCENES[:check_int('scenes', scenes, 2, len(DEMO_SCENES))])
    if isinstance(scenes, str) or not isinstance(scenes, (list, tuple)) or len(scenes) < 2:
        raise DatasetError(f'scenes must be a count (2..{len(SCENES)}) or a list of at least two scene names '
                           f'from {list(SCENES)}, got {scenes!r}')
    if any(name not in SCENES for name in scenes) or len(set(scenes)) != len(scenes):
        raise DatasetError(f'scenes must be distinct names from {list(SCENES)}, got {list(scenes)}')
    return sorted(scenes)


def _write_table(path, header, rows):
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(header)
        writer.writerows(rows)


def _demo_complete(root, params):
    """True when `root` already holds the demo set made with these parameters."""
    try:
        with open(os.path.join(root, DEMO_MARKER), encoding='utf-8') as f:
            if json.load(f).get('settings') != params:
                return False
        with open(os.path.join(root, META), newline='', encoding='utf-8') as f:
            names = [row['filename'] for row in csv.DictReader(f, delimiter='\t')]
    except (OSError, ValueError, KeyError):
        return False
    setup = [os.path.join(SETUP_DIR, name) for name in ('fold1_train.csv', 'fold1_evaluate.csv', 'fold1_test.csv')]
    setup += [os.path.join(SUBSET_DIR, f'split{p}.csv') for p in SUBSETS] + [os.path.join(SUBSET_DIR, SUBSET_TEST)]
    return bool(names) and all(os.path.isfile(os.path.join(root, name)) for name in names + setup)


def make_tau22_demo(root, scenes=4, train_recordings=3, test_recordings=1, train_devices=2, sample_rate=32000,
                    seed=0):
    """Write a small generated dataset in the TAU Urban Acoustic Scenes 2022 Mobile layout; returns `root`.

    Each scene is a synthetic texture (TEXTURES: noise colour, hum, tones, clicks, chirps, swell),
    drawn anew for every 10-s recording and cut into ten 1-s clips named as TAU names them
    (audio/<scene>-<city>-<location>-<segment>-<slice>-<device>.wav). Every recording is at its
    own location; train and test locations are disjoint, as in TAU's fold 1. Device a records
    every recording clean; the other devices record the same sound through their simulation
    (demo_devices): in the train split `train_devices` of b, c, s1, s2, s3 (in turn) per recording,
    in the test split all nine devices, so s4-s6 appear in the test split only.

    Written: meta.csv, evaluation_setup/fold1_train.csv, fold1_evaluate.csv, fold1_test.csv,
    split_setup/split5.csv ... split100.csv (nested subsets of whole recordings, scene by scene,
    at least one recording of each scene) and test.csv (= fold1_evaluate.csv), and
    tau22_demo.json (the settings and the devices' parameters). 16-bit WAV. The same arguments
    give the same files; a folder that already holds the complete set for these arguments is
    reused as it is. Load it with TAU22(root, ...).

    The defaults (4 scenes, 720 clips, about 46 MB at 32 kHz) are written in a few seconds.

    Args:
        root: the folder to create (or one holding an earlier demo set).
        scenes: how many scenes (2..10; the most distinct textures first) or a list of TAU scene names.
        train_recordings: 10-s recordings per scene in the train split (device a; at least 1).
        test_recordings: 10-s recordings per scene in the test split (at least 1).
        train_devices: how many of the devices b, c, s1, s2, s3 also record each train recording (0..5).
        sample_rate: rate of the files, 16000..48000 Hz (32000: the models' rate; TAU itself is 44100).
        seed: the random variation of the sounds and the devices' parameters.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise DatasetError(f'root must be a folder path, got {root!r}')
    root = os.fspath(root)
    params = {'version': DEMO_VERSION, 'scenes': _check_scenes(scenes),
              'train_recordings': check_int('train_recordings', train_recordings, 1, 1000),
              'test_recordings': check_int('test_recordings', test_recordings, 1, 1000),
              'train_devices': check_int('train_devices', train_devices, 0, len(TRAIN_DEVICES)),
              'sample_rate': check_int('sample_rate', sample_rate, 16000, 48000),
              'seed': check_int('seed', seed, 0)}
    if _demo_complete(root, params):
        return root
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(os.path.join(root, DEMO_MARKER)):
        raise DatasetError(f'root: {root} already holds other files; give a new or empty folder for the demo set')
    sr, devices = params['sample_rate'], demo_devices(params['seed'], params['sample_rate'])

    def build(tmp):
        os.makedirs(os.path.join(tmp, 'audio'))
        meta, parts, train_turn = [], {'train': [], 'test': []}, 0
        recordings = {}   # scene -> [[train rows of one device's recording]]
        for scene_index, scene in enumerate(params['scenes']):
            recordings[scene] = []
            for k in range(params['train_recordings'] + params['test_recordings']):
                part = 'train' if k < params['train_recordings'] else 'test'
                if part == 'train':
                    others = [TRAIN_DEVICES[(train_turn * params['train_devices'] + j) % len(TRAIN_DEVICES)]
                              for j in range(params['train_devices'])]
                    train_turn += 1
                    recorded_by = ['a'] + sorted(set(others), key=DEVICES.index)
                else:
                    recorded_by = list(DEVICES)
                city = CITIES[(scene_index + k) % len(CITIES)]
                identifier = f'{city}-{100 * (scene_index + 1) + k}'
                segment = 1000 * (scene_index + 1) + 10 * k
                rng = np.random.default_rng((params['seed'], scene_index, k))
                clean = scene_texture(scene, SLICES_PER_RECORDING * CLIP_SECONDS, sr, rng)
                for device in recorded_by:
                    device_rng = np.random.default_rng((params['seed'], scene_index, k, DEVICES.index(device)))
                    wave = np.clip(simulate_device(clean, devices[device], sr, device_rng), -1, 1).astype(np.float32)
                    rows = []
                    for number, clip in enumerate(np.split(wave, SLICES_PER_RECORDING)):
                        name = f'audio/{scene}-{identifier}-{segment}-{number}-{device}.wav'
                        sf.write(os.path.join(tmp, name), clip, sr, subtype=DEMO_SUBTYPE)
                        meta.append([name, scene, identifier, device])
                        rows.append([name, scene])
                    parts[part].extend(rows)
                    if part == 'train':
                        recordings[scene].append(rows)
        _write_table(os.path.join(tmp, META), META_COLUMNS, meta)
        os.makedirs(os.path.join(tmp, SETUP_DIR))
        _write_table(os.path.join(tmp, SETUP_DIR, FOLD_FILES['train']), ('filename', 'scene_label'), parts['train'])
        _write_table(os.path.join(tmp, SETUP_DIR, FOLD_FILES['test']), ('filename', 'scene_label'), parts['test'])
        _write_table(os.path.join(tmp, SETUP_DIR, 'fold1_test.csv'), ('filename',),
                     [row[:1] for row in parts['test']])
        os.makedirs(os.path.join(tmp, SUBSET_DIR))
        order = {scene: np.random.default_rng((params['seed'], 104729, i)).permutation(len(recordings[scene]))
                 for i, scene in enumerate(params['scenes'])}
        for percent in SUBSETS:
            chosen = set()
            for scene, recs in recordings.items():
                count = max(1, math.floor(len(recs) * percent / 100 + 0.5))
                chosen.update(row[0] for j in order[scene][:count] for row in recs[j])
            _write_table(os.path.join(tmp, SUBSET_DIR, f'split{percent}.csv'), ('filename', 'scene_label'),
                         [row for row in parts['train'] if row[0] in chosen])
        _write_table(os.path.join(tmp, SUBSET_DIR, SUBSET_TEST), ('filename', 'scene_label'), parts['test'])
        with open(os.path.join(tmp, DEMO_MARKER), 'w', encoding='utf-8') as f:
            json.dump({'settings': params, 'devices': devices}, f, indent=2)

    # Built beside `root` and swapped in whole, so an interrupted run never leaves half a set.
    replace_dir(build, root)
    return root
