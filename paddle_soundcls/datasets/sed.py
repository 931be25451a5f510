"""Clips with event times (strong labels) for training frame scores directly."""
import os

import numpy as np

from .. import audio, validate
from .base import AudioDataset, DatasetError, check_dir, check_duration, in_memory
from .strong import frame_targets, read_strong_labels

DEFAULT_FRAME_HOP = 0.01  # seconds: the 10 ms frames of the registered front ends


class StrongLabelDataset(AudioDataset):
    """Audio files and their events from a CSV of filename,onset,offset,label (the DESED /
    URBAN-SED layout, see datasets.strong.read_strong_labels).

    Items are (waveform [samples], frame targets float32 [frames, classes]): the crop of the
    clip (random in 'train' mode, centred otherwise, padded when short) and 0/1 targets of its
    frames of `frame_hop_seconds` (a frame is active when its centre lies inside an event), so
    the targets follow every random crop. `target(i)` gives the clip-level multi-hot target
    (the classes with an event in the clip). The Trainer trains such data on the model's frame
    logits (multi-label models with decision-level pooling), the targets placed on the
    network's frames by its frame geometry, and evaluates it with event- and segment-based F1
    of Module.detect on the whole recordings (`events` holds their event times by path).

    Args:
        csv_path: the event table; files without events are listed with empty times.
        audio_dir: the folder of the files (default: the CSV's folder).
        labels: the class names in index order (None: the sorted names found in the CSV).
        mode, sample_rate, duration, seed, cache: as for AudioDataset.
        frame_hop_seconds: the frame hop of the targets; the model's front-end hop
            (hop_length / sample_rate of its front end). `duration` must hold at least one frame.
    """
    strong = True

    def __init__(self, csv_path, audio_dir=None, labels=None, mode='train', sample_rate=None, duration=10.0, seed=0,
                 frame_hop_seconds=DEFAULT_FRAME_HOP, cache=False):
        # The arguments first, before the CSV and the audio files are read.
        frame_hop_seconds = validate.positive_number(
            'frame_hop_seconds', frame_hop_seconds, unit='seconds',
            hint=f"the model's front-end hop, e.g. {DEFAULT_FRAME_HOP}", error=DatasetError)
        duration = check_duration(duration)
        if round(duration / frame_hop_seconds) < 1:
            raise DatasetError(f'duration={duration} s holds no frame of frame_hop_seconds={frame_hop_seconds} s, so '
                               f'the clips would have no frame targets; give a duration of at least one frame '
                               f'(clips of a few seconds or more suit event detection)')
        events = read_strong_labels(csv_path, labels)
        audio_dir = check_dir('audio_dir', audio_dir or os.path.dirname(os.path.abspath(csv_path)))
        if labels is None:
            labels = sorted({label for spans in events.values() for _, _, label in spans})
            if not labels:
                raise DatasetError(f'{csv_path} lists no events, so there are no classes to learn; pass labels=')
        labels = [str(label) for label in labels]
        items, self.events = [], {}
        for name, spans in events.items():
            path = os.path.join(audio_dir, name)
            items.append((path, tuple(sorted({labels.index(label) for _, _, label in spans}))))
            self.events[path] = list(spans)
        _check_audio_found(items, csv_path, audio_dir)
        super().__init__(items, labels, mode=mode, sample_rate=sample_rate, duration=duration, multi_label=True,
                         seed=seed, cache=cache)
        self.frame_hop_seconds = frame_hop_seconds
        self.num_frames = int(round(self.duration / self.frame_hop_seconds))

    def __getitem__(self, index):
        index = self._index(index)
        path = self.items[index][0]
        wave = self.waveform(index)
        # As AudioDataset crops (the same draws), with the offset kept for the targets.
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.mode == 'train' else None
        offset = audio.crop_offset(len(wave), self.num_samples, rng)
        wave = in_memory(audio.fix_length(wave[offset:offset + self.num_samples], self.num_samples))
        targets = frame_targets(self.events[path], self.num_frames, self.frame_hop_seconds, self.labels,
                                frame_offset_seconds=offset / self.sample_rate)
        return wave, targets


def _check_audio_found(items, csv_path, audio_dir):
    """Error naming the folder searched, audio_dir=, and a sibling audio/ folder that holds the files."""
    missing = [path for path, _ in items if not os.path.isfile(path)]
    if not missing:
        return
    # make_scenes (and DESED-like layouts) keep the tables in meta/ and the audio in a sibling audio/.
    sibling = os.path.join(os.path.dirname(os.path.abspath(audio_dir)), 'audio')
    names = [os.path.relpath(path, audio_dir) for path in missing]
    if os.path.abspath(sibling) != os.path.abspath(audio_dir) and all(
            os.path.isfile(os.path.join(sibling, name)) for name in names):
        hint = f'They are in {sibling}: pass audio_dir={sibling!r}.'
    else:
        hint = 'Pass audio_dir= (the folder holding the files named in the CSV).'
    raise DatasetError(f'{len(missing)} of {len(items)} audio files listed in {csv_path} are missing from {audio_dir}, '
                       f'e.g. {missing[:3]}. {hint}')
