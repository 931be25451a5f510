"""ESC-50 (Piczak, 2015): 2000 five-second clips of environmental sounds in 50 classes, 5 folds."""
import os
import shutil
import tempfile
import zipfile
import zlib

from .. import cache
from ..fileio import remove_stale, temp_prefix
from .base import (AudioDataset, DatasetError, check_dir, check_exists, check_fold, check_mode,
                   labels_from_columns, read_csv, read_folds)

ESC50_URL = 'https://github.com/karoldvl/ESC-50/archive/master.zip'
ARCHIVE = 'ESC-50-master.zip'
FOLDER = 'ESC-50-master'
LAYOUT = ('ESC-50-master/\n'
          '  audio/<fold>-<source id>-<take>-<target>.wav   (e.g. 1-100032-A-0.wav, 2000 clips)\n'
          '  meta/esc50.csv   (columns filename,fold,target,category,esc10,src_file,take)')


def _archive_problem(path):
    """None when `path` is a zip archive with an ESC-50-master/ folder, else a sentence saying why not.

    Reads the zip's table of contents only (at the end of the file, so a cut download fails here).
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        return f'not a valid zip archive ({exc})'
    if not any(name.startswith(FOLDER + '/') for name in names):
        return f'the archive does not hold a {FOLDER}/ folder'
    return None


class _DamagedArchive(Exception):
    """The archive could not be unpacked; the message says why."""


def _extract(archive, target):
    """Unpack the archive's top folder to `target`: into a temporary folder first, then one rename."""
    parent = os.path.dirname(target)
    remove_stale(parent)  # unpacking of a process that was killed
    tmp = tempfile.mkdtemp(dir=parent, prefix=temp_prefix(FOLDER), suffix='.tmp')
    try:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)  # zipfile drops absolute paths and '..' from member names
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise _DamagedArchive(f'it is not a valid zip archive ({exc})') from None
        src = os.path.join(tmp, FOLDER)
        if not os.path.isdir(src):
            raise _DamagedArchive(f'it does not hold a {FOLDER}/ folder (found {sorted(os.listdir(tmp))})')
        try:
            os.replace(src, target)
        except OSError:
            if not os.path.isdir(target):  # else another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_esc50(root=None, progress=True):
    """The ESC-50 folder in the cache (`cache.cache_dir()/ESC-50-master`), downloaded once.

    Returns the folder path. Offline, raises cache.DownloadError saying where to put the files.
    Several processes may call it at once; the cache ends up with one complete copy.
    """
    root = root or cache.cache_dir()
    target = os.path.join(root, FOLDER)
    if os.path.isdir(target):
        return target
    # GitHub builds branch archives on request: no checksum or exact size is published and the
    # bytes may change, so the archive is checked by what it holds (its table of contents before
    # it enters the cache, then the metadata and every clip it lists; check_files() reads each one).
    downloading = not os.path.exists(os.path.join(root, ARCHIVE))
    try:
        archive = cache.fetch(ESC50_URL, ARCHIVE, root=root, progress=progress, check=_archive_problem)
    except cache.DownloadError as exc:
        raise cache.DownloadError(f'{exc}\nOr unpack ESC-50 yourself so that {root} holds\n{LAYOUT}\n'
                                    f'or pass data_dir=<a folder with audio/ and meta/ as above>.') from None
    try:
        _extract(archive, target)
    except _DamagedArchive as exc:
        if not downloading:  # a file placed by hand: the user decides what to do with it
            raise DatasetError(f'{archive} cannot be unpacked: {exc}. Delete it and run again to download it '
                               f'from {ESC50_URL}, or unpack ESC-50 yourself:\n{LAYOUT}') from None
        # Damage only unpacking finds (a bad CRC): not kept, so the next try downloads it again.
        _remove(archive)
        raise DatasetError(f'the archive downloaded from {ESC50_URL} cannot be unpacked: {exc}. It was not '
                           f'kept; run again to download it anew, or unpack ESC-50 yourself:\n{LAYOUT}') from None
    except FileNotFoundError:
        if not os.path.isdir(target):
            raise
        return target  # another process unpacked it and removed the archive first
    _remove(archive)  # the unpacked folder is what is used; the archive would double the space
    return target


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:  # another process removed it first
        pass


class ESC50(AudioDataset):
    """ESC-50 in its official layout.

    Args:
        mode: 'train' (the four folds other than `split`, random crops) or 'dev' (fold
            `split`, centre crops).
        split: the dev fold, 1..5.
        data_dir: the folder holding audio/ and meta/esc50.csv; None uses (and downloads
            once to) `cache.cache_dir()/ESC-50-master`.
        sample_rate: rate of the returned waveforms (None: 32000); the clips are 44.1 kHz.
        duration: clip length in seconds (the clips are 5 s).
        seed: seed of the random training crops.
        cache: decode and resample each file once and keep the result on disk (see AudioDataset).

    Class names and their count come from the meta file's target and category columns.
    """

    def __init__(self, mode='train', split=1, data_dir=None, sample_rate=None, duration=5.0, seed=0, cache=False):
        check_mode(mode)
        if data_dir is None:
            data_dir = download_esc50()
        data_dir = check_dir('data_dir', data_dir, f'Expected the ESC-50 layout:\n{LAYOUT}')
        meta = os.path.join(data_dir, 'meta', 'esc50.csv')
        if not os.path.isfile(meta):
            raise DatasetError(f'data_dir: {meta} not found; {data_dir} is not an ESC-50 folder. '
                               f'Expected the layout:\n{LAYOUT}')
        rows = read_csv(meta, ['filename', 'fold', 'target', 'category'], 'data_dir')
        labels = labels_from_columns(rows, 'target', 'category', meta)
        folds = read_folds(rows, 'fold', meta)
        split = check_fold(split, folds, meta)
        dev = mode != 'train'
        items = [(os.path.join(data_dir, 'audio', row['filename'].strip()), int(row['target']))
                 for row, fold in zip(rows, folds) if (fold == split) == dev]
        check_exists(items, meta, f'Expected the ESC-50 layout:\n{LAYOUT}')
        self.data_dir, self.split = data_dir, split
        super().__init__(items, labels, mode=mode, sample_rate=sample_rate, duration=duration, seed=seed,
                         cache=cache)
