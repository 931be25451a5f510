"""The log-mel math in numpy. Shared by the Paddle front end (as buffers) and the
Paddle-free deployment runtime, so both compute exactly the same filters."""
from functools import lru_cache

import numpy as np

from .config import FrontendConfig


def hz_to_mel(freq, htk=False):
    freq = np.asanyarray(freq, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    # Slaney: linear below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mels = freq / f_sp
    log_part = freq >= min_log_hz
    return np.where(log_part, min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep, mels)


def mel_to_hz(mels, htk=False):
    mels = np.asanyarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freqs = f_sp * mels
    log_part = mels >= min_log_mel
    return np.where(log_part, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max=None, htk=False, norm='slaney'):
    """Triangular mel filters, shape [n_mels, n_fft // 2 + 1] (float64)."""
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(f_min, htk), hz_to_mel(f_max, htk), n_mels + 2), htk)
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == 'slaney':
        weights *= (2.0 / (mel_points[2:n_mels + 2] - mel_points[:n_mels]))[:, None]
    elif norm is not None:
        raise ValueError(f"mel_norm must be 'slaney' or None, got {norm!r}")
    return weights


def window(name, length):
    """Periodic window (the STFT convention), float64."""
    if name != 'hann':
        raise ValueError(f"only the 'hann' window is supported, got {name!r}")
    n = np.arange(length)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)


def stft_window(cfg: FrontendConfig):
    """The analysis window padded to n_fft, centred, as librosa does."""
    win = window(cfg.window, cfg.win_length)
    left = (cfg.n_fft - cfg.win_length) // 2
    return np.pad(win, (left, cfg.n_fft - cfg.win_length - left))


def power_to_db(power, cfg: FrontendConfig):
    log_spec = 10.0 * np.log10(np.maximum(power, cfg.amin))
    log_spec -= 10.0 * np.log10(max(cfg.amin, cfg.ref))
    if cfg.top_db is not None:
        log_spec = np.maximum(log_spec, log_spec.max(axis=(-2, -1), keepdims=True) - cfg.top_db)
    return log_spec


@lru_cache(maxsize=8)
def _analysis_arrays(cfg: FrontendConfig):
    """float32 window and transposed filter bank for a config (configs are frozen, so hashable)."""
    fbank = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.htk, cfg.mel_norm)
    return stft_window(cfg).astype(np.float32), np.ascontiguousarray(fbank.T, dtype=np.float32)


def logmel(waveforms, cfg: FrontendConfig = FrontendConfig()):
    """Log-mel features of a batch in numpy.

    waveforms: [batch, samples] or [samples] float array at cfg.sample_rate.
    Returns float32 [batch, frames, n_mels] (or [frames, n_mels]).
    """
    x = np.asarray(waveforms, dtype=np.float32)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    if cfg.center:
        pad = cfg.n_fft // 2
        if x.shape[-1] <= pad and cfg.pad_mode == 'reflect':
            raise ValueError(f'clip of {x.shape[-1]} samples is too short for reflect padding of {pad}')
        x = np.pad(x, ((0, 0), (pad, pad)), mode=cfg.pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft, axis=-1)[:, ::cfg.hop_length]
    window_, fbank_t = _analysis_arrays(cfg)
    spec = np.fft.rfft(frames * window_, axis=-1)
    power = np.abs(spec) ** cfg.power
    mel = power @ fbank_t
    out = power_to_db(mel, cfg).astype(np.float32)
    return out[0] if single else out
