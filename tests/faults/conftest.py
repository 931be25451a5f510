"""Fixtures of the fault suite (tests/conftest.py still gives every test its own weights cache)."""
import os

import numpy as np
import pytest
import soundfile as sf

from faultkit import FaultServer

SR = 32000


@pytest.fixture
def server():
    s = FaultServer()
    yield s
    s.close()


def make_two_class_folder(root, clips_per_class, seed, seconds=0.5):
    """A low tone against high-passed noise bursts, with random level and pitch: easy to learn."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    t = np.arange(n) / SR
    for i in range(clips_per_class):
        floor = 0.01 * rng.standard_normal(n)
        tone = 0.3 * rng.uniform(0.3, 1) * np.sin(2 * np.pi * rng.uniform(300, 500) * t)
        hiss = np.diff(rng.standard_normal(n) * rng.uniform(0.05, 0.2), prepend=0.0)
        for name, wave in (('tone', tone), ('hiss', hiss)):
            os.makedirs(os.path.join(root, name), exist_ok=True)
            sf.write(os.path.join(root, name, f'{i:02d}.wav'), (wave + floor).astype('float32'), SR,
                     subtype='PCM_16')
    return str(root)


@pytest.fixture(scope='session')
def train_data(tmp_path_factory):
    """DATA/train (8 clips) and DATA/dev (6 clips), two classes, 0.5 s each."""
    root = tmp_path_factory.mktemp('train_data')
    make_two_class_folder(root / 'train', 4, seed=1)
    make_two_class_folder(root / 'dev', 3, seed=2)
    return str(root)
