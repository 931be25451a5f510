"""GTZAN (Tzanetakis & Cook, 2002): 1000 thirty-second music clips, 10 genres of 100 clips."""
import os
import re

from .. import audio
from .base import AudioDataset, DatasetError, check_dir, check_int, check_mode

GENRES = ('blues', 'classical', 'country', 'disco', 'hiphop', 'jazz', 'metal', 'pop', 'reggae', 'rock')
NUM_FOLDS = 10
LAYOUT = ('genres/\n'
          '  blues/blues.00000.wav .. blues.00099.wav\n'
          '  classical/ country/ disco/ hiphop/ jazz/ metal/ pop/ reggae/ rock/   (the same pattern; '
          '.au files are read too)')
WHERE = ('GTZAN is not downloaded automatically: get it from http://marsyas.info/downloads/datasets.html '
         '(or the "GTZAN Dataset - Music Genre Classification" copy on Kaggle, whose folder is '
         'genres_original) and unpack it so that data_dir holds:\n' + LAYOUT)
_CLIP = re.compile(r'^([a-z]+)\.(\d{5})\.[A-Za-z0-9]+$')


def genres_folder(data_dir):
    """The folder holding the genre folders: data_dir/genres, data_dir/genres_original or data_dir."""
    for candidate in (os.path.join(data_dir, 'genres'), os.path.join(data_dir, 'genres_original'), data_dir):
        if os.path.isdir(os.path.join(candidate, GENRES[0])):
            return candidate
    raise DatasetError(f'data_dir: {data_dir} holds no GTZAN genre folders. {WHERE}')


class GTZAN(AudioDataset):
    """GTZAN genre collection.

    The split is a deterministic 10-fold split by clip number: fold k (1..10) holds clips
    10*(k-1) .. 10*(k-1)+9 of every genre, 100 clips per fold. Consecutive clips in GTZAN
    often come from the same artist, so contiguous blocks keep most of an artist's clips on
    one side; this leaks less than a random split but is not artist-filtered (the
    fault-filtered split of Kereliuk et al. is not used here). The Kaggle copy has one
    unreadable file (jazz.00054.wav): call `check_files(skip_bad=True)` to leave it out.

    Args:
        mode: 'train' (the nine folds other than `split`) or 'dev' (fold `split`).
        split: the dev fold, 1..10.
        data_dir: the folder holding genres/ (or genres_original/, or the genre folders).
        sample_rate: rate of the returned waveforms (None: 32000); the clips are 22.05 kHz.
        duration: clip length in seconds (the clips are about 30 s).
        seed: seed of the random training crops.
        cache: decode and resample each file once and keep the result on disk (see AudioDataset).
    """

    def __init__(self, mode='train', split=1, data_dir=None, sample_rate=None, duration=30.0, seed=0,
                 cache=False):
        check_mode(mode)
        split = check_int('split', split, low=1, high=NUM_FOLDS)
        if data_dir is None:
            raise DatasetError(f'data_dir is required. {WHERE}')
        data_dir = check_dir('data_dir', data_dir, WHERE)
        root = genres_folder(data_dir)
        dev = mode != 'train'
        items, empty = [], []
        for label, genre in enumerate(GENRES):
            folder = os.path.join(root, genre)
            names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            clips = []
            for name in names:
                match = _CLIP.match(name)
                if match and match.group(1) == genre and name.lower().endswith(audio.AUDIO_EXTENSIONS):
                    clips.append((int(match.group(2)), os.path.join(folder, name)))
            if not clips:
                empty.append(genre)
            items.extend((path, label) for number, path in clips
                         if (number // NUM_FOLDS % NUM_FOLDS + 1 == split) == dev)
        if empty:
            raise DatasetError(f'data_dir: no clips named <genre>.000NN.wav for {", ".join(empty)} in {root}. '
                               f'{WHERE}')
        self.data_dir, self.split = data_dir, split
        super().__init__(items, list(GENRES), mode=mode, sample_rate=sample_rate, duration=duration, seed=seed,
                         cache=cache)
