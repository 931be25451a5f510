"""make_scenes writes a train / dev / test split of its scenes that StrongLabelDataset reads."""
import os

import pytest

from paddle_soundcls.datasets import StrongLabelDataset
from paddle_soundcls.datasets.scenes import make_scenes
from paddle_soundcls.datasets.strong import read_strong_labels
from paddle_soundcls.errors import DatasetError


def test_the_split_covers_every_scene_once_and_loads(tmp_path):
    folder = make_scenes(str(tmp_path / 'scenes'), num_scenes=10, seconds=2.0, classes=3, sample_rate=16000,
                         events_per_scene=(1, 2), event_seconds=(0.2, 0.5), split=(0.6, 0.2, 0.2))
    everything = read_strong_labels(os.path.join(folder, 'meta', 'events.csv'))
    parts = {part: read_strong_labels(os.path.join(folder, 'meta', f'{part}_events.csv'))
             for part in ('train', 'dev', 'test')}
    assert [len(parts[p]) for p in ('train', 'dev', 'test')] == [6, 2, 2]
    names = [name for part in parts.values() for name in part]
    assert sorted(names) == sorted(everything)                      # each scene in exactly one part
    for part in parts.values():
        assert all(part[name] == everything[name] for name in part)  # with its own events
    dev = StrongLabelDataset(os.path.join(folder, 'meta', 'dev_events.csv'), audio_dir=os.path.join(folder, 'audio'),
                             labels=['tone', 'chirp', 'noise_burst'], mode='dev', duration=2.0, sample_rate=16000,
                             frame_hop_seconds=0.01)
    assert len(dev) == 2
    # A different seed splits differently; the same arguments give the same split.
    again = make_scenes(str(tmp_path / 'again'), num_scenes=10, seconds=2.0, classes=3, sample_rate=16000,
                        events_per_scene=(1, 2), event_seconds=(0.2, 0.5), split=(0.6, 0.2, 0.2))
    assert read_strong_labels(os.path.join(again, 'meta', 'dev_events.csv')) == parts['dev']


@pytest.mark.parametrize('split', [(0.5, 0.5), (0.6, 0.3, 0.3), (1.2, -0.1, -0.1), 'train', (0.5, True, 0.5)])
def test_bad_splits_are_refused(tmp_path, split):
    with pytest.raises(ValueError, match=r'split must be the \(train, dev, test\) fractions'):
        make_scenes(str(tmp_path / 'bad'), num_scenes=2, seconds=2.0, split=split)
    assert not os.path.exists(tmp_path / 'bad')


def test_a_table_away_from_its_audio_says_where_it_looked_and_where_the_audio_is(tmp_path):
    folder = make_scenes(str(tmp_path / 'scenes'), num_scenes=3, seconds=2.0, classes=2, sample_rate=16000,
                         events_per_scene=(1, 1), event_seconds=(0.2, 0.5), split=(1.0, 0.0, 0.0))
    table = os.path.join(folder, 'meta', 'events.csv')
    with pytest.raises(DatasetError) as info:
        StrongLabelDataset(table, mode='train', duration=2.0)
    message = str(info.value)
    assert f'missing from {os.path.join(folder, "meta")}' in message
    assert f"audio_dir={os.path.join(folder, 'audio')!r}" in message
    assert len(StrongLabelDataset(table, audio_dir=os.path.join(folder, 'audio'), duration=2.0)) == 3
    os.rename(os.path.join(folder, 'audio'), os.path.join(folder, 'elsewhere'))  # no sibling audio/ holds them
    with pytest.raises(DatasetError, match=r'missing from .*meta.*Pass audio_dir='):
        StrongLabelDataset(table, mode='train', duration=2.0)
