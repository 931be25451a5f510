"""Your own data: one folder per class (`AudioFolder`) or a table of files and labels (`CSVDataset`)."""
import os
import warnings

from .. import audio
from .base import (AudioDataset, DatasetError, check_dir, check_exists, check_mode, check_split, read_csv,
                   sort_labels, stratified_split)


def select(items, targets, num_classes, mode, split):
    """The train or dev part of `items` under a (dev_fraction, seed) split; all items without one."""
    if split is None:
        return items
    # Split in path order, so the same files and seed give the same split in any listing order.
    by_path = sorted(range(len(items)), key=lambda i: items[i][0])
    train, dev = stratified_split([targets[i] for i in by_path], num_classes, *split)
    chosen = sorted(by_path[j] for j in (train if mode == 'train' else dev))
    return [items[i] for i in chosen]


class AudioFolder(AudioDataset):
    """One sub-folder per class: `root/<class name>/**/<clip>.wav|flac|ogg|...`.

    Args:
        root: the folder holding the class folders; class names are the sorted folder
            names (folders without audio are ignored with a warning).
        mode: 'train' or 'dev' (any other mode is a dev-style mode: centre crops).
        sample_rate: rate of the returned waveforms (None: 32000).
        duration: clip length in seconds.
        split: None to use every clip, or (dev_fraction, seed) for a stratified split:
            mode 'train' gets the train part, other modes the dev part.
        seed: seed of the random training crops.
        cache: decode and resample each file once and keep the result on disk (see AudioDataset).
    """

    def __init__(self, root, mode='train', sample_rate=None, duration=5.0, split=None, seed=0, cache=False):
        check_mode(mode)
        root = check_dir('root', root, 'Pass a folder with one sub-folder of audio files per class.')
        split = check_split(split)
        classes, items, empty = [], [], []
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if name.startswith('.') or not os.path.isdir(folder):
                continue
            files = audio.list_audio_files(folder)
            if not files:
                empty.append(name)
                continue
            items.extend((path, len(classes)) for path in files)
            classes.append(name)
        if not classes:
            loose = audio.list_audio_files(root)
            detail = (f' It holds {len(loose)} audio files but no class folders.' if loose
                      else f' No file with an audio extension ({", ".join(audio.AUDIO_EXTENSIONS)}) was found.')
            raise DatasetError(f'root: {root} holds no class folders with audio.{detail} Expected '
                               f'{root}/<class name>/<clip>.wav, one folder per class.')
        if empty:
            warnings.warn(f'{root}: ignoring folders without audio files: {", ".join(empty)}', stacklevel=2)
        self.root = root
        items = select(items, [t for _, t in items], len(classes), mode, split)
        super().__init__(items, classes, mode=mode, sample_rate=sample_rate, duration=duration, seed=seed,
                         cache=cache)



class CSVDataset(AudioDataset):
    """Clips listed in a CSV file with a header row.

    Args:
        csv_path: the table; one row per clip.
        audio_root: folder that relative paths are resolved against (None: the CSV's folder).
        path_column, label_column: column names of the file path and the class name.
        fold_column, folds: keep only rows whose `fold_column` value is in `folds`
            (values compared as text, so folds=[1, 2] matches '1' and '2').
        label_separator: for multi-label data, the separator inside the label field
            (e.g. ';' for 'dog;rain'); targets are then multi-hot. An empty field means no class.
        labels: the class names in index order; None takes the sorted names found in the
            whole CSV (before fold selection, so every fold shares one class list).
        split: None or (dev_fraction, seed), a stratified split of the selected rows.
        mode, sample_rate, duration, seed, cache: as in `AudioDataset`.
    """

    def __init__(self, csv_path, audio_root=None, path_column='path', label_column='label', fold_column=None,
                 folds=None, label_separator=None, labels=None, mode='train', sample_rate=None, duration=5.0,
                 split=None, seed=0, cache=False):
        check_mode(mode)
        if not isinstance(csv_path, (str, os.PathLike)):
            raise DatasetError(f'csv_path must be a file path, got {csv_path!r}')
        csv_path = os.fspath(csv_path)
        if audio_root is None:
            audio_root = os.path.dirname(os.path.abspath(csv_path))
        audio_root = check_dir('audio_root', audio_root)
        for name, value in (('path_column', path_column), ('label_column', label_column)):
            if not isinstance(value, str) or not value:
                raise DatasetError(f'{name} must be a column name, got {value!r}')
        if (fold_column is None) != (folds is None):
            raise DatasetError('fold_column and folds go together: give both to select folds, or neither')
        if folds is not None:
            if isinstance(folds, (str, int)):
                folds = [folds]
            folds = {str(f) for f in folds}
            if not folds:
                raise DatasetError('folds is empty; give the fold values to keep, e.g. folds=[1, 2]')
        if label_separator is not None and (not isinstance(label_separator, str) or not label_separator):
            raise DatasetError(f'label_separator must be a non-empty string such as ";", got {label_separator!r}')
        split = check_split(split)
        required = [path_column, label_column] + ([fold_column] if fold_column else [])
        rows = read_csv(csv_path, required, 'csv_path')

        def names_of(row):
            field = (row[label_column] or '').strip()
            if label_separator is None:
                return [field]
            return [n.strip() for n in field.split(label_separator) if n.strip()]

        if label_separator is None:
            blank = [i + 2 for i, row in enumerate(rows) if not names_of(row)[0]]  # +2: header and 1-based
            if blank:
                raise DatasetError(f'{csv_path}: empty {label_column!r} on lines {blank[:20]}'
                                   f'{" ..." if len(blank) > 20 else ""}')
        if labels is None:
            labels = sort_labels(n for row in rows for n in names_of(row))
        else:
            labels = [str(n) for n in labels]
            known = set(labels)
            unknown = sorted({n for row in rows for n in names_of(row)} - known)
            if unknown:
                raise DatasetError(f'{csv_path}: labels {unknown[:20]} are not in the given labels list')
        index = {n: i for i, n in enumerate(labels)}
        if fold_column is not None:
            fold_values = {(row[fold_column] or '').strip() for row in rows}
            absent = sorted(folds - fold_values)
            if absent:
                raise DatasetError(f'folds {absent} do not occur in column {fold_column!r} of {csv_path}; '
                                   f'it holds {sort_labels(fold_values)}')
            rows = [row for row in rows if (row[fold_column] or '').strip() in folds]
        items = []
        for row in rows:
            path = os.path.join(audio_root, (row[path_column] or '').strip())
            targets = [index[n] for n in names_of(row)]
            items.append((path, tuple(targets) if label_separator is not None else targets[0]))
        check_exists(items, csv_path, f'Paths are read relative to audio_root={audio_root}.')
        self.csv_path, self.audio_root = csv_path, audio_root
        items = select(items, [t for _, t in items], len(labels), mode, split)
        super().__init__(items, labels, mode=mode, sample_rate=sample_rate, duration=duration,
                         multi_label=label_separator is not None, seed=seed, cache=cache)
