"""Frame geometry: where in time each frame of a network's output sits.

A network's time axis is the front end's, downsampled by strided convolutions or pooling: its
frame j is centred on front-end frame `offset + j * stride` (front-end frame k is centred on
sample k * hop_length of the clip, the STFT being centred). `stride` is a power of two (32 for
CNN14, the MobileNets and the ResNets, 16 for CNN6/CNN10, 8 for CP-Mobile) and `offset` is
fixed by the padding and pooling: 0 where every downsampling step is a stride-2 window centred
on an input frame (odd kernels with symmetric padding), (stride - 1) / 2 where it averages
pairs of frames (PANNs' 2x2 average pooling). `context`, where a family states it, is how far a
network frame sees: its output depends only on the front-end frames within `context` frames of
its centre (its receptive field over the network's input, the front end's own STFT window not
included); None where it depends on the whole input (pooling, attention or normalisation over
time). Detection can use it to score overlapping windows once (deploy/detection.py,
FrameScorer.mergeable_windows). Each family states its geometry in the registry;
detection (offline and streaming), strong-label targets and exports all use it, so a sound
centred at time c gives frame scores centred at c.

Output frames of event detection are at the front end's rate: frame i covers
[i * hop, (i + 1) * hop) seconds, and its score is the network's, interpolated at its centre.

numpy only: the Paddle-free runtime uses it.
"""
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from . import validate
from .errors import ArgumentError


@dataclass(frozen=True)
class FrameGeometry:
    """stride: front-end frames between two network frames; offset: the front-end frame (a
    fractional index) on which network frame 0 is centred; context: a network frame's output
    depends only on the front-end frames at most `context` frames from its centre (None: on the
    whole input)."""
    stride: int
    offset: float = 0.0
    context: Optional[int] = None

    def __post_init__(self):
        validate.positive_int('frame geometry: stride', self.stride, hint='front-end frames')
        # Network frame 0 covers the start of the input: its centre lies within the first stride.
        validate.number_in('frame geometry: offset', self.offset, 0, self.stride, high_open=True,
                           hint=f'front-end frames, below stride={self.stride}')
        object.__setattr__(self, 'context', validate.non_negative_int(
            'frame geometry: context', self.context, allow_none=True,
            hint='front-end frames a network frame sees on each side of its centre; None when it sees the whole input'))
        object.__setattr__(self, 'stride', int(self.stride))
        object.__setattr__(self, 'offset', float(self.offset))

    def to_dict(self):
        """{'stride', 'offset'}, and 'context' when it is known (exports written before it existed,
        and networks that see their whole input, have none)."""
        data = asdict(self)
        if self.context is None:
            del data['context']
        return data

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or not {'stride', 'offset'} <= set(data) <= {'stride', 'offset', 'context'}:
            raise ArgumentError(f'frame geometry must be {{"stride": int, "offset": number}} with an optional '
                                f'"context": int, got {data!r}')
        return cls(**data)

    def seconds(self, frontend):
        """Seconds between two network frames for `frontend` (a FrontendConfig)."""
        return self.stride * frontend.hop_length / frontend.sample_rate

    def centres(self, count):
        """Front-end frame positions of the centres of network frames 0..count-1."""
        return self.offset + self.stride * np.arange(count, dtype=np.float64)

    def to_frame_rate(self, coarse, num_frames):
        """Network frame scores [count, classes] -> [num_frames, classes] at the front end's rate:
        output frame i (centred on front-end position i + 0.5) interpolated linearly between the
        network frames around it, the first and last held beyond them."""
        coarse = np.asarray(coarse, dtype=np.float32)
        if coarse.ndim != 2 or len(coarse) == 0:
            raise ArgumentError(f'frame scores must be [frames, classes] with at least one frame, got {coarse.shape}')
        positions = np.arange(num_frames, dtype=np.float64) + 0.5
        centres = self.centres(len(coarse))
        fine = np.empty((num_frames, coarse.shape[1]), dtype=np.float32)
        for c in range(coarse.shape[1]):
            fine[:, c] = np.interp(positions, centres, coarse[:, c])
        return fine

    def spans(self, count, num_frames):
        """For network frames 0..count-1: (first, end) arrays of the output frames (front-end rate,
        centres at i + 0.5) whose centres lie in each one's span [centre - stride/2, centre +
        stride/2), clipped to [0, num_frames]. The spans tile the time axis."""
        centres = self.centres(count)
        first = np.ceil(centres - self.stride / 2 - 0.5).astype(np.int64)
        end = first + self.stride
        return np.clip(first, 0, num_frames), np.clip(end, 0, num_frames)

    def pool_targets(self, targets, count):
        """Frame targets at the front end's rate [..., num_frames, classes] -> [..., count, classes]:
        network frame j's target is the maximum over the output frames of its span (an event
        anywhere in the span makes it active); a span outside the targets gets 0."""
        targets = np.asarray(targets, dtype=np.float32)
        first, end = self.spans(count, targets.shape[-2])
        pooled = np.zeros(targets.shape[:-2] + (count, targets.shape[-1]), dtype=np.float32)
        for j, (a, b) in enumerate(zip(first, end)):   # count slices: no [count, frames] copy of the batch
            if b > a:
                pooled[..., j, :] = targets[..., a:b, :].max(axis=-2)
        return pooled


def for_frontend(geometry, frontend):
    """`geometry` with front-end frame k placed where `frontend` centres it: on sample
    k * hop_length for centred STFTs (no change), half an FFT later otherwise."""
    if frontend.center:
        return geometry
    return FrameGeometry(geometry.stride, geometry.offset + frontend.n_fft / 2 / frontend.hop_length, geometry.context)


def check_geometry(value):
    """A FrameGeometry, or one from its dict (export.json)."""
    return value if isinstance(value, FrameGeometry) else FrameGeometry.from_dict(value)
