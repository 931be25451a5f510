"""Training-time augmentation on batches of waveforms and log-mel features.

The tensor work runs in Paddle, on whatever device the batch is on. All random draws come
from the numpy Generator `rng` passed in: build one per step from (seed, epoch, step) and a
run is reproducible, and a resumed run draws the same numbers, without saving any RNG state.
"""
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import paddle

from ..features.config import settings_from_dict


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply; everything is off by default.

    Waveform level (`apply`):
        gain_db: random gain, uniform in [-gain_db, +gain_db] dB per clip (0 = off).
        noise_snr_db: add white Gaussian noise at this signal-to-noise ratio per clip (None = off).
    Feature level (`apply_features`):
        time_masks, time_mask_width: number of time masks and their maximum width in frames.
        freq_masks, freq_mask_width: number of frequency masks and their maximum width in mel bins.
        mixup_alpha: mixup with lambda ~ Beta(alpha, alpha) (0 = off).
    """
    time_masks: int = 0
    time_mask_width: int = 0
    freq_masks: int = 0
    freq_mask_width: int = 0
    mixup_alpha: float = 0.0
    gain_db: float = 0.0
    noise_snr_db: Optional[float] = None

    def __post_init__(self):
        for name in ('time_masks', 'time_mask_width', 'freq_masks', 'freq_mask_width'):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f'AugmentConfig.{name} must be an integer >= 0, got {value!r}')
        for count, width in (('time_masks', 'time_mask_width'), ('freq_masks', 'freq_mask_width')):
            if getattr(self, count) > 0 and getattr(self, width) == 0:
                raise ValueError(f'AugmentConfig.{count} > 0 needs {width} > 0 (masks of width 0 do nothing)')
        for name in ('mixup_alpha', 'gain_db'):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f'AugmentConfig.{name} must be a finite number >= 0, got {value!r}')
        if self.noise_snr_db is not None and (not _is_number(self.noise_snr_db)
                                              or not math.isfinite(self.noise_snr_db)):
            raise ValueError(f'AugmentConfig.noise_snr_db must be a finite number of dB or None, '
                             f'got {self.noise_snr_db!r}')

    @property
    def changes_audio(self):
        """True when a waveform-level augmentation (gain or noise) is on."""
        return self.gain_db > 0 or self.noise_snr_db is not None

    @property
    def enabled(self):
        """True when any augmentation is on."""
        return (self.changes_audio or self.mixup_alpha > 0
                or self.time_masks > 0 or self.freq_masks > 0)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return settings_from_dict(cls, data, 'augmentation')


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f'rng must be a numpy Generator (np.random.default_rng(...)), got {type(rng).__name__}')


def _check_ndim(name, x, ndim, shape):
    if x.ndim != ndim:
        raise ValueError(f'{name} must be {shape}, got shape {x.shape}')


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
        raise ValueError('mixup needs the targets: pass one-hot [batch, classes] float targets')
    if targets.ndim != 2 or targets.shape[0] != feats.shape[0]:
        raise ValueError(f'mixup needs one-hot or multi-hot targets [batch, classes] = [{feats.shape[0]}, C], '
                         f'got shape {targets.shape}; one-hot encode class indices first')
    if not alpha > 0:
        raise ValueError(f'mixup alpha must be > 0, got {alpha!r}')
    lam = float(rng.beta(alpha, alpha))
    perm = paddle.to_tensor(rng.permutation(feats.shape[0]), place=feats.place)
    if targets.dtype not in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64):
        targets = targets.astype(feats.dtype)
    mixed_feats = lam * feats + (1.0 - lam) * paddle.index_select(feats, perm)
    mixed_targets = lam * targets + (1.0 - lam) * paddle.index_select(targets, perm)
    return mixed_feats, mixed_targets


def apply(cfg, waves, rng):
    """The waveform augmentations of `cfg` (gain, then noise) on a batch [B, N]."""
    _check_rng(rng)
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
    if cfg.mixup_alpha > 0:
        feats, targets = mixup(feats, targets, cfg.mixup_alpha, rng)
    feats = spec_augment(feats, cfg.time_masks, cfg.time_mask_width, cfg.freq_masks, cfg.freq_mask_width, rng)
    return feats, targets
