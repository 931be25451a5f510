"""Test signals: every test builds its own audio."""
import numpy as np


def tone(freq, seconds=1.0, sr=32000, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype('float32')


def noise(seconds=1.0, sr=32000, amp=0.1, seed=0):
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype('float32')


def chirp(f0, f1, seconds=1.0, sr=32000, amp=0.4):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)).astype('float32')
