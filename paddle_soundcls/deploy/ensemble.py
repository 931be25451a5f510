"""Ensembles: several models' outputs averaged, each model with its own front end. Paddle-free.

An ensemble's scores are the activation (softmax or sigmoid) of the weighted mean of its
members' logits, as EfficientAT's `EnsemblerModel` averages logits and as distillation averages
its teachers. Every engine gives scores, not logits (the exported graphs end in the
activation), so the logits are recovered from the scores: log p for a softmax (whose softmax
the mean of log p reproduces, the per-member constant cancelling) and log p - log(1 - p) for
sigmoids. Scores are clipped only where float32 scores end (to the smallest normal float32, and
sigmoids below 1 - 2**-24, the largest float32 under 1), so confident members keep their logit
gaps: a softmax member's scores hold logit gaps up to about 87, a sigmoid's from about -87 to 16.6. Module-side ensembles (paddle_soundcls.ensemble)
and exported ones (Predictor) combine through the same `EnsembleScorer`, so they agree.

Members must share labels, multi_label, sample rate and training clip length (the waveforms
are cut once, for all of them); for event detection also the front end's frame grid (hop
length and centring): each member's frame scores are brought to the front end's frame rate by
its own frame geometry (frames.FrameGeometry.to_frame_rate), then combined frame by frame.

An ensemble on disk (a checkpoint directory with ensemble.json, or an export directory whose
export.json has an `ensemble` entry) keeps its members in numbered sub-folders `members/0`, ...
"""
import dataclasses
import math
import os

import numpy as np

from .. import validate
from ..errors import ArgumentError
from ..frames import FrameGeometry, check_geometry, for_frontend

# Scores are float32: nothing below the smallest normal float32 is meaningful, and a sigmoid under
# 1 is at most 1 - 2**-24.
TINY = float(np.finfo(np.float32).tiny)
BELOW_ONE = 1.0 - 2.0 ** -24
MEMBERS_DIR = 'members'
# The frame grid of combined frame scores: one frame per front-end frame, centred at i + 0.5,
# which FrameGeometry.to_frame_rate maps onto itself.
FRONTEND_RATE = FrameGeometry(stride=1, offset=0.5)


def member_dir(index):
    """Relative path of member `index` inside an ensemble directory."""
    return os.path.join(MEMBERS_DIR, str(index))


def to_logits(scores, multi_label):
    """Scores (softmax or sigmoid outputs) -> logits, float64 (see the module docstring)."""
    p = np.asarray(scores, dtype=np.float64)
    if multi_label:
        p = np.clip(p, TINY, BELOW_ONE)
        return np.log(p) - np.log1p(-p)
    return np.log(np.clip(p, TINY, None))


def from_logits(logits, multi_label):
    """Logits -> float32 scores: sigmoid, or a softmax over the last axis."""
    if multi_label:
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def weighted_mean(member_logits, weights):
    """The ensemble's logits: the weighted mean of its members' (arrays of one shape), float64."""
    weights = np.asarray(weights, dtype=np.float64)
    return sum(w * np.asarray(x, dtype=np.float64) for w, x in zip(weights, member_logits)) / weights.sum()


def combine_scores(member_scores, weights, multi_label):
    """The ensemble's scores from its members' scores (arrays of one shape)."""
    logits = weighted_mean([to_logits(s, multi_label) for s in member_scores], weights)
    return from_logits(logits, multi_label)


def check_weights(weights, count):
    """Member weights: None (equal) or `count` non-negative numbers, not all zero -> list of floats."""
    if weights is None:
        return [1.0] * count
    if not isinstance(weights, (list, tuple)) or len(weights) != count:
        raise ArgumentError(f'weights: give one number per member ({count}), got {validate.shown(weights)}')
    out = [float(validate.non_negative_number(f'weights[{i}]', w)) for i, w in enumerate(weights)]
    if sum(out) <= 0:
        raise ArgumentError('weights: at least one member needs a positive weight')
    if not math.isfinite(sum(out)):   # the weighted mean divides by the sum
        raise ArgumentError(f'weights: {validate.shown(weights)} sum to more than the largest float; scale them '
                            f'down (only their ratios matter)')
    return out


def check_members(members):
    """Refuse members that cannot be averaged. `members`: objects with name, labels,
    multi_label, frontend_cfg and clip_seconds (Modules, Predictors, or ensembles' member records)."""
    if len(members) < 2:
        raise ArgumentError(f'an ensemble needs at least two members, got {len(members)}')
    first = members[0]
    for other in members[1:]:
        pair = f'{first.name} and {other.name}'
        if list(other.labels) != list(first.labels):
            raise ArgumentError(f'the members of an ensemble must have the same labels in the same order: {pair} '
                                f'differ ({list(first.labels)[:4]}... vs {list(other.labels)[:4]}...)')
        if other.multi_label != first.multi_label:
            raise ArgumentError(f'the members of an ensemble must all be multi-label or all single-label: {pair} '
                                f'differ')
        if other.frontend_cfg.sample_rate != first.frontend_cfg.sample_rate:
            raise ArgumentError(f'the members of an ensemble must take audio at one sample rate: {pair} take '
                                f'{first.frontend_cfg.sample_rate} and {other.frontend_cfg.sample_rate} Hz')
        if other.clip_seconds != first.clip_seconds:
            raise ArgumentError(f'the members of an ensemble must share their training clip length (clips are cut '
                                f'once for all): {pair} have {first.clip_seconds} and {other.clip_seconds} s')


def _frame_grid(cfg):
    return cfg.sample_rate, cfg.hop_length, cfg.center


@dataclasses.dataclass
class Member:
    """One model of an ensemble, as the combination needs it.

    score_batch: waveforms [batch, samples] -> scores [batch, classes];
    score_frames: waveforms [batch, samples] -> network frame scores [batch, frames', classes];
    geometry: where those frames sit (frames.FrameGeometry); frontend_cfg: its FrontendConfig."""
    name: str
    score_batch: object
    score_frames: object
    geometry: object
    frontend_cfg: object
    weight: float = 1.0


class EnsembleScorer:
    """The combined scorers of an ensemble's members (see the module docstring)."""

    def __init__(self, members, multi_label):
        self.members, self.multi_label = list(members), bool(multi_label)
        self.weights = [m.weight for m in self.members]

    def score_batch(self, waveforms):
        """waveforms [batch, samples] -> the ensemble's scores [batch, classes]."""
        return combine_scores([m.score_batch(waveforms) for m in self.members], self.weights, self.multi_label)

    def check_frames(self):
        """Event detection combines frames on one grid: refuse members whose front ends differ in it."""
        first = self.members[0]
        for other in self.members[1:]:
            if _frame_grid(other.frontend_cfg) != _frame_grid(first.frontend_cfg):
                raise ArgumentError(
                    f'event detection with an ensemble needs members whose front ends share the frame grid '
                    f'(sample rate, hop length, centring): {first.name} has {_frame_grid(first.frontend_cfg)}, '
                    f'{other.name} {_frame_grid(other.frontend_cfg)}; detect with each model alone')

    def score_frames(self, waveforms):
        """waveforms [batch, samples] -> combined frame scores [batch, frames, classes] at the front
        end's frame rate (FRONTEND_RATE), one frame per hop_length samples."""
        num_frames = max(1, waveforms.shape[1] // self.members[0].frontend_cfg.hop_length)
        per_member = []
        for m in self.members:
            geometry = for_frontend(check_geometry(m.geometry), m.frontend_cfg)
            coarse = np.asarray(m.score_frames(waveforms))
            per_member.append(np.stack([geometry.to_frame_rate(c, num_frames) for c in coarse]))
        return combine_scores(per_member, self.weights, self.multi_label)

    def frame_frontend(self):
        """The FrontendConfig a FrameScorer of the combined frames uses: the members' frame grid, centred
        (combined frames already sit where the members' front ends put them)."""
        return dataclasses.replace(self.members[0].frontend_cfg, center=True)
