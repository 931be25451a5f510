"""The dataset base class: a list of (audio file, label) items served as fixed-length waveforms.

Datasets know nothing of models: they return mono float32 waveforms at one sample rate,
and the model computes its features later, in batches, on the device.
"""
import csv
import logging
import os
import warnings

import numpy as np
import paddle
import soundfile as sf

from .. import audio, fileio, validate
from ..cache import cache_dir, content_cache
from ..progress import progress_bar
from ..errors import DatasetError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATE = 32000  # the rate the PANNs weights were trained at
# check_files() shows a progress bar from this many files on.
PROGRESS_MIN_FILES = 500
# Error messages name at most this many files, then give the count of the rest.
MAX_LISTED = 100
# Bump when the way waveforms are cached changes: old entries are then ignored.
CACHE_FORMAT = 1


def list_problems(problems, limit=MAX_LISTED):
    """[(path, problem)] -> one line per file, at most `limit` lines plus a count of the rest."""
    lines = [f'  {path}: {problem}' for path, problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f'  ... and {len(problems) - limit} more')
    return '\n'.join(lines)


# ----- argument checks (each error names the argument) -----

def check_mode(mode):
    if not isinstance(mode, str) or not mode:
        raise DatasetError(f"mode must be 'train' (random crops) or 'dev'/'test' (centre crops), got {mode!r}")
    return mode


def check_duration(duration):
    return validate.positive_number('duration', duration, unit='seconds', error=DatasetError)


def check_int(name, value, low=None, high=None):
    return validate.integer(name, value, low, high, error=DatasetError)


def check_split(split):
    """None or (dev_fraction, seed) with 0 < dev_fraction < 1."""
    if split is None:
        return None
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise DatasetError(f'split must be None or a (dev_fraction, seed) pair, e.g. (0.2, 0), got {split!r}')
    fraction, seed = split
    fraction = validate.number_in('split: dev_fraction', fraction, 0, 1, low_open=True, high_open=True,
                                  error=DatasetError)
    return fraction, check_int('split: seed', seed, low=0)


def check_dir(name, path, what_to_do=''):
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise DatasetError(f'{name} must be a folder path, got {path!r}')
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DatasetError(f'{name}: no such folder: {path}. {what_to_do}'.rstrip())
    return path


def read_csv(path, required, name='csv'):
    """Rows of a CSV file with a header, as dicts; every column in `required` must be there."""
    if not os.path.isfile(path):
        raise DatasetError(f'{name}: no such file: {path}')
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f'cannot read {path}: {exc}') from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise DatasetError(f'{path} has no column {", ".join(map(repr, missing))}; its columns are {columns}')
    if not rows:
        raise DatasetError(f'{path} lists no clips')
    return rows


def check_exists(items, source, hint=''):
    """Error listing every item whose file is missing."""
    missing = [(path, 'file not found') for path, _ in items if not os.path.isfile(path)]
    if missing:
        raise DatasetError(f'{len(missing)} of {len(items)} audio files listed in {source} are missing:\n'
                           f'{list_problems(missing)}\n{hint}'.rstrip())


def sort_labels(names):
    """Class names in index order: numerically when they are all integers, else alphabetically."""
    names = sorted(set(names))
    if all(n.lstrip('-').isdigit() for n in names):
        return sorted(names, key=int)
    return names


def stratified_split(targets, num_classes, dev_fraction, seed):
    """Split item indices into (train, dev), class by class.

    targets: per item, a class index or (multi-label) a tuple of class indices.
    Each class with n >= 2 items puts max(1, round(n * dev_fraction)) of them (at most n - 1)
    in dev, so every such class is in both parts; a class with one item goes to train.
    Multi-label items are grouped by their rarest class. The result depends only on the
    targets and the seed, and the two parts are disjoint and cover every item.
    """
    multi = any(isinstance(t, tuple) for t in targets)
    if multi:
        counts = np.zeros(num_classes, dtype=np.int64)
        for t in targets:
            counts[list(t)] += 1
        # The rarest class decides, so small classes are not swamped by the frequent ones.
        keys = [min(t, key=lambda c: (counts[c], c)) if t else -1 for t in targets]
    else:
        keys = list(targets)
    groups = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    train, dev = [], []
    for key in sorted(groups):
        members = groups[key]
        n = len(members)
        n_dev = 0 if n < 2 else min(n - 1, max(1, round(n * dev_fraction)))
        order = rng.permutation(n)
        dev.extend(members[j] for j in order[:n_dev])
        train.extend(members[j] for j in order[n_dev:])
    return sorted(train), sorted(dev)


def decode_problem(path):
    """None when `path` is usable audio, else a sentence saying why not.

    Checks the header (audio.header_problem), then decodes every sample: a file that
    fails only half-way, or holds NaN or absurd values, is found here rather than in the
    middle of an epoch.
    """
    problem = audio.header_problem(path)
    if problem:
        return problem
    try:
        data, _ = sf.read(path, dtype='float32', always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad files
        return f'cannot decode the audio ({str(exc).rstrip(". ")})'
    return audio.samples_problem(data)


def waveform_cache_root():
    """The waveform cache folder: `<cache_dir()>/waveforms` ($PADDLE_SOUNDCLS_HOME/waveforms)."""
    return os.path.join(cache_dir(), 'waveforms')


def load_cached(file):
    """A cached waveform, memory-mapped: a crop reads only its own part of the file."""
    wave = np.load(file, mmap_mode='r')
    if wave.dtype != np.float32 or wave.ndim != 1:
        # (plain ValueError: the callers catch it and read the audio file again instead)
        raise ValueError(f'it holds {wave.dtype} {wave.shape}, not a float32 waveform')
    return wave


def in_memory(wave):
    """A crop of a memory-mapped (read-only) waveform as an ordinary array; other arrays as they are."""
    return np.array(wave) if isinstance(wave, np.memmap) else wave


class AudioDataset(paddle.io.Dataset):
    """Fixed-length mono waveforms and their labels.

    Args:
        items: list of (path, target): target is a class index, or with `multi_label` a
            sequence of class indices.
        labels: class names, in index order.
        mode: 'train' crops a random window from longer clips (reproducible per seed, epoch
            and index); any other mode ('dev', 'test', ...) takes the centre. Shorter clips
            are zero-padded at the end.
        sample_rate: rate of the returned waveforms in Hz; None means 32000 (PANNs).
        duration: clip length in seconds.
        multi_label: targets are multi-hot float32 [num_classes] instead of an int64 index.
        seed: seed of the random crops.
        cache: keep each file's decoded, mono, resampled waveform on disk (under
            `cache_dir()/waveforms`, found by the sha256 of the file) and read it from
            there: each file is decoded and resampled once instead of every epoch. The files are
            hashed when the dataset is built, so an edited file is decoded again.

    __getitem__(i) -> (waveform float32 [round(duration * sample_rate)], target int64 scalar
    or multi-hot float32 [num_classes]).
    """

    def __init__(self, items, labels, mode='train', sample_rate=None, duration=5.0, multi_label=False,
                 seed=0, cache=False):
        super().__init__()
        self.mode = check_mode(mode)
        self.sample_rate = DEFAULT_SAMPLE_RATE if sample_rate is None else validate.sample_rate(
            'sample_rate', sample_rate, hint=f'Hz; None for {DEFAULT_SAMPLE_RATE}', error=DatasetError)
        self.duration = check_duration(duration)
        self.multi_label = validate.flag('multi_label', multi_label, error=DatasetError)
        self.seed = check_int('seed', seed, low=0)
        labels = [str(label) for label in labels]
        if not labels:
            raise DatasetError('labels: the dataset has no classes')
        if len(set(labels)) != len(labels):
            raise DatasetError(f'labels has duplicate class names: {labels}')
        self.labels = labels
        self.items = [(os.fspath(path), self._check_target(target, path)) for path, target in items]
        if not self.items:
            raise DatasetError(f'the {self.mode} part of this dataset holds no clips')
        self.num_samples = int(round(self.duration * self.sample_rate))
        self.epoch = 0
        self.cache = validate.flag('cache', cache, error=DatasetError)
        self.cache_files = self._cache_files() if cache else {}

    def _cache_files(self):
        """path -> the file of its cached waveform. Hashed here, once: DataLoader workers get
        the mapping with the dataset. Missing files are left out, to fail as without a cache."""
        paths = sorted({path for path, _ in self.items if os.path.isfile(path)})
        settings = {'format': CACHE_FORMAT, 'sample_rate': self.sample_rate, 'resampler': audio.RESAMPLER_VERSION,
                    'libsndfile': sf.__libsndfile_version__}  # its decoders (e.g. MP3) may change between versions
        files, _ = content_cache(waveform_cache_root(), settings, paths)
        return dict(zip(paths, files))

    def _check_target(self, target, path):
        num = len(self.labels)
        if self.multi_label:
            target = tuple(sorted({int(t) for t in target}))
            bad = [t for t in target if not 0 <= t < num]
        else:
            target = int(target)
            bad = [] if 0 <= target < num else [target]
        if bad:
            raise DatasetError(f'{path}: class index {bad[0]} is outside 0..{num - 1}')
        return target

    @property
    def num_classes(self):
        return len(self.labels)

    def set_epoch(self, epoch):
        """Choose the random crops of this epoch (the trainer calls it before each epoch)."""
        self.epoch = check_int('epoch', epoch, low=0)

    def __len__(self):
        return len(self.items)

    def _index(self, index):
        n = len(self.items)
        index = check_int('index', index)
        if not -n <= index < n:
            raise IndexError(f'index {index} is out of range for a dataset of {n} clips')
        return index % n

    def target(self, index):
        """The target of clip `index`: an int64 class index, or multi-hot float32 [num_classes]."""
        target = self.items[self._index(index)][1]
        if self.multi_label:
            hot = np.zeros(len(self.labels), dtype=np.float32)
            hot[list(target)] = 1.0
            return hot
        return np.int64(target)

    def waveform(self, index):
        """Clip `index` whole (mono float32 at sample_rate), neither cropped nor padded: what
        evaluation scores with the same rule as predict (see deploy.pipeline.clip_segments).
        With the cache, a read-only memory map of the cached file."""
        path = self.items[self._index(index)][0]
        file = self.cache_files.get(path)
        if file is None:
            return audio.load(path, None, self.sample_rate)
        try:
            return load_cached(file)
        except FileNotFoundError:
            pass  # the first use of this content
        except (OSError, ValueError, EOFError) as exc:
            # Written atomically, so damaged by something else (a disk error, a cut copy of the
            # cache); decoding again only costs time.
            logger.warning('the cached waveform %s is damaged (%s); decoding %s again', file, exc, path)
        wave = audio.load(path, None, self.sample_rate)
        fileio.write_npy(file, wave)
        return wave

    def __getitem__(self, index):
        index = self._index(index)
        wave = self.waveform(index)
        # Training crops depend only on (seed, epoch, index): the same in any worker and after a resume.
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.mode == 'train' else None
        return in_memory(audio.fix_length(wave, self.num_samples, rng)), self.target(index)

    def class_counts(self):
        """Clips per class, int64 [num_classes] (multi-label: clips that carry each class)."""
        counts = np.zeros(len(self.labels), dtype=np.int64)
        for _, target in self.items:
            counts[list(target) if self.multi_label else target] += 1
        return counts

    def check_files(self, skip_bad=False, skip_hint='check_files(skip_bad=True)'):
        """Open every file once and check it is readable audio with at least one frame.

        Problems are reported together: a DatasetError naming each bad file, or with
        skip_bad=True one warning, and the bad files are left out of the dataset.
        skip_hint: how the caller's user leaves them out, named in the error (the Trainer
        names its skip_bad_files). Returns the [(path, problem)] that were found (empty when
        all files are good).
        """
        paths = sorted({path for path, _ in self.items})
        problems = []
        for path in progress_bar(paths, desc='Checking audio files', unit='file',
                                 show=len(paths) >= PROGRESS_MIN_FILES):
            problem = decode_problem(path)
            if problem:
                problems.append((path, problem))
        if not problems:
            return []
        listing = list_problems(problems)
        if not skip_bad:
            raise DatasetError(f'{len(problems)} of {len(paths)} audio files cannot be used:\n{listing}\n'
                               f'Replace or delete these files, or leave them out with {skip_hint}.')
        bad = {path for path, _ in problems}
        kept = [item for item in self.items if item[0] not in bad]
        if not kept:
            raise DatasetError(f'every audio file of this dataset is unusable:\n{listing}')
        warnings.warn(f'leaving out {len(problems)} unusable audio files:\n{listing}', stacklevel=2)
        self.items = kept
        return problems

    def __repr__(self):
        return (f'{type(self).__name__}(mode={self.mode!r}, clips={len(self)}, classes={self.num_classes}, '
                f'sample_rate={self.sample_rate}, duration={self.duration:g})')


def labels_from_columns(rows, index_column, name_column, source):
    """Class names in index order from a table that gives both (e.g. ESC-50's target and category).

    The indices must be 0..C-1, each with one name.
    """
    names = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            index = int(row[index_column])
        except (TypeError, ValueError):
            raise DatasetError(f'{source}, line {line}: {index_column} must be an int, '
                               f'got {row[index_column]!r}') from None
        name = (row[name_column] or '').strip()
        if names.setdefault(index, name) != name:
            raise DatasetError(f'{source}, line {line}: {index_column} {index} is called both '
                               f'{names[index]!r} and {name!r}')
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f'{source}: the {index_column} values must be 0..{len(names) - 1}, '
                           f'got {sorted(names)}')
    return [names[i] for i in range(len(names))]


def read_folds(rows, fold_column, source):
    """The fold of each row as an int."""
    folds = []
    for line, row in enumerate(rows, start=2):
        try:
            folds.append(int(row[fold_column]))
        except (TypeError, ValueError):
            raise DatasetError(f'{source}, line {line}: {fold_column} must be an int, '
                               f'got {row[fold_column]!r}') from None
    return folds


def check_fold(split, folds, source):
    """`split` must be one of the folds found in the metadata."""
    known = sorted(set(int(fold) for fold in folds))
    hint = f'the dev fold, one of {known} from {source}'
    return validate.one_of('split', validate.integer('split', split, hint=hint, error=DatasetError), known,
                           hint=hint, error=DatasetError)
