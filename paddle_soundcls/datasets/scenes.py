"""Generated sound scenes with known event times, to test and measure sound event detection.

Each scene is background noise with short synthetic sounds placed at random onsets, often
overlapping. The sounds are the families of the demo dataset (tone, chirp, noise_burst,
clicks, ...), so a model fine-tuned on make_demo_dataset's classes can be scored here.
"""
import json
import numbers
import os

import numpy as np
import soundfile as sf

from .. import validate
from ..fileio import replace_dir
from .base import DatasetError, check_int
from .demo import FAMILIES
from .strong import read_strong_labels, write_strong_labels

AUDIO_DIR = 'audio'
LABELS_CSV = os.path.join('meta', 'events.csv')
# The scenes of each part of the split: meta/train_events.csv, meta/dev_events.csv, meta/test_events.csv.
SPLITS = ('train', 'dev', 'test')
MARKER = os.path.join('meta', 'scenes.json')
VERSION = 2
SUBTYPE = 'PCM_16'   # quiet backgrounds need more than the demo set's 8 bits
# An event starts at its first sample and ends after its last sample reaching this fraction of
# its peak: the fade-in and fade-out ramps and the silence around clicks do not count.
AUDIBLE_FRACTION = 0.01
# Two events of one class stay this far apart, so that each is a separate event to detect.
SAME_CLASS_GAP_SECONDS = 0.3
PLACEMENT_TRIES = 20
FAMILY_NAMES = tuple(name for name, _ in FAMILIES)


def _check_classes(classes):
    if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
        return list(FAMILY_NAMES[:check_int('classes', classes, 1, len(FAMILY_NAMES))])
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not classes:
        raise DatasetError(f'classes must be a count (1..{len(FAMILY_NAMES)}) or a list of sound families '
                           f'from {list(FAMILY_NAMES)}, got {classes!r}')
    unknown = [name for name in classes if name not in FAMILY_NAMES]
    if unknown or len(set(classes)) != len(classes):
        raise DatasetError(f'classes must be distinct names from {list(FAMILY_NAMES)}, got {list(classes)}')
    return list(classes)


def _check_range(name, value, low, high, integer):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DatasetError(f'{name} must be a (smallest, largest) pair, got {value!r}')
    if integer:
        lo, hi = (check_int(name, v, 0) for v in value)
    else:
        lo, hi = (validate.number(name, v, unit='seconds', hint='each of the pair', error=DatasetError)
                  for v in value)
    if not low <= lo <= hi <= high:
        raise DatasetError(f'{name} must be a (smallest, largest) pair with {low} <= smallest <= largest <= {high}, '
                           f'got {value!r}')
    return [lo, hi]


def _background(length, sample_rate, rng):
    """White or pink noise (power falling as 1/f, like most room and street noise), unit std."""
    noise = rng.standard_normal(length)
    if rng.random() < 0.5:
        spectrum = np.fft.rfft(noise) / np.sqrt(np.maximum(np.fft.rfftfreq(length, 1.0 / sample_rate), 20.0))
        noise = np.fft.irfft(spectrum, length)
    return noise / (noise.std() + 1e-9)


def make_scene(classes, seconds, sample_rate, rng, events_per_scene=(3, 8), event_seconds=(0.3, 2.0)):
    """One scene: (float32 waveform, [(onset, offset, label)] sorted by onset)."""
    length = int(round(seconds * sample_rate))
    wave = rng.uniform(0.003, 0.02) * _background(length, sample_rate, rng)
    events = []
    for _ in range(rng.integers(events_per_scene[0], events_per_scene[1] + 1)):
        label = classes[rng.integers(len(classes))]
        n = min(length, int(rng.uniform(*event_seconds) * sample_rate))
        sound = FAMILIES[FAMILY_NAMES.index(label)][1](n, sample_rate, rng)
        sound /= np.abs(sound).max() + 1e-9
        audible = np.flatnonzero(np.abs(sound) >= AUDIBLE_FRACTION)
        first, last = int(audible[0]), int(audible[-1]) + 1
        same_class = [(on, off) for on, off, name in events if name == label]
        for _ in range(PLACEMENT_TRIES):
            start = int(rng.integers(0, length - n + 1))
            onset, offset = (start + first) / sample_rate, (start + last) / sample_rate
            if all(onset >= off + SAME_CLASS_GAP_SECONDS or offset + SAME_CLASS_GAP_SECONDS <= on
                   for on, off in same_class):
                wave[start:start + n] += rng.uniform(0.2, 0.6) * sound
                events.append((onset, offset, label))
                break   # no room found in PLACEMENT_TRIES tries: the event is left out
    peak = np.abs(wave).max()
    if peak > 0.99:   # overlapping sounds: scale the whole scene rather than clip it
        wave *= 0.99 / peak
    return wave.astype(np.float32), sorted(events)


def _check_split(split):
    wanted = ('split must be the (train, dev, test) fractions of the scenes, three numbers in [0, 1] '
              'summing to 1, e.g. (0.6, 0.2, 0.2)')
    if not isinstance(split, (list, tuple)) or len(split) != len(SPLITS):
        raise DatasetError(f'{wanted}; got {split!r}')
    fractions = [validate.probability(f'split[{i}]', v, hint=wanted, error=DatasetError) for i, v in enumerate(split)]
    if abs(sum(fractions) - 1) > 1e-9:
        raise DatasetError(f'{wanted}; got {split!r}')
    return fractions


def split_scenes(names, fractions, seed):
    """{part: names} for the (train, dev, test) fractions: a seeded shuffle, dev and test rounded,
    train the rest; each part in name order."""
    order = np.random.default_rng((seed, len(names))).permutation(len(names))
    dev, test = (int(round(len(names) * f)) for f in fractions[1:])
    test = min(test, len(names) - dev)
    parts = {'dev': order[:dev], 'test': order[dev:dev + test], 'train': order[dev + test:]}
    return {part: [names[i] for i in sorted(parts[part])] for part in SPLITS}


def _complete(folder, params):
    """True when `folder` already holds the scenes made with these parameters."""
    try:
        with open(os.path.join(folder, MARKER), encoding='utf-8') as f:
            if json.load(f) != params:
                return False
        names = list(read_strong_labels(os.path.join(folder, LABELS_CSV)))
    except (OSError, ValueError):
        return False
    return (len(names) == params['num_scenes']
            and all(os.path.isfile(os.path.join(folder, AUDIO_DIR, name)) for name in names))


def make_scenes(folder, num_scenes=10, seconds=10.0, classes=5, seed=0, sample_rate=32000,
                events_per_scene=(3, 8), event_seconds=None, split=(0.6, 0.2, 0.2)):
    """Write generated scenes and their strong labels; returns `folder`.

    folder/audio/scene_0000.wav ...        mono, 16-bit
    folder/meta/events.csv                 filename,onset,offset,label (read_strong_labels reads it)
    folder/meta/{train,dev,test}_events.csv  the same rows, of each part of the split
    folder/meta/scenes.json                these arguments, with the class names as 'labels'

    The CSVs name the files as they are in audio/: read them with
    StrongLabelDataset('folder/meta/train_events.csv', audio_dir='folder/audio').

    An event's onset and offset are those of its first and last audible sample (1 % of its
    peak); two events of one class never overlap and stay 0.3 s apart, events of different
    classes overlap freely. The same arguments give the same files; a folder that already
    holds the scenes for these arguments is reused as it is.

    Args:
        folder: the folder to create (or one holding earlier scenes).
        num_scenes: how many scenes.
        seconds: length of each scene, 1..600.
        classes: how many sound families (the first ones: tone, chirp, noise_burst, clicks,
            hum, trill, beeps, buzz, drip, rumble; 5 as in the demo set) or a list of their names.
        seed: the random variation.
        sample_rate: rate of the files, at least 16000 Hz.
        events_per_scene: (fewest, most) events in a scene.
        event_seconds: (shortest, longest) length of a sound, at most `seconds` (default 0.3 s to
            2 s, or to `seconds` in shorter scenes).
        split: the (train, dev, test) fractions of the scenes (dev and test rounded, train the rest).
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise DatasetError(f'folder must be a folder path, got {folder!r}')
    folder = os.fspath(folder)
    # (a float, so that 10 and 10.0 make, and reuse, the same set)
    seconds = validate.number_in('seconds', seconds, 1, 600, unit='seconds', hint='for generated scenes',
                                 error=DatasetError)
    if event_seconds is None:
        event_seconds = (0.3, min(2.0, seconds))
    params = {'version': VERSION, 'num_scenes': check_int('num_scenes', num_scenes, 1), 'seconds': seconds,
              'labels': _check_classes(classes), 'seed': check_int('seed', seed, 0),
              'sample_rate': check_int('sample_rate', sample_rate, 16000),
              'events_per_scene': _check_range('events_per_scene', events_per_scene, 0, 1000, True),
              'event_seconds': _check_range('event_seconds', event_seconds, 0.05, seconds, False),
              'split': _check_split(split)}
    parts = split_scenes(list(range(params['num_scenes'])), params['split'], params['seed'])
    if params['split'][0] > 0 and not parts['train']:
        raise DatasetError(f'split {tuple(split)} of {params["num_scenes"]} scenes leaves no scene for training: make '
                           f'more scenes (num_scenes) or give train a larger share')
    if _complete(folder, params):
        return folder
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, MARKER)):
        raise DatasetError(f'folder: {folder} already holds other files; give a new or empty folder for the scenes')

    def build(tmp):
        os.makedirs(os.path.join(tmp, AUDIO_DIR))
        os.makedirs(os.path.dirname(os.path.join(tmp, LABELS_CSV)))
        labels = {}
        for index in range(params['num_scenes']):
            rng = np.random.default_rng((params['seed'], index))
            name = f'scene_{index:04d}.wav'
            wave, labels[name] = make_scene(params['labels'], seconds, params['sample_rate'], rng,
                                            params['events_per_scene'], params['event_seconds'])
            sf.write(os.path.join(tmp, AUDIO_DIR, name), wave, params['sample_rate'], subtype=SUBTYPE)
        write_strong_labels(os.path.join(tmp, LABELS_CSV), labels)
        for part, names in split_scenes(list(labels), params['split'], params['seed']).items():
            write_strong_labels(os.path.join(tmp, 'meta', f'{part}_events.csv'), {name: labels[name] for name in names})
        with open(os.path.join(tmp, MARKER), 'w', encoding='utf-8') as f:
            json.dump(params, f, indent=2)

    # Built beside `folder` and swapped in whole, so an interrupted run never leaves half a set.
    replace_dir(build, folder)
    return folder
