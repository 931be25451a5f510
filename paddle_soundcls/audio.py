"""Audio in: read a file or take an array, downmix to mono, resample, check the values.

numpy + soundfile only, so the Paddle-free deployment runtime uses exactly the same
loading and resampling as training and `Module.predict` (the same rate everywhere).
"""
import math
import os
from functools import lru_cache

import numpy as np
import soundfile as sf

AUDIO_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3', '.aiff', '.aif', '.au')


class AudioError(ValueError):
    """An input that is not usable audio; the message names the file or argument."""


def read_audio(path):
    """Read a file as float32 [samples, channels] and its sample rate."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f'audio file not found: {path}')
    try:
        data, sr = sf.read(path, dtype='float32', always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioError(f'cannot read audio file {path}: {exc}. Is it a WAV/FLAC/OGG file?') from None
    return data, sr


def to_mono(wave, name='waveform'):
    """[samples] or [samples, channels] / [channels, samples] -> [samples] float32.

    2-D arrays put channels on the shorter axis (audio has far more samples than channels).
    """
    wave = np.asarray(wave)
    if wave.dtype.kind not in 'fiu':
        raise AudioError(f'{name}: expected a numeric array, got dtype {wave.dtype}')
    if wave.ndim == 2:
        wave = wave.mean(axis=0 if wave.shape[0] < wave.shape[1] else 1)
    elif wave.ndim != 1:
        raise AudioError(f'{name}: expected a 1-D or 2-D waveform, got shape {wave.shape}')
    if wave.dtype.kind in 'iu':
        wave = wave / float(np.iinfo(wave.dtype).max)
    return np.ascontiguousarray(wave, dtype=np.float32)


def check_waveform(wave, name='waveform'):
    if wave.size == 0:
        raise AudioError(f'{name} has no samples')
    if not np.all(np.isfinite(wave)):
        raise AudioError(f'{name} contains NaN or Inf samples; clean or drop this input')
    return wave


@lru_cache(maxsize=32)
def _polyphase_filter(up, down, zero_crossings=16, beta=8.6):
    """Kaiser-windowed sinc low-pass for rational resampling, split into `up` phases."""
    cutoff = 1.0 / max(up, down)
    half = zero_crossings * max(up, down)
    t = np.arange(-half, half + 1)
    taps = up * cutoff * np.sinc(cutoff * t) * np.kaiser(len(t), beta)
    taps_per_phase = math.ceil(len(taps) / up)
    taps = np.pad(taps, (0, taps_per_phase * up - len(taps)))
    # phases[p, k] = taps[p + k * up]: the taps that meet input samples for output phase p.
    return taps.reshape(taps_per_phase, up).T.astype(np.float32), half


def resample(wave, orig_sr, target_sr, chunk=1 << 16):
    """Band-limited rational resampling of a 1-D float32 array (polyphase windowed sinc)."""
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr == target_sr:
        return wave
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    phases, half = _polyphase_filter(up, down)
    taps_per_phase = phases.shape[1]
    n_out = math.ceil(len(wave) * up / down)
    # Output n sits at position n*down in the upsampled signal; the filter is centred there.
    pad_left = taps_per_phase + half // up + 1
    x = np.pad(wave, (pad_left, taps_per_phase + half // up + 2))
    out = np.empty(n_out, dtype=np.float32)
    k = np.arange(taps_per_phase)
    for start in range(0, n_out, chunk):
        n = np.arange(start, min(start + chunk, n_out))
        pos = n * down + half            # index into the (virtually) upsampled, filter-delayed signal
        base, phase = pos // up, pos % up
        gathered = x[(base + pad_left)[:, None] - k[None, :]]
        out[start:start + len(n)] = np.einsum('nk,nk->n', gathered, phases[phase])
    return out


def load(source, sample_rate, target_sr, name=None):
    """A path or an array -> mono float32 at target_sr, checked.

    source: a file path (its own rate is used; `sample_rate` may be None) or a numpy
    waveform at `sample_rate` Hz.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        data, sr = read_audio(source)
        wave = to_mono(data.T, name) if data.shape[1] > 1 else data[:, 0]
    else:
        name = name or 'waveform'
        if sample_rate is None:
            raise AudioError(f'{name}: sample_rate is required for numpy waveforms (the rate of the array, in Hz)')
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise AudioError(f'sample_rate must be a positive int (Hz), got {sample_rate!r}')
        wave, sr = to_mono(source, name), int(sample_rate)
    check_waveform(wave, name)
    return resample(wave, sr, target_sr)


def fix_length(wave, length, rng=None):
    """Crop or zero-pad to `length` samples: a centred crop, or a random one drawn from the
    np.random.Generator `rng` (training)."""
    n = len(wave)
    if n > length:
        offset = int(rng.integers(0, n - length + 1)) if rng is not None else (n - length) // 2
        return wave[offset:offset + length]
    if n < length:
        return np.pad(wave, (0, length - n))
    return wave
