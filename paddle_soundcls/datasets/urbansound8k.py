"""UrbanSound8K (Salamon et al., 2014): 8732 urban sound clips of up to 4 s, 10 classes, 10 folds."""
import os

from .base import (AudioDataset, DatasetError, check_dir, check_exists, check_fold, check_mode,
                   labels_from_columns, read_csv, read_folds)

LAYOUT = ('UrbanSound8K/\n'
          '  audio/fold1 .. fold10/<slice_file_name>.wav\n'
          '  metadata/UrbanSound8K.csv   (columns slice_file_name,fsID,start,end,salience,fold,classID,class)')
WHERE = ('UrbanSound8K is not downloaded automatically: get it from '
         'https://urbansounddataset.weebly.com/urbansound8k.html and unpack it so that data_dir holds:\n' + LAYOUT)


class UrbanSound8K(AudioDataset):
    """UrbanSound8K in its official layout.

    Args:
        mode: 'train' (the nine folds other than `split`) or 'dev' (fold `split`).
        split: the dev fold, 1..10 (the dataset's own folds; keep them for comparable results).
        data_dir: the folder holding audio/ and metadata/.
        sample_rate: rate of the returned waveforms (None: 32000); the clips have mixed rates.
        duration: clip length in seconds (clips are at most 4 s; shorter ones are zero-padded).
        seed: seed of the random training crops.
        cache: decode and resample each file once and keep the result on disk (see AudioDataset).
    """

    def __init__(self, mode='train', split=1, data_dir=None, sample_rate=None, duration=4.0, seed=0,
                 cache=False):
        check_mode(mode)
        if data_dir is None:
            raise DatasetError(f'data_dir is required. {WHERE}')
        data_dir = check_dir('data_dir', data_dir, WHERE)
        meta = os.path.join(data_dir, 'metadata', 'UrbanSound8K.csv')
        if not os.path.isfile(meta):
            raise DatasetError(f'data_dir: {meta} not found. {WHERE}')
        rows = read_csv(meta, ['slice_file_name', 'fold', 'classID', 'class'], 'data_dir')
        labels = labels_from_columns(rows, 'classID', 'class', meta)
        folds = read_folds(rows, 'fold', meta)
        split = check_fold(split, folds, meta)
        dev = mode != 'train'
        items = [(os.path.join(data_dir, 'audio', f'fold{fold}', row['slice_file_name'].strip()),
                  int(row['classID']))
                 for row, fold in zip(rows, folds) if (fold == split) == dev]
        check_exists(items, meta, WHERE)
        self.data_dir, self.split = data_dir, split
        super().__init__(items, labels, mode=mode, sample_rate=sample_rate, duration=duration, seed=seed,
                         cache=cache)
