"""The log-mel math in numpy. Shared by the Paddle front end (as buffers) and the
Paddle-free deployment runtime, so both compute exactly the same filters."""
from functools import lru_cache

import numpy as np

from .config import FrontendConfig
from ..errors import ArgumentError, AudioError

# Frames whose spectra mel_power computes at once.
MEL_BLOCK = 256


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


def mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max=None, htk=False, norm='slaney', banks='librosa'):
    """Mel filters, shape [n_mels, n_fft // 2 + 1] (float64).

    banks='librosa': librosa.filters.mel (triangles in Hz, `htk` scale, `norm` area normalisation).
    banks='kaldi': torchaudio.compliance.kaldi.get_mel_banks plus a zero Nyquist column
    (triangles in mel on the HTK scale, unnormalised; `htk` and `norm` do not apply).
    """
    if banks == 'kaldi':
        return kaldi_mel_banks(sample_rate, n_fft, n_mels, f_min, f_max)
    if banks != 'librosa':
        raise ArgumentError(f"mel banks must be 'librosa' or 'kaldi', got {banks!r}")
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
        raise ArgumentError(f"mel_norm must be 'slaney' or None, got {norm!r}")
    return weights


def kaldi_mel_banks(sample_rate, n_fft, n_mels, f_min, f_max=None):
    """Kaldi's mel banks without VTLN warping, [n_mels, n_fft // 2 + 1] (float64).

    Band i rises linearly in mel from mel(f_min) + i * delta to its centre one delta higher
    and falls back to zero one delta further, delta = (mel(f_max) - mel(f_min)) / (n_mels + 1),
    mel(f) = 1127 ln(1 + f / 700). Kaldi covers the FFT bins below Nyquist only, so the
    Nyquist bin gets a zero weight.
    """
    nyquist = sample_rate / 2.0
    f_max = nyquist if f_max is None else float(f_max)
    if f_max <= 0.0:  # Kaldi's convention: a non-positive high frequency counts back from Nyquist
        f_max += nyquist
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ArgumentError(f'Kaldi mel banks need 0 <= f_min < f_max <= {nyquist} Hz, got f_min {f_min}, f_max {f_max}')
    mel_low, mel_high = 1127.0 * np.log1p(np.array([f_min, f_max]) / 700.0)
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + delta * np.arange(n_mels)[:, None]
    centre, right = left + delta, left + 2.0 * delta
    bin_mels = 1127.0 * np.log1p(sample_rate / n_fft * np.arange(n_fft // 2) / 700.0)[None, :]
    weights = np.maximum(0.0, np.minimum((bin_mels - left) / (centre - left), (right - bin_mels) / (right - centre)))
    return np.pad(weights, ((0, 0), (0, 1)))


def config_filterbank(cfg: FrontendConfig):
    """The mel filters [n_mels, n_fft // 2 + 1] (float64) that `cfg` describes."""
    return mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.htk, cfg.mel_norm,
                          cfg.mel_banks)


def window(name, length, periodic=True):
    """Periodic (the STFT convention) or symmetric window, float64."""
    if name != 'hann':
        raise ArgumentError(f"only the 'hann' window is supported, got {name!r}")
    n = np.arange(length)
    period = length if periodic else length - 1
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / max(period, 1))


def stft_window(cfg: FrontendConfig):
    """The analysis window padded to n_fft, centred, as librosa and torch.stft do."""
    win = window(cfg.window, cfg.win_length, cfg.window_periodic)
    left = (cfg.n_fft - cfg.win_length) // 2
    return np.pad(win, (left, cfg.n_fft - cfg.win_length - left))


def preemphasis(waveforms, coefficient):
    """y[n] = x[n + 1] - coefficient * x[n] along the last axis (one sample shorter)."""
    return waveforms[..., 1:] - coefficient * waveforms[..., :-1]


def power_to_db(power, cfg: FrontendConfig):
    log_spec = 10.0 * np.log10(np.maximum(power, cfg.amin))
    log_spec -= 10.0 * np.log10(max(cfg.amin, cfg.ref))
    if cfg.top_db is not None:
        log_spec = np.maximum(log_spec, log_spec.max(axis=(-2, -1), keepdims=True) - cfg.top_db)
    return log_spec


def log_compress(mel, cfg: FrontendConfig):
    """The log step and the final (x + shift) / scale of the front end."""
    out = power_to_db(mel, cfg) if cfg.log == 'db' else np.log(mel + cfg.log_offset)
    if (cfg.shift, cfg.scale) != (0.0, 1.0):
        out = (out + cfg.shift) / cfg.scale
    return out


class _MelBands:
    """A filter bank [n_mels, bins] as what its bands cover: each band's weights over its bins, one after
    another (`weights`, gathered from the power spectrum by `bins`), band m from `starts[m]`. Each band
    covers a few bins (about two bands a bin), so this is a fraction of a dense product's work, in the
    calling thread (a BLAS product spreads small products over threads that then compete with the
    engine's for the cores), and a row's sum does not depend on the rows beside it."""

    def __init__(self, fbank):
        spans = []
        for row in fbank:
            nonzero = np.flatnonzero(row)
            spans.append((nonzero[0], nonzero[-1] + 1) if len(nonzero) else (0, 0))
        self.empty = np.array([end <= start for start, end in spans])
        spans = [(0, 1) if end <= start else (start, end) for start, end in spans]   # zeroed after the sum
        self.bins = np.concatenate([np.arange(start, end) for start, end in spans])
        self.weights = np.concatenate([fbank[m, start:end] for m, (start, end) in enumerate(spans)]).astype(np.float32)
        self.starts = np.cumsum([0] + [end - start for start, end in spans[:-1]])

    def __call__(self, power):
        """power [rows, bins] float32 -> mel power [rows, n_mels] float32."""
        out = np.add.reduceat(power[:, self.bins] * self.weights, self.starts, axis=1)
        out[:, self.empty] = power[:, :1] * 0.0   # 0, or NaN where the frame holds a NaN, as a product gives
        return out


@lru_cache(maxsize=8)
def _analysis_arrays(cfg: FrontendConfig):
    """float64 window and the mel bands for a config (configs are frozen, so hashable)."""
    return stft_window(cfg), _MelBands(config_filterbank(cfg))


def padded_signal(waveforms, cfg: FrontendConfig):
    """[batch, samples] float32 -> what the STFT frames: pre-emphasised and centre-padded as `cfg` says."""
    x = waveforms
    if cfg.preemphasis is not None:
        x = preemphasis(x, np.float32(cfg.preemphasis))
    if cfg.center:
        pad = cfg.n_fft // 2
        if x.shape[-1] <= pad and cfg.pad_mode == 'reflect':
            raise AudioError(f'clip of {x.shape[-1]} samples is too short for reflect padding of {pad}')
        x = np.pad(x, ((0, 0), (pad, pad)), mode=cfg.pad_mode)
    return x


def stft_frames(padded, cfg: FrontendConfig):
    """Views of the n_fft-sample frames of padded_signal's output: [batch, frames, n_fft]."""
    return np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft, axis=-1)[:, ::cfg.hop_length]


def mel_power(frames, cfg: FrontendConfig):
    """Frames of samples [..., n_fft] -> their mel power [..., n_mels] float32, each row from its frame
    alone (log_compress makes the features of it).
    The FFT in float64: quiet mel bins sit 90 dB below loud ones, where a float32 FFT is off by 2e-3
    dB (numpy's FFT of float32 frames computes in float64 too, and takes longer than this). A row's
    numbers do not depend on the rows computed with it (_MelBands)."""
    window_, bands = _analysis_arrays(cfg)
    out = np.empty(frames.shape[:-1] + (cfg.n_mels,), np.float32)
    # Each clip's frames MEL_BLOCK at a time, from the views: the float64 spectra of a whole batch
    # (or a copy of its overlapping frames) would not stay in the cache (16 windows of 2 s took twice
    # as long per frame as one).
    for clip in np.ndindex(frames.shape[:-2]):
        for first in range(0, frames.shape[-2], MEL_BLOCK):
            part = clip + (slice(first, first + MEL_BLOCK),)
            spec = np.fft.rfft(frames[part] * window_, axis=-1)
            if cfg.power == 2.0:   # products: abs() takes a square root that the square undoes
                power = spec.real * spec.real + spec.imag * spec.imag
            else:
                power = np.abs(spec) ** cfg.power
            out[part] = bands(power.astype(np.float32))
    return out


def logmel(waveforms, cfg: FrontendConfig = FrontendConfig()):
    """Log-mel features of a batch in numpy.

    waveforms: [batch, samples] or [samples] float array at cfg.sample_rate.
    Returns float32 [batch, frames, n_mels] (or [frames, n_mels]).
    """
    x = np.asarray(waveforms, dtype=np.float32)
    single = x.ndim == 1
    out = log_compress(mel_power(stft_frames(padded_signal(np.atleast_2d(x), cfg), cfg), cfg), cfg).astype(np.float32)
    return out[0] if single else out


class OverlapFeatures:
    """logmel() of consecutive overlapping windows of one stream, each frame of the stream computed
    once: of a window, the frames that lie inside it (their n_fft samples are the stream's, untouched by
    the centre padding) are kept for the next windows, which take them instead of computing them again.
    At 2-s windows every 0.5 s that is a quarter of the work.

    window(start, samples) -> [frames, n_mels], logmel(samples) of the window starting at stream sample
    `start` (a multiple of hop_length): its edge frames (which see its padding) and the frames no earlier
    window held computed from its own samples, the others taken from the earlier windows. Every frame
    is computed on its own (mel_power), so these are logmel's numbers bit for bit, however the stream's
    audio was chunked. Windows asked for in order of their start share the most; a window that starts
    before the last one, or after a gap, computes all its frames (the same numbers). Frame-wise only: a config with top_db (a floor below the clip's peak) is refused.
    Memory: the frames of about one window.
    """

    def __init__(self, cfg: FrontendConfig):
        if cfg.top_db is not None:
            raise ArgumentError('a front end with top_db normalises each clip as a whole: its windows cannot '
                                'share frames')
        self.cfg = cfg
        self.pad = cfg.n_fft // 2 if cfg.center else 0
        self.lag = 1 if cfg.preemphasis is not None else 0   # pre-emphasis reads the next sample
        self.kept = np.zeros((0, cfg.n_mels), np.float32)   # stream frames [kept_from, kept_from + len)
        self.kept_from = 0

    def window(self, start, samples):
        cfg, hop = self.cfg, self.cfg.hop_length
        if start % hop:
            raise ArgumentError(f'windows of shared features start on a frame (a multiple of {hop} samples), '
                                f'got sample {start}')
        padded = padded_signal(np.asarray(samples, dtype=np.float32)[None], cfg)
        frames = stft_frames(padded, cfg)[0]
        count = len(frames)
        # Frames [inner, outer) of the window see none of its padding: frame i reads padded samples
        # [i * hop, i * hop + n_fft), the window's own from `pad` to `pad + signal length`.
        signal = len(samples) - self.lag
        inner = min(count, -(-self.pad // hop))
        outer = max(inner, min(count, (self.pad + signal - cfg.n_fft) // hop + 1))
        first = start // hop
        known_end = self.kept_from + len(self.kept)
        if self.kept_from <= first + inner <= known_end:
            reuse_end = min(known_end, first + outer)
            reused = self.kept[first + inner - self.kept_from:reuse_end - self.kept_from]
        else:   # the first window, one after a gap or one before the last: nothing to take
            reuse_end, reused = first + inner, self.kept[:0]
        new_from = reuse_end - first   # window frames [new_from, outer) are new inner frames
        rows = np.concatenate([frames[:inner], frames[new_from:outer], frames[outer:]])
        computed = log_compress(mel_power(rows, cfg), cfg).astype(np.float32)
        new = computed[inner:inner + outer - new_from]
        # The next window starts later: it takes inner frames from its own start on.
        self.kept = np.concatenate([reused, new])
        self.kept_from = first + inner
        return np.concatenate([computed[:inner], reused, new, computed[inner + outer - new_from:]])
