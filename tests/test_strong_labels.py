"""Strong labels (filename,onset,offset,label files), frame targets, and generated scenes with known events."""
import os

import numpy as np
import pytest
import soundfile as sf

from paddle_soundcls.datasets.scenes import make_scenes
from paddle_soundcls.datasets.strong import frame_targets, read_strong_labels, write_strong_labels
from paddle_soundcls.deploy.events import EventConfig, detect_events
from paddle_soundcls.errors import DatasetError


def write(tmp_path, text, name='events.csv', encoding='utf-8'):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


# ----- reading -----

def test_reads_comma_separated_rows_without_header(tmp_path):
    path = write(tmp_path, 'a.wav,0.5,1.5,dog\nb.wav,0,2,cat\n\na.wav,0.1,0.3,cat\n')
    # Files in order of first appearance, each file's events by onset.
    assert read_strong_labels(path) == {'a.wav': [(0.1, 0.3, 'cat'), (0.5, 1.5, 'dog')], 'b.wav': [(0.0, 2.0, 'cat')]}
    # Tab-separated without a header: the same columns.
    tabs = write(tmp_path, 'a.wav\t0.5\t1.5\tdog\n', 'plain.tsv')
    assert read_strong_labels(tabs) == {'a.wav': [(0.5, 1.5, 'dog')]}


def test_reads_desed_tab_separated_with_header_and_empty_clips(tmp_path):
    text = ('filename\tonset\toffset\tevent_label\r\n'
            'Y00.wav\t0.0\t1.5\tSpeech\r\n'
            'Y00.wav\t1.2\t4.75\tDog\r\n'
            'Y01.wav\t\t\t\r\n'                 # a clip with no events
            'Y02.wav\tnan\tnan\t\r\n')
    assert read_strong_labels(write(tmp_path, text, 'meta.tsv'), labels=['Speech', 'Dog']) == {
        'Y00.wav': [(0.0, 1.5, 'Speech'), (1.2, 4.75, 'Dog')], 'Y01.wav': [], 'Y02.wav': []}


def test_header_columns_in_any_order_extra_columns_and_byte_order_mark(tmp_path):
    text = '\ufeffevent_label,filename,offset,onset,annotator\ndog,a.wav,2.0,1.0,anna\n"car, horn",a.wav,3,2.5,bo\n'
    assert read_strong_labels(write(tmp_path, text)) == {'a.wav': [(1.0, 2.0, 'dog'), (2.5, 3.0, 'car, horn')]}
    assert read_strong_labels(write(tmp_path, 'filename,onset,offset,label\n', 'empty.csv')) == {}


@pytest.mark.parametrize('text, words', [
    ('a.wav,1.5,1.5,dog\n', 'line 1: onset 1.5 must be before offset 1.5'),
    ('filename,onset,offset,label\na.wav,0,1,dog\na.wav,2.0,1.0,dog\n', 'line 3: onset 2.0 must be before offset 1.0'),
    ('a.wav,-0.5,1.0,dog\n', 'line 1: onset -0.5 is negative'),
    ('a.wav,0.5,inf,dog\n', 'line 1: offset is inf; give a finite number of seconds'),
    ('a.wav,0.5,nan,dog\n', 'line 1: offset is nan'),
    ('a.wav,zero,1.0,dog\n', "line 1: onset 'zero' is not a number of seconds"),
    ('a.wav,0,1,dog\n\nb.wav,0,1,bird\n', "line 3: label 'bird' is not one of the labels ['cat', 'dog']"),
    ('a.wav,0,1\n', 'line 1: expected 4 columns (filename, onset, offset, label), got 3'),
    ('a.wav,0,1,dog,5\n', 'line 1: expected 4 columns'),
    ('filename,onset,label\na.wav,0,dog\n', "line 1: the header ['filename', 'onset', 'label'] has no 'offset' column"),
    ('filename\tonset\toffset\tevent_label\na.wav\t0.5\t1.0\n', 'line 2: expected 4 columns'),
    (',0,1,dog\n', 'line 1: the filename is empty'),
    ('a.wav,0,1,\n', 'line 1: the label is empty'),
    ('a.wav,,1,dog\n', "line 1: onset '' is not a number"),
])
def test_errors_name_the_file_and_line(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        read_strong_labels(path, labels=['cat', 'dog'])
    assert str(info.value).startswith(path + ', ') and words in str(info.value)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(DatasetError, match='strong-label file not found: .*nope.csv'):
        read_strong_labels(tmp_path / 'nope.csv')
    with pytest.raises(ValueError, match='path must be the path of a strong-label CSV file'):
        read_strong_labels(None)
    with pytest.raises(ValueError, match='labels must be a non-empty list'):
        read_strong_labels(write(tmp_path, 'a.wav,0,1,dog\n'), labels='dog')


def test_write_then_read_gives_the_same_events(tmp_path):
    events = {'x.wav': [(0.1, 0.30000000000000004, 'dog'), (1 / 3, 2.5, 'car, horn')], 'quiet.wav': []}
    path = str(tmp_path / 'out' / 'labels.csv')
    write_strong_labels(path, events)
    assert open(path, encoding='utf-8').readline() == 'filename,onset,offset,label\n'
    assert read_strong_labels(path) == events   # exact floats, empty clips kept
    with pytest.raises(ValueError, match='events_by_file must be'):
        write_strong_labels(path, [(0, 1, 'dog')])


# ----- frame targets -----

def test_frame_targets_mark_frames_whose_centre_is_inside():
    # hop 0.1: frame centres 0.05, 0.15, ... An event 0.22 - 0.57 holds the centres 0.25 .. 0.55:
    # frames 2..5. 0.31 - 0.34 holds no centre: its midpoint 0.325 is in frame 3.
    # 0.8 - 5.0 runs past the 10 frames: frames 8, 9.
    targets = frame_targets([(0.22, 0.57, 'dog'), (0.31, 0.34, 'cat'), (0.8, 5.0, 'dog')], 10, 0.1, ['dog', 'cat'])
    assert targets.dtype == np.float32 and targets.shape == (10, 2)
    assert np.flatnonzero(targets[:, 0]).tolist() == [2, 3, 4, 5, 8, 9]
    assert np.flatnonzero(targets[:, 1]).tolist() == [3]
    # frame_offset_seconds shifts the frames: the same event 1 s later over frames starting at 1 s.
    shifted = frame_targets([(1.22, 1.57, 'dog')], 10, 0.1, ['dog'], frame_offset_seconds=1.0)
    assert np.flatnonzero(shifted[:, 0]).tolist() == [2, 3, 4, 5]
    assert frame_targets([(20.0, 21.0, 'dog')], 10, 0.1, ['dog']).sum() == 0    # outside the clip
    assert frame_targets([], 0, 0.1, ['dog']).shape == (0, 1)


def test_frame_targets_and_detect_events_agree_within_half_a_hop():
    truth = [(0.123, 1.987, 'dog'), (1.5, 2.25, 'cat'), (3.04, 3.61, 'dog')]
    hop = 0.02
    targets = frame_targets(truth, 250, hop, ['dog', 'cat'])
    config = EventConfig(median_filter_seconds=0, min_duration_seconds=0, min_gap_seconds=0)
    found = detect_events(targets, hop, ['dog', 'cat'], config)
    assert [e['label'] for e in found] == ['dog', 'cat', 'dog']
    for event, (onset, offset, label) in zip(found, sorted(truth)):
        assert abs(event['onset'] - onset) <= hop / 2 + 1e-9 and abs(event['offset'] - offset) <= hop / 2 + 1e-9


@pytest.mark.parametrize('kwargs, words', [
    ({'events': [(0.1, 0.2, 'bird')]}, "events[0]: label 'bird' is not one of the labels"),
    ({'events': [(0.3, 0.2, 'dog')]}, 'events[0]: need finite times with onset < offset'),
    ({'events': [(0.1, float('nan'), 'dog')]}, 'events[0]: need finite times'),
    ({'events': [(0.1, 0.2)]}, 'events[0] must be an (onset, offset, label) tuple'),
    ({'events': 'dog'}, 'events must be a list'),
    ({'num_frames': -1}, 'num_frames must be an int >= 0'),
    ({'num_frames': 2.5}, 'num_frames must be an int'),
    ({'frame_hop_seconds': 0}, 'frame_hop_seconds must be a positive number'),
    ({'labels': []}, 'labels must be a non-empty list'),
    ({'frame_offset_seconds': float('nan')}, 'frame_offset_seconds must be a finite number'),
])
def test_frame_targets_reject_bad_arguments(kwargs, words):
    args = {'events': [], 'num_frames': 10, 'frame_hop_seconds': 0.1, 'labels': ['dog']}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        frame_targets(**args)
    assert words in str(info.value)


# ----- generated scenes -----

SCENE_ARGS = dict(num_scenes=4, seconds=4.0, classes=4, seed=3, sample_rate=16000, events_per_scene=(3, 6),
                  event_seconds=(0.3, 1.5))


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    return make_scenes(str(tmp_path_factory.mktemp('scenes') / 'set'), **SCENE_ARGS)


def load_scene_labels(folder):
    return read_strong_labels(os.path.join(folder, 'meta', 'events.csv'),
                              labels=['tone', 'chirp', 'noise_burst', 'clicks'])


def test_scenes_layout_and_labels(scenes):
    labels = load_scene_labels(scenes)
    assert list(labels) == [f'scene_{i:04d}.wav' for i in range(4)]
    overlaps = 0
    for name, events in labels.items():
        wave, sr = sf.read(os.path.join(scenes, 'audio', name))
        assert sr == 16000 and wave.shape == (64000,)
        assert 3 <= len(events) <= 6
        for i, (onset, offset, label) in enumerate(events):
            assert 0 <= onset < offset <= 4.0 and offset - onset <= 1.5
            for other_onset, other_offset, other_label in events[i + 1:]:
                if other_onset < offset:
                    overlaps += 1
                    # Two events of one class never overlap, and stay 0.3 s apart.
                    assert other_label != label
                if other_label == label:
                    assert other_onset >= offset + 0.3 - 1e-9 or other_offset + 0.3 <= onset + 1e-9
    assert overlaps >= 2, 'the scenes should hold overlapping events'


def test_scene_events_are_audible_where_labelled(scenes):
    for name, events in load_scene_labels(scenes).items():
        wave, sr = sf.read(os.path.join(scenes, 'audio', name))
        quiet = np.ones(len(wave), dtype=bool)
        for onset, offset, _ in events:
            quiet[int(onset * sr):int(np.ceil(offset * sr))] = False
        background = np.sqrt(np.mean(wave[quiet] ** 2))
        for onset, offset, label in events:
            sound = wave[int(onset * sr):int(offset * sr)]
            # Well above the background over the event, and already there in its first 50 ms
            # (the labelled onset is where the sound starts, not the start of a silent lead-in).
            assert np.sqrt(np.mean(sound ** 2)) > 4 * background, (name, onset, label)
            assert np.abs(sound[:int(0.05 * sr)]).max() > 4 * background, (name, onset, label)


def test_scenes_are_deterministic_and_reused(scenes, tmp_path):
    again = make_scenes(str(tmp_path / 'again'), **SCENE_ARGS)
    for name in os.listdir(os.path.join(scenes, 'audio')):
        a, _ = sf.read(os.path.join(scenes, 'audio', name))
        b, _ = sf.read(os.path.join(again, 'audio', name))
        assert np.array_equal(a, b)
    assert load_scene_labels(again) == load_scene_labels(scenes)
    # The same call on a complete folder writes nothing.
    stamp = os.stat(os.path.join(again, 'meta', 'events.csv')).st_mtime_ns
    assert make_scenes(again, **SCENE_ARGS) == again
    assert os.stat(os.path.join(again, 'meta', 'events.csv')).st_mtime_ns == stamp
    # Another seed: other scenes, remade in the same folder.
    make_scenes(again, **dict(SCENE_ARGS, seed=4))
    assert load_scene_labels(again) != load_scene_labels(scenes)


def test_scene_classes_by_name(tmp_path):
    folder = make_scenes(str(tmp_path / 'named'), num_scenes=1, seconds=2.0, classes=['hum', 'beeps'],
                         sample_rate=16000, events_per_scene=(4, 4), event_seconds=(0.2, 0.4))
    [events] = read_strong_labels(os.path.join(folder, 'meta', 'events.csv'), labels=['hum', 'beeps']).values()
    assert {label for _, _, label in events} <= {'hum', 'beeps'} and events


@pytest.mark.parametrize('kwargs, words', [
    ({'classes': ['tone', 'violin']}, "classes must be distinct names from ['tone', 'chirp'"),
    ({'classes': ['tone', 'tone']}, 'classes must be distinct names'),
    ({'classes': 11}, 'classes must be an int from 1 to 10, got 11'),
    ({'seconds': 0.5}, 'seconds must be a number of seconds in [1, 600]'),
    ({'seconds': '10'}, "seconds must be a number of seconds in [1, 600] (for generated scenes), got '10'"),
    ({'num_scenes': 0}, 'num_scenes must be a positive int, got 0'),
    ({'sample_rate': 8000}, 'sample_rate must be an int >= 16000, got 8000'),
    ({'events_per_scene': (5, 2)}, 'events_per_scene must be a (smallest, largest) pair with'),
    ({'events_per_scene': 3}, 'events_per_scene must be a (smallest, largest) pair'),
    ({'event_seconds': (0.5, 20.0)}, 'event_seconds must be a (smallest, largest) pair with 0.05 <= smallest'),
    ({'event_seconds': ('a', 1.0)}, 'event_seconds must be a finite number of seconds'),
    ({'folder': 5}, 'folder must be a folder path'),
])
def test_scene_arguments_are_checked(tmp_path, kwargs, words):
    args = dict(folder=str(tmp_path / 'bad'), num_scenes=1, seconds=2.0)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        make_scenes(**args)
    assert words in str(info.value)
    assert not os.path.exists(tmp_path / 'bad')


def test_scenes_refuse_a_folder_holding_other_files(tmp_path):
    (tmp_path / 'mine.txt').write_text('keep me')
    with pytest.raises(ValueError, match='already holds other files'):
        make_scenes(str(tmp_path), num_scenes=1, seconds=2.0)
    assert os.listdir(tmp_path) == ['mine.txt']


# ----- StrongLabelDataset arguments -----

@pytest.mark.parametrize('kwargs, words', [
    ({'frame_hop_seconds': float('inf')}, 'frame_hop_seconds must be a positive number of seconds'),
    ({'frame_hop_seconds': float('nan')}, 'frame_hop_seconds must be a positive number'),
    ({'frame_hop_seconds': '0.01'}, "frame_hop_seconds must be a positive number of seconds (the model's "
                                    "front-end hop, e.g. 0.01), got '0.01'"),
    ({'frame_hop_seconds': 0}, 'frame_hop_seconds must be a positive'),
    ({'frame_hop_seconds': True}, 'frame_hop_seconds must be a positive'),
    ({'duration': 0.004}, 'duration=0.004 s holds no frame of frame_hop_seconds=0.01 s'),
    ({'duration': 0.3, 'frame_hop_seconds': 0.7}, 'duration=0.3 s holds no frame of frame_hop_seconds=0.7 s'),
    ({'duration': '10'}, "duration must be a positive number of seconds, got '10'"),
])
def test_strong_label_dataset_refuses_bad_arguments_at_once(tmp_path, kwargs, words):
    from paddle_soundcls.datasets import DatasetError, StrongLabelDataset
    sf.write(tmp_path / 'a.wav', np.zeros(16000, 'float32'), 16000)
    path = write(tmp_path, 'a.wav,0.2,0.5,dog\n')
    StrongLabelDataset(path, labels=['dog'], duration=1.0)[0]   # the same files with good arguments
    with pytest.raises(DatasetError) as info:
        StrongLabelDataset(path, labels=['dog'], **{'duration': 1.0, **kwargs})
    assert words in str(info.value)
