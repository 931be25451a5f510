"""Training-time augmentation on batches of waveforms and log-mel features.

The tensor work runs in Paddle, on whatever device the batch is on. All random draws come
from the numpy Generator `rng` passed in: build one per step from (seed, epoch, step) and a
run is reproducible, and a resumed run draws the same numbers, without saving any RNG state.
"""
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import paddle

from ..features.config import settings_from_dict
from .. import validate
from ..errors import ArgumentError, DatasetError


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply; everything is off by default.

    Waveform level (`apply`):
        gain_db: random gain, uniform in [-gain_db, +gain_db] dB per clip (0 = off).
        noise_snr_db: add white Gaussian noise at this signal-to-noise ratio per clip (None = off).
        impulse_responses: a folder of impulse responses (audio files, e.g. of recording
            devices or rooms); each clip is convolved with a random one with probability
            impulse_response_p, and keeps its peak level (None = off).
    Feature level (`apply_features`):
        time_masks, time_mask_width: number of time masks and their maximum width in frames.
        freq_masks, freq_mask_width: number of frequency masks and their maximum width in mel bins.
        mixup_alpha: mixup with lambda ~ Beta(alpha, alpha) (0 = off).
        freq_mixstyle_p, freq_mixstyle_alpha: with probability p per batch, Freq-MixStyle
            (Schmid et al., DCASE 2022/2024 baselines): each clip's per-frequency mean and
            standard deviation over time are mixed with those of a random partner,
            lambda ~ Beta(alpha, alpha) per clip; it simulates other recording devices.
    """
    time_masks: int = 0
    time_mask_width: int = 0
    freq_masks: int = 0
    freq_mask_width: int = 0
    mixup_alpha: float = 0.0
    gain_db: float = 0.0
    noise_snr_db: Optional[float] = None
    impulse_responses: Optional[str] = None
    impulse_response_p: float = 0.0
    freq_mixstyle_p: float = 0.0
    freq_mixstyle_alpha: float = 0.3

    def __post_init__(self):
        for name in ('time_masks', 'time_mask_width', 'freq_masks', 'freq_mask_width'):
            value = getattr(self, name)
            validate.non_negative_int(f'AugmentConfig.{name}', value)
        for count, width in (('time_masks', 'time_mask_width'), ('freq_masks', 'freq_mask_width')):
            if getattr(self, count) > 0 and getattr(self, width) == 0:
                raise ArgumentError(f'AugmentConfig.{count} > 0 needs {width} > 0 (masks of width 0 do nothing)')
        for name in ('mixup_alpha', 'gain_db'):
            validate.non_negative_number(f'AugmentConfig.{name}', getattr(self, name))
        for name in ('impulse_response_p', 'freq_mixstyle_p'):
            validate.probability(f'AugmentConfig.{name}', getattr(self, name))
        validate.positive_number('AugmentConfig.freq_mixstyle_alpha', self.freq_mixstyle_alpha)
        if (self.impulse_responses is None) != (self.impulse_response_p == 0):
            raise ArgumentError('AugmentConfig.impulse_responses (a folder) and impulse_response_p > 0 go together')
        validate.number('AugmentConfig.noise_snr_db', self.noise_snr_db, unit='dB', allow_none=True)

    @property
    def changes_audio(self):
        """True when a waveform-level augmentation (gain or noise) is on."""
        return self.gain_db > 0 or self.noise_snr_db is not None or self.impulse_response_p > 0

    @property
    def enabled(self):
        """True when any augmentation is on."""
        return (self.changes_audio or self.mixup_alpha > 0 or self.freq_mixstyle_p > 0
                or self.time_masks > 0 or self.freq_masks > 0)

    def changed(self):
        """The names of the settings that differ from the defaults (those that are on)."""
        defaults = asdict(AugmentConfig())
        return [name for name, value in asdict(self).items() if value != defaults[name]]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return settings_from_dict(cls, data, 'augmentation')


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise ArgumentError(f'rng must be a numpy Generator (np.random.default_rng(...)), got {type(rng).__name__}')


def _check_ndim(name, x, ndim, shape):
    if x.ndim != ndim:
        raise ArgumentError(f'{name} must be {shape}, got shape {x.shape}')


def _to_device(array, like):
    """A numpy array as a tensor with the dtype and device of `like`."""
    return paddle.to_tensor(array, place=like.place).astype(like.dtype)


def random_gain(waves, max_db, rng):
    """Scale each clip by 10 ** (g / 20), g ~ U(-max_db, max_db) dB.

    Args:
        waves: [B, N] waveforms.
        max_db (float): largest gain change in dB.
        rng: np.random.Generator.
    Returns:
        [B, N] tensor.
    """
    _check_rng(rng)
    _check_ndim('waves', waves, 2, '[batch, samples]')
    if max_db <= 0:
        return waves
    gain_db = rng.uniform(-max_db, max_db, size=waves.shape[0])
    return waves * _to_device(10.0 ** (gain_db / 20.0), waves).unsqueeze(1)


def add_noise(waves, snr_db, rng):
    """Add white Gaussian noise at `snr_db` dB below each clip's own mean power.

    A silent clip has zero power and so gets zero noise: it stays silent.

    Args:
        waves: [B, N] waveforms.
        snr_db (float): signal-to-noise ratio in dB.
        rng: np.random.Generator.
    Returns:
        [B, N] tensor.
    """
    _check_rng(rng)
    _check_ndim('waves', waves, 2, '[batch, samples]')
    noise = rng.standard_normal(size=tuple(waves.shape), dtype=np.float32)
    power = (waves ** 2).mean(axis=1, keepdim=True)
    scale = paddle.sqrt(power / (10.0 ** (snr_db / 10.0)))
    return waves + _to_device(noise, waves) * scale


def _band_mask(batch, length, count, max_width, rng):
    """Boolean [batch, length]: `count` bands per row, width ~ U{0..max_width}, uniform start."""
    mask = np.zeros((batch, length), dtype=bool)
    if count == 0 or length == 0:
        return mask
    widths = rng.integers(0, min(max_width, length) + 1, size=(batch, count))
    starts = rng.integers(0, length - widths + 1)
    for row in range(batch):
        for start, width in zip(starts[row], widths[row]):
            mask[row, start:start + width] = True
    return mask


def spec_augment(feats, time_masks, time_width, freq_masks, freq_width, rng, fill=None):
    """SpecAugment masking (Park et al. 2019) without time warping.

    Each clip gets `time_masks` bands of whole frames and `freq_masks` bands of mel bins, each of
    width uniform in {0, ..., width} at a uniform position. Masked values become the clip's mean
    (log-mel values are in dB, where 0 is not silence), or `fill` when given.

    Args:
        feats: [B, T, M] features.
        time_masks, time_width (int): number and maximum width (frames) of time masks.
        freq_masks, freq_width (int): number and maximum width (bins) of frequency masks.
        rng: np.random.Generator.
        fill (float, optional): value for masked cells.
    Returns:
        [B, T, M] tensor.
    """
    _check_rng(rng)
    _check_ndim('feats', feats, 3, '[batch, frames, mel bins]')
    if time_masks == 0 and freq_masks == 0:
        return feats
    batch, frames, bins = feats.shape
    time_mask = _band_mask(batch, frames, time_masks, time_width, rng)
    freq_mask = _band_mask(batch, bins, freq_masks, freq_width, rng)
    mask = paddle.to_tensor(time_mask[:, :, None] | freq_mask[:, None, :], place=feats.place)
    if fill is None:
        value = feats.mean(axis=[1, 2], keepdim=True)
    else:
        value = paddle.full_like(feats, fill)
    return paddle.where(mask, value.expand_as(feats), feats)


def mixup(feats, targets, alpha, rng):
    """Mixup (Zhang et al. 2018): blend each clip with a partner from a random permutation.

    One lambda ~ Beta(alpha, alpha) per batch: x = lam * x + (1 - lam) * x[perm], and the targets
    the same way, so soft targets stay convex combinations (rows summing to 1 for one-hot input).

    Args:
        feats: [B, T, M] features.
        targets: [B, C] float targets (one-hot or multi-hot).
        alpha (float): Beta distribution parameter, > 0.
        rng: np.random.Generator.
    Returns:
        (feats [B, T, M], targets [B, C] float).
    """
    _check_rng(rng)
    if targets is None:
        raise ArgumentError('mixup needs the targets: pass one-hot [batch, classes] float targets')
    if targets.ndim != 2 or targets.shape[0] != feats.shape[0]:
        raise ArgumentError(f'mixup needs one-hot or multi-hot targets [batch, classes] = [{feats.shape[0]}, C], '
                         f'got shape {targets.shape}; one-hot encode class indices first')
    if not alpha > 0:
        raise ArgumentError(f'mixup alpha must be > 0, got {alpha!r}')
    lam = float(rng.beta(alpha, alpha))
    perm = paddle.to_tensor(rng.permutation(feats.shape[0]), place=feats.place)
    if targets.dtype not in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64):
        targets = targets.astype(feats.dtype)
    mixed_feats = lam * feats + (1.0 - lam) * paddle.index_select(feats, perm)
    mixed_targets = lam * targets + (1.0 - lam) * paddle.index_select(targets, perm)
    return mixed_feats, mixed_targets


def load_impulse_responses(folder, sample_rate):
    """The impulse responses in `folder` (audio files, any rate), mono float32 at `sample_rate`,
    each scaled to unit energy. An error names the folder when it holds no readable audio."""
    from .. import audio
    key = (os.path.abspath(folder), sample_rate)
    if key not in _IMPULSE_RESPONSES:
        if not os.path.isdir(folder):
            raise DatasetError(f'impulse_responses: no such folder: {folder}')
        responses = []
        for path in audio.list_audio_files(folder):
            try:
                ir = audio.load(path, None, sample_rate)
            except audio.AudioError:
                continue
            energy = float(np.sqrt(np.sum(ir.astype(np.float64) ** 2)))
            if energy > 0:
                responses.append((ir / energy).astype(np.float32))
        if not responses:
            raise DatasetError(f'impulse_responses: {folder} holds no readable audio files '
                             f'({", ".join(audio.AUDIO_EXTENSIONS)}) to use as impulse responses')
        _IMPULSE_RESPONSES[key] = responses
    return _IMPULSE_RESPONSES[key]


_IMPULSE_RESPONSES = {}


def convolve_impulse_responses(waves, responses, p, rng):
    """Each clip of [B, N], with probability p, convolved with a random response (the first N
    samples of the result, FFT convolution), scaled back to its own peak level."""
    chosen = [(i, int(rng.integers(len(responses)))) for i in range(waves.shape[0]) if rng.random() < p]
    if not chosen:
        return waves
    x = waves.numpy().astype(np.float64)
    n = x.shape[1]
    for i, r in chosen:
        ir = responses[r].astype(np.float64)
        size = 1 << int(np.ceil(np.log2(n + len(ir) - 1)))
        wet = np.fft.irfft(np.fft.rfft(x[i], size) * np.fft.rfft(ir, size), size)[:n]
        peak, wet_peak = np.abs(x[i]).max(), np.abs(wet).max()
        x[i] = wet * (peak / wet_peak) if wet_peak > 0 else wet
    return paddle.to_tensor(x.astype(np.float32), place=waves.place)


def freq_mixstyle(feats, alpha, rng, eps=1e-6):
    """Freq-MixStyle on [B, T, F] features: normalise each clip's every frequency by its mean
    and standard deviation over time, then restore them mixed with a random partner's:
    mu = lam * mu + (1 - lam) * mu[perm], likewise sigma, lam ~ Beta(alpha, alpha) per clip."""
    lam = paddle.to_tensor(rng.beta(alpha, alpha, size=(feats.shape[0], 1, 1)).astype(np.float32), place=feats.place)
    perm = paddle.to_tensor(rng.permutation(feats.shape[0]), place=feats.place)
    mu = feats.mean(axis=1, keepdim=True)
    sigma = (feats.var(axis=1, keepdim=True) + eps).sqrt()
    normed = (feats - mu) / sigma
    mu_mix = lam * mu + (1 - lam) * paddle.index_select(mu, perm)
    sigma_mix = lam * sigma + (1 - lam) * paddle.index_select(sigma, perm)
    return normed * sigma_mix + mu_mix


def apply(cfg, waves, rng, sample_rate=None):
    """The waveform augmentations of `cfg` (impulse responses, gain, then noise) on a batch [B, N]
    at `sample_rate` (needed for impulse responses)."""
    _check_rng(rng)
    if cfg.impulse_response_p > 0:
        if sample_rate is None:
            raise ArgumentError('impulse responses need the sample rate of the waveforms')
        responses = load_impulse_responses(cfg.impulse_responses, sample_rate)
        waves = convolve_impulse_responses(waves, responses, cfg.impulse_response_p, rng)
    if cfg.gain_db > 0:
        waves = random_gain(waves, cfg.gain_db, rng)
    if cfg.noise_snr_db is not None:
        waves = add_noise(waves, cfg.noise_snr_db, rng)
    return waves


def apply_features(cfg, feats, targets, rng):
    """The feature augmentations of `cfg` on a batch: mixup, then SpecAugment masks.

    Mixup comes first so the masks are not blended away by the partner clip.

    Args:
        cfg: AugmentConfig.
        feats: [B, T, M] features.
        targets: [B, C] float targets, or None when mixup is off (returned unchanged).
        rng: np.random.Generator.
    Returns:
        (feats, targets).
    """
    _check_rng(rng)
    if cfg.freq_mixstyle_p > 0 and rng.random() < cfg.freq_mixstyle_p:
        feats = freq_mixstyle(feats, cfg.freq_mixstyle_alpha, rng)
    if cfg.mixup_alpha > 0:
        feats, targets = mixup(feats, targets, cfg.mixup_alpha, rng)
    feats = spec_augment(feats, cfg.time_masks, cfg.time_mask_width, cfg.freq_masks, cfg.freq_mask_width, rng)
    return feats, targets
