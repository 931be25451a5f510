"""When sounds happen: frame scores of recordings of any length and of live streams, and the
events in them (see events.py for how frame scores become events). Paddle-free.

The network scores windows of `window` seconds every `hop` seconds. Each window gives frame
scores at the network's own rate (a frame per 2**k front-end frames, placed in time by the
model's frame geometry, see paddle_soundcls/frames.py), interpolated to the front end's frame
rate (one frame per hop_length samples: 10 ms for the PANNs and EfficientAT front ends, 15.625 ms
for CP-Mobile's); of each window the frames of its central `hop` seconds are kept (the first
window keeps its start; the last window ends at the end of the audio and keeps what no earlier
one kept), where the network sees context on both sides. Windows are cut by the one window
cutter, deploy/segments.py.
Offline detection is a stream fed the whole recording at once, so a live stream gives exactly
the frames, and so the events, of offline detection of the same audio, whatever the sizes of
its chunks (up to float rounding where offline detection merges windows, see below).

Batching: the network scores windows `batch_size` at a time (FrameScorer.network_scores), only
windows of one length in one call, so no window is padded beyond the network's shortest input
and its scores do not depend on its neighbours in the batch (networks that normalise over the
whole input, e.g. CP-Mobile's relaxed frequency-wise normalisation or PaSST, see no other padding).
Offline detection (detect, detect_inputs) cuts the windows of its recordings as they are
needed and scores them in batches, across recordings; a live stream scores the windows that
complete within one push together, so it waits for no later audio.

Overlapping windows scored once: windows overlap (every second of audio is scored window / hop
times), but where a network frame's score depends only on the input near it (FrameGeometry.context:
no pooling, attention or normalisation over time) k consecutive windows give the same kept frames
as ONE segment from the first one's start to the last one's end, W + (k - 1) H front-end frames
instead of k W. FrameScorer.mergeable_windows says how many windows may be merged for its window
and hop (1 where the kept frames would be another function of the audio). Offline detection
(recording_frames: detect, detect_inputs, and the server's offline events) scores merged segments
where it may (merge_windows; a scorer made with merge=False scores window by window); live
streams never merge (they would wait for later windows). The frames are the same function of the
audio, but not always the same float32 numbers: the engines round a frame differently with the
length of the input around it (up to ~3e-6 measured), so where offline detection merges, a live
stream of the same audio gives its frames up to that rounding (see FrameScorer's merge).

Latency of a stream: a frame is reported once the window that keeps it is complete: at most
hop + (window - hop) / 2 seconds after it was pushed, plus the compute of one window, plus
half the median filter of the event decisions (EventTracker.delay_seconds).
"""

import math
import time
import weakref
from collections import deque

import numpy as np

from .. import audio
from ..features.mel import OverlapFeatures, logmel
from ..frames import check_geometry, for_frontend
from . import pipeline
from .segments import SlidingWindow, check_hop, pad_to
from .events import EventTracker, detect_events
from .. import validate
from ..errors import ArgumentError, AudioError

# Seconds per window when a model records no training clip length: the length of the
# AudioSet clips the pretrained taggers learnt from.
DEFAULT_WINDOW = 10.0

# Windows per network call: offline detection of mn10 (2-s windows every 0.5 s, onnxruntime,
# 2 CPUs) gains little beyond 16, and 16 windows of 10 s are ~10 MB of samples.
DEFAULT_BATCH_SIZE = 16

# Merged windows per segment (FrameScorer.mergeable_windows): 16 windows of 2 s every 0.5 s are 9.5 s of
# audio scored once instead of 32 s (70% less); more saves little. A segment stays within 30 s of
# audio (recording_frames puts fewer segments in a batch, about batch_size windows' samples).
MAX_MERGED_WINDOWS = 16
MAX_MERGED_SECONDS = 30.0


class FrameScorer:
    """Frame scores of audio of any length, window by window.

    score_frames: waveforms float32 [batch, samples] -> frame scores [batch, frames', classes]
        (numpy), the network's frames for each window.
    score_features: None, or what score_frames does after the numpy front end (features.mel.logmel
        with `frontend`): log-mel features [batch, frames, n_mels] -> frame scores. Given it (the
        Predictor's exports), windows are scored from their features, and the windows of one stream
        share theirs: each front-end frame is computed once however many windows hold it
        (features.mel.OverlapFeatures; at 2-s windows every 0.5 s, a quarter of the front end's
        work), with the numbers of logmel(window).
    frontend: the model's FrontendConfig (sample rate, hop length, frames per window).
    geometry: the network's frames.FrameGeometry (or its dict): where its frames sit in time.
    window, hop: seconds; rounded to whole front-end frames. Default window: the model's
        training clip length `clip_seconds` (at least min_seconds), else DEFAULT_WINDOW; default
        hop: half the window.
        A window shorter than the network's shortest input `min_seconds` is refused (padding
        every window would multiply the work); the last window of a recording, and a recording
        shorter than that, are zero-padded to it.
    batch_size: windows per score_frames call (offline detection, and windows that complete within
        one push of a stream); windows of different lengths never share a call.
    merge: True (the default): offline detection scores up to `mergeable_windows` consecutive
        windows as one segment (merge_windows). The frames kept are those of the windows scored
        one by one up to rounding, as an engine's arithmetic of a frame may depend on the input's
        length (Paddle's CPU kernels with several threads: differences of 3e-8 to 1.2e-7 measured on
        random-weight networks; exports through onnxruntime came out equal), so live
        streams, which never merge, give offline detection's frames up to that rounding. False:
        window by window, bit for bit what a live stream gives.
    """

    def __init__(self, score_frames, frontend, labels, geometry, window=None, hop=None, min_seconds=1.0,
                 clip_seconds=None, batch_size=DEFAULT_BATCH_SIZE, merge=True, score_features=None):
        if window is None:   # a training clip shorter than the network takes is padded to it
            window = max(clip_seconds or DEFAULT_WINDOW, min_seconds)
        hop = window / 2 if hop is None else hop
        for name, value in (('window', window), ('hop', hop)):
            validate.positive_number(name, value, unit='seconds')
        check_hop(window, hop)
        if window < min_seconds:
            raise ArgumentError(f'window ({window:g} s) is shorter than the shortest input the network takes '
                             f'({min_seconds:g} s); use a window of at least {min_seconds:g} s')
        self.geometry = for_frontend(check_geometry(geometry), frontend)
        self.score_frames, self.frontend, self.labels = score_frames, frontend, list(labels)
        # Features shared across windows where the front end works frame by frame (top_db floors each
        # clip below its own peak).
        self.score_features = score_features if frontend.top_db is None else None
        self.frame_samples = frontend.hop_length
        self.frame_seconds = frontend.hop_length / frontend.sample_rate
        self.window_frames = max(1, round(window * frontend.sample_rate / self.frame_samples))
        self.hop_frames = max(1, min(self.window_frames, round(hop * frontend.sample_rate / self.frame_samples)))
        self.margin_frames = (self.window_frames - self.hop_frames) // 2
        self.min_samples = int(round(min_seconds * frontend.sample_rate))
        self.batch_size = check_batch_size(batch_size)
        # Windows per segment in offline detection (recording_frames); a caller may set it up to
        # mergeable_windows.
        self.mergeable_windows = self._windows_to_merge()
        self.merge_windows = self.mergeable_windows if validate.flag('merge', merge) else 1

    def _windows_to_merge(self):
        """How many consecutive (non-final) windows one segment may stand for, their kept frames
        the same function of the audio: 1 unless (a) the network sees only `context` front-end
        frames around each frame (geometry.context, and no per-clip normalisation in the front end:
        top_db), (b) the hop is a
        whole number of network frames, so every window's network frames are the segment's, and
        (c) the network frames that the kept frames are interpolated from see only samples of their
        window, so cutting the window changes none of them. Then at most MAX_MERGED_WINDOWS, within
        MAX_MERGED_SECONDS."""
        g, f = self.geometry, self.frontend
        if (g.context is None or f.top_db is not None or self.hop_frames % g.stride
                or self.hop_frames == self.window_frames):
            return 1
        # Of a middle window the kept frames are [margin, margin + hop), centred at i + 0.5; they read
        # the network frames around them: the last centre at or before the first, the first at or
        # after the last.
        low = math.floor((self.margin_frames + 0.5 - g.offset) / g.stride)
        high = math.ceil((self.margin_frames + self.hop_frames - 0.5 - g.offset) / g.stride)
        if low < 0:
            return 1
        # Samples a network frame at position c sees: its context's front-end frames, each an STFT
        # window of n_fft samples centred on it (one sample more with pre-emphasis, which reads the
        # next one).
        reach = g.context * f.hop_length + f.n_fft / 2 + (f.preemphasis is not None)
        first_sample = (g.offset + g.stride * low) * f.hop_length - reach
        end_sample = (g.offset + g.stride * high) * f.hop_length + reach
        if first_sample < 0 or end_sample > self.window_frames * f.hop_length:
            return 1
        longest = int(MAX_MERGED_SECONDS / self.frame_seconds)
        return max(1, min(MAX_MERGED_WINDOWS, 1 + (longest - self.window_frames) // self.hop_frames))

    @property
    def latency_seconds(self):
        """Longest wait of a pushed sample for its frame scores, compute not included."""
        return (self.window_frames - self.margin_frames) * self.frame_seconds

    def window_scores(self, segment):
        """Frame scores [frames, classes] of one window of samples, at the front end's frame rate
        (one frame per hop_length samples, frame i starting at sample i * hop_length)."""
        num_frames = max(1, len(segment) // self.frame_samples)
        [coarse] = self.network_scores([pad_to(np.asarray(segment, dtype=np.float32), self.min_samples)], 1)
        # Frames over the padding only shape the interpolation at the segment's end; the output
        # stops at the segment's last frame.
        return self.geometry.to_frame_rate(coarse, num_frames)

    def inputs_of(self, samples):
        """What the network call takes for a window of `samples` (already padded to min_samples) scored
        on its own: the samples, or their log-mel features where the scorer scores features."""
        return samples if self.score_features is None else logmel(samples, self.frontend)

    def score_inputs(self, batch):
        """The network's frame scores of a stack of windows' inputs (Window.inputs, inputs_of)."""
        return (self.score_frames if self.score_features is None else self.score_features)(batch)

    def network_scores(self, windows, batch_size=None):
        """The network's frame scores of `windows` (Windows, or 1-D sample arrays already padded to
        min_samples): a list of [frames', classes] arrays, in the order of `windows`. Windows of one
        length go through the network together, `batch_size` (default self.batch_size) at a time;
        windows of different lengths are never padded to one another."""
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        inputs = [w.prepared() if isinstance(w, Window) else self.inputs_of(np.asarray(w, dtype=np.float32))
                  for w in windows]
        by_shape = {}
        for i, item in enumerate(inputs):
            by_shape.setdefault(item.shape, []).append(i)
        out = [None] * len(inputs)
        for indices in by_shape.values():
            for first in range(0, len(indices), batch_size):
                part = indices[first:first + batch_size]
                scores = np.asarray(self.score_inputs(np.stack([inputs[i] for i in part])), dtype=np.float32)
                if scores.ndim != 3 or len(scores) != len(part):
                    raise ArgumentError(f'the network gave frame scores of shape {list(scores.shape)} for '
                                        f'{len(part)} windows; it must give [windows, frames, classes]')
                # Probabilities: onnxruntime's vectorised sigmoid gives 1.0000001 for some saturated
                # logits (seen with CNN14 on 25-s segments), which the event decisions refuse.
                scores = np.clip(scores, 0.0, 1.0)
                for i, row in zip(part, scores):
                    out[i] = row
        return out


def check_batch_size(batch_size):
    return validate.positive_int('batch_size', batch_size, hint='windows per network call')


def frames_at_rate(geometry, coarse, num_frames, first=0, end=None):
    """geometry.to_frame_rate(coarse[w], num_frames)[first:end] of a stack of windows' network frame
    scores [windows, count, classes] -> [windows, frames, classes], at once: np.interp's linear
    interpolation with its float64 arithmetic (slope * (x - x_j) + y_j), so the same float32 values."""
    coarse = np.asarray(coarse, dtype=np.float32)
    if coarse.ndim != 3 or coarse.shape[1] == 0:
        raise ArgumentError(f'frame scores must be [windows, frames, classes] with at least one frame, '
                            f'got {coarse.shape}')
    end = num_frames if end is None else min(end, num_frames)
    positions = np.arange(first, max(first, end), dtype=np.float64) + 0.5
    centres = geometry.centres(coarse.shape[1])
    values = coarse.astype(np.float64)
    fine = np.empty((len(coarse), len(positions), coarse.shape[2]), dtype=np.float32)
    # Positions are sorted: before the first centre the first score is held, from the last centre on
    # the last; between, interpolated on the interval [x_j, x_j+1) holding them (at x_j: y_j).
    j = np.searchsorted(centres, positions, side='right') - 1
    a, b = np.searchsorted(j, 0), np.searchsorted(j, len(centres) - 1)
    fine[:, :a] = coarse[:, :1]
    fine[:, b:] = coarse[:, -1:]
    if b > a:
        slopes = np.diff(values, axis=1) / np.diff(centres)[None, :, None]
        inside = j[a:b]
        fine[:, a:b] = slopes[:, inside] * (positions[a:b] - centres[inside])[None, :, None] + values[:, inside]
    return fine


class Window:
    """One window of a FrameStream to score: `inputs`, what the network call takes for it (its samples,
    padded to the network's shortest input, or their log-mel features where the scorer scores
    features: FrameScorer.inputs_of) from front-end frame `start`, `frames` of them; `final`: the last
    window of the stream; `windows`: how many consecutive windows it stands for (merged,
    FrameStream's merge_windows). A window cut with next_window(defer=True) computes its features
    when `prepared()` is first called (`inputs` is None until then); `shape` is that of its inputs."""
    __slots__ = ('start', 'frames', 'inputs', 'final', 'windows', 'shape', '_make')

    def __init__(self, start, frames, inputs, final, windows=1, shape=None, make=None):
        self.start, self.frames, self.inputs, self.final, self.windows = start, frames, inputs, final, windows
        self.shape = inputs.shape if shape is None else shape
        self._make = make

    def prepared(self):
        """The window's inputs, computed now if they were deferred."""
        if self.inputs is None and self._make is not None:
            self.inputs, self._make = self._make(), None
        return self.inputs


class FrameStream:
    """Frame scores of a stream, window by window, with the one window cutter (segments.SlidingWindow):
    windows of `window` every `hop` from the start, the last one ending at the last whole frame.
    Offline detection is this stream fed the whole recording at once, so a live stream gives
    exactly its frames, however its audio is chunked (up to rounding where it merges windows).

    push(samples) -> the new frames' scores [frames, classes], close() -> the rest, each window
    scored by the scorer's score_frames. A caller that scores windows elsewhere (the server, through
    its queue) uses the parts: feed(samples); finish() at the end; next_window() -> a Window to score,
    or None while more audio is needed; keep(window, network frame scores) -> the new frames;
    next_windows(limit) and keep_all(windows, their network frame scores) do the same for several
    windows at once (a batch of them through the network).
    The windows that complete within one push are scored together, `batch_size` at a time
    (default: the scorer's).
    merge_windows: up to this many consecutive windows (all but the final one) are cut as one
    segment, from the first one's start to the last one's end, and keep() keeps of it the frames
    those windows keep (up to the last one's kept end): the same function of the audio, scored
    once (at most scorer.mergeable_windows; equal bit for bit only where score_frames rounds a
    frame the same whatever the input's length, see FrameScorer's merge). 1 (the default): live
    streams wait for no later window.
    Memory: about two windows of samples, whatever the chunks; work per push proportional to it.
    """

    def __init__(self, scorer, batch_size=None, merge_windows=1):
        self.scorer = scorer
        self.batch_size = scorer.batch_size if batch_size is None else check_batch_size(batch_size)
        self.merge_windows = validate.positive_int('merge_windows', merge_windows, hint='windows per segment')
        if self.merge_windows > scorer.mergeable_windows:
            raise ArgumentError(f'merge_windows={merge_windows}: for this window and hop the network can score at '
                                f'most {scorer.mergeable_windows} window(s) as one segment with the same frame '
                                f'scores (FrameScorer.mergeable_windows)')
        self.windows = SlidingWindow(scorer.window_frames * scorer.frame_samples,
                                     scorer.hop_frames * scorer.frame_samples)
        # Each front-end frame computed once, whatever the windows holding it (scorers of features).
        self.features = None if scorer.score_features is None else OverlapFeatures(scorer.frontend)
        self.emitted = 0           # frames reported so far
        self.promised = 0          # frames the windows cut so far will report, once kept
        self.finished = False      # no more audio: the last window may be cut
        self.closed = False
        self.returned = deque()    # windows cut, then given back unscored (give_back): cut again first

    def feed(self, samples):
        if self.finished:
            raise ArgumentError('the stream is closed; start a new one')
        self.windows.push(samples)

    def finish(self):
        self.finished = True

    def next_window(self, defer=False):
        """The next window to score (a Window), or None while more audio is needed. defer=True: its
        features are computed when its prepared() is called (the server: in its engine thread, not on
        its event loop). Called in the order the windows were cut, each computes only the frames no
        earlier window held; in another order a window computes all of its frames (the same numbers)."""
        s = self.scorer
        if self.returned:
            return self.returned.popleft()
        if self.windows is None:   # every window cut and the samples dropped (drop_samples)
            return None
        cut = self.windows.next()
        total_frames = self.windows.total // s.frame_samples
        # `promised`, not `emitted`: windows cut may wait to be scored together before they are kept.
        if cut is None and self.finished and self.promised < total_frames:
            # The last window ends at the last whole frame; it holds the frames no earlier one kept.
            cut = self.windows.tail(total_frames * s.frame_samples, always=True)
            final = True
        else:
            final = False
        if cut is None:
            return None
        start, end, samples = cut
        count = 1
        if not final and self.merge_windows > 1:
            # The next windows each add their last hop of samples to the segment.
            pieces, hop_samples = [samples], s.hop_frames * s.frame_samples
            while count < self.merge_windows and (more := self.windows.next()) is not None:
                pieces.append(more[2][-hop_samples:])
                end = more[1]
                count += 1
            samples = np.concatenate(pieces) if count > 1 else samples
        place = (start // s.frame_samples, max(1, (end - start) // s.frame_samples))
        if self.features is not None and len(samples) >= s.min_samples:
            features = self.features
            if defer:
                window = Window(*place, None, final, count, (s.frontend.num_frames(len(samples)), s.frontend.n_mels),
                                lambda: features.window(start, samples))
            else:
                window = Window(*place, features.window(start, samples), final, count)
        else:   # samples, or a window padded to the shortest input: features of it alone
            window = Window(*place, s.inputs_of(pad_to(samples, s.min_samples)), final, count)
        # What keep() will report of it: up to the end of its (last window's) central hop; the final
        # window: to its end.
        self.promised = max(self.promised, window.start + (window.frames if final else self.kept_end(window)))
        return window

    def kept_end(self, window):
        """Where the frames kept of a non-final `window` end, from its start: its central hop's end (of
        a merged one, its last window's)."""
        s = self.scorer
        return min(s.margin_frames + s.hop_frames * window.windows, window.frames)

    def give_back(self, windows):
        """Windows cut but not kept (their scoring failed): the next next_window() calls give them
        again, in order, so the stream loses none and keeps its frames in order."""
        self.returned.extendleft(reversed(windows))

    def next_windows(self, limit, defer=False):
        """Up to `limit` next windows (a list; empty while more audio is needed); defer: see next_window."""
        windows = []
        while len(windows) < limit and (window := self.next_window(defer)) is not None:
            windows.append(window)
        return windows

    def drop_samples(self):
        """Free the samples of a finished stream whose windows have all been cut (next_window()
        gave None after finish()): offline detection of a long recording then holds only the
        windows' scores until they are kept."""
        self.windows = self.features = None

    def keep(self, window, network_scores):
        """The frames of `window` (scored: network frame scores [frames', classes]) that are new:
        of each window those of its central hop (the first from its start, the last to its end)."""
        return self.keep_all([window], [network_scores])

    def keep_all(self, windows, network_scores):
        """keep() of consecutive windows (in the order next_window gave them) with their network
        frame scores: their new frames [frames, classes]. Only the kept frames are interpolated,
        those of windows of one length and one kept span together."""
        s = self.scorer
        spans = []   # (first, end) of each window's frames that are new
        for window in windows:
            first = self.emitted - window.start
            end = window.frames if window.final else self.kept_end(window)
            spans.append((first, max(first, end)))
            self.emitted += max(0, end - first)
        parts, i = [], 0
        while i < len(windows):
            key = (windows[i].frames, np.shape(network_scores[i]), spans[i])
            j = i + 1
            while j < len(windows) and (windows[j].frames, np.shape(network_scores[j]), spans[j]) == key:
                j += 1
            if spans[i][1] > spans[i][0]:
                stacked = np.stack([np.asarray(x, dtype=np.float32) for x in network_scores[i:j]])
                kept = frames_at_rate(s.geometry, stacked, windows[i].frames, *spans[i])
                parts.append(kept.reshape(-1, kept.shape[-1]))
            i = j
        return _stack(parts, len(s.labels))

    def push(self, samples):
        if self.closed:
            raise ArgumentError('the stream is closed; start a new one')
        self.feed(samples)
        return self.score_ready()

    def close(self):
        """Score what is left (the last window ends at the end of the audio) and end the stream."""
        if self.closed:
            return _stack([], len(self.scorer.labels))
        self.finish()
        self.closed = True
        return self.score_ready()

    def score_ready(self):
        """Score the windows complete so far (`batch_size` per network call): their new frames."""
        out = []
        while windows := self.next_windows(self.batch_size):
            [scores] = scored(self.scorer, [(self, windows)], self.batch_size)
            out.append(self.keep_all(windows, scores))
        return _stack(out, len(self.scorer.labels))


def scored(scorer, groups, batch_size):
    """The network frame scores of the windows of `groups` ([(FrameStream, its windows)]) in one
    scorer.network_scores call, split back per group. When it fails, every stream gets its windows
    back (FrameStream.give_back) before the error goes on, so none is lost and a retry goes on
    where it stopped."""
    try:
        scores = scorer.network_scores([w for _, windows in groups for w in windows], batch_size)
    except BaseException:
        for frames, windows in groups:
            frames.give_back(windows)
        raise
    out, first = [], 0
    for _, windows in groups:
        out.append(scores[first:first + len(windows)])
        first += len(windows)
    return out


def _stack(parts, num_classes):
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, num_classes), dtype=np.float32)


class EventStream:
    """A live stream of audio at any sample rate -> events as they start and end.

    push(chunk): a numpy chunk of PCM at `sample_rate`, float or integer, as [frames, channels]
    (soundfile's and sounddevice's layout) or, for a mono stream, [frames] -> the events that
    started or ended: dicts with 'type' ('start' or 'end'), 'label', 'onset', 'confidence' (and
    'offset' for ends), times in seconds from the start of the stream. The channel count is
    fixed when the stream starts (`channels`), so a chunk of any length, even one frame, is
    read the same way. close(): flushes the last window and ends every open event. A bad
    chunk raises a ValueError naming the problem and leaves the stream as it was.
    push is feed(chunk) (take it) then score() (score the windows it completed); a StreamPool
    feeds its streams and scores their windows together, then finish()es them (no more audio).
    """

    def __init__(self, scorer, sample_rate, config=None, channels=1, batch_size=None):
        self.sample_rate = audio.check_sample_rate(sample_rate, 'sample_rate')
        self.channels = validate.positive_int('channels', channels, hint='channels of the chunks')
        self.target_sr = scorer.frontend.sample_rate
        self.frames = FrameStream(scorer, batch_size)
        self._arrivals = deque()   # (samples so far, time) of each feed whose windows are not all reported
        self._undelivered = []     # events decided before a scoring failed: the next score() gives them
        self.report_delay = self.max_report_delay = 0.0
        self.tracker = EventTracker(scorer.labels, scorer.frame_seconds, config)
        # One resampler for the whole stream: its output is `audio.resample` of everything pushed,
        # so the stream's frames are offline detection's at any rate and any chunking.
        self.resampler = None if self.sample_rate == self.target_sr else audio.Resampler(self.sample_rate,
                                                                                             self.target_sr)
        self.closed = False

    @property
    def latency_seconds(self):
        return self.frames.scorer.latency_seconds + self.tracker.delay_seconds

    def push(self, chunk):
        self.feed(chunk)
        return self.score()

    def feed(self, chunk):
        """Take a chunk without scoring it (a StreamPool scores the windows of all its streams together)."""
        if self.closed:
            error = getattr(self, 'error', None)   # set by a StreamPool that failed or discarded it
            why = (f'failed: the network could not score its audio ({type(error).__name__}: {error})' if error else
                   'is closed (close() or finish() was called, or its pool discarded it)')
            raise ArgumentError(f'this stream {why} and takes no more audio; open a new stream for more')
        wave = self._mono(chunk)
        if wave.size:
            audio.check_waveform(wave, 'chunk')
        if self.resampler is not None:
            wave = self.resampler.push(wave)
        if wave.size:   # an empty feed completes no window
            self.frames.feed(wave)
            self._arrivals.append((self.frames.windows.total, time.monotonic()))

    def score(self):
        """Score this stream's complete windows on its own: the events that started or ended. If the
        network fails, the error goes on and the stream stays whole: its unscored windows are
        scored, and the events decided before the failure given, by the next score()."""
        frames, events = self.frames, self._undelivered
        self._undelivered = []
        try:
            while windows := frames.next_windows(frames.batch_size):
                [scores] = scored(frames.scorer, [(frames, windows)], frames.batch_size)
                events += self.report(windows, scores)
        except BaseException:
            self._undelivered = events
            raise
        return events

    def report(self, windows, network_scores):
        """The events of the frames of `windows` (next_windows' windows, scored: their network frame
        scores); records report_delay. Each window's frames go to the event tracker on their own, so
        the reports (a start's confidence is the peak known when it is reported) are the same however
        windows are grouped: by push, batch size, pool or a retry after a failure."""
        events = []
        for window, scores in zip(windows, network_scores):
            events += self.tracker.push(self.frames.keep(window, scores))
        end = max(w.start + w.frames for w in windows) * self.frames.scorer.frame_samples
        # The feed that completed the last of these windows: the first that brought the audio to its end.
        while len(self._arrivals) > 1 and self._arrivals[0][0] < end:
            self._arrivals.popleft()
        if self._arrivals:
            self.report_delay = time.monotonic() - self._arrivals[0][1]
            self.max_report_delay = max(self.max_report_delay, self.report_delay)
        return events

    def _mono(self, chunk):
        """A chunk [frames, channels] (or [frames] when mono) -> float32 mono samples."""
        chunk = np.asarray(chunk)
        if chunk.ndim == 1 and self.channels == 1:
            return audio.to_mono(chunk, 'chunk')
        if chunk.ndim != 2 or chunk.shape[1] != self.channels:
            expected = '[frames] or [frames, 1]' if self.channels == 1 else f'[frames, {self.channels}]'
            raise AudioError(f'chunk: this stream has {self.channels} channel(s), so chunks are {expected} '
                                   f'arrays; got shape {list(chunk.shape)}. Start the stream with channels=N for '
                                   f'N-channel audio, and pass chunks as [frames, channels]')
        # One channel at a time: to_mono scales integer PCM; the mean of the scaled channels.
        return np.mean([audio.to_mono(chunk[:, c], 'chunk') for c in range(self.channels)], axis=0,
                       dtype=np.float32) if chunk.shape[0] else np.zeros(0, np.float32)

    def close(self):
        """The last window (it ends at the end of the audio) and every open event: their reports."""
        if self.frames.closed:
            return []
        self.finish()
        events = self.score()
        self.frames.closed = True
        return events + self.tracker.close()

    def finish(self):
        """No more audio: the resampler's last samples go in and the last window may be cut."""
        if not self.closed:
            if self.resampler is not None:
                self.frames.feed(self.resampler.flush())
            self.frames.finish()
            self.closed = True


class StreamPool:
    """Many live streams of one model, their windows scored together: the windows complete in all
    streams when score() is called go through the network in batches (`batch_size` windows of one
    length per call, default the scorer's), so N microphones cost about what one long recording
    does. Each stream's events are exactly those it gives alone (EventStream fed the same chunks).

        pool = predictor.stream_pool(window=2.0, hop=0.5)
        mics = {name: pool.open(sample_rate=16000) for name in names}
        mics[name].feed(chunk)                     # as each microphone's audio arrives
        for stream, events in pool.score().items():   # e.g. every hop
            ...
        for stream, error in pool.failed.items():  # streams the network could not score
            ...
        pool.failed.clear()
        mics[name].finish()                        # no more audio: the next score() gives its last
                                                   # window's events and ends its open events
        pool.discard(mics[name])                   # or drop a stream without finishing it

    Streams are EventStreams (push and close score a stream alone, with the same results).
    Each stream's report_delay / max_report_delay: seconds from the feed that completed its latest
    window to that window's events being reported (queueing and compute; latency_seconds says
    how long a sample waits for its window). Memory: each stream's buffer (about two windows of
    samples) and at most `batch_size` cut windows in all while score() runs (each network call
    takes a window from every stream in turn, then a second, ...).

    One stream cannot stall the others. When a network call fails, each of its streams' windows
    are scored again on their own, and a stream whose own call fails too, while the network does
    score windows (another stream's own call, or else a window of silence of the same length), is
    failed: the network cannot take its audio, and retrying it would fail every score() after.
    A failed stream leaves the pool with its error in `stream.error` and in `pool.failed`
    ({stream: exception}, kept until the caller removes the entries it has handled); its buffered
    audio and unscored windows are dropped, it takes no more audio, and it gives the events decided
    before the failure (its open events are not ended: what its audio held next is unknown).
    Failures are a dict to read rather than an exception, as an exception would make every caller
    catch it to get the other streams' events, and one that did not would lose them.
    The network itself failing is not a stream's fault, and goes on as an error as before: when no
    stream's own call repeats the failure (it failed once) or the network fails on silence too (it
    fails for everyone). Nothing is lost then: the windows scored alone are kept, the others are
    scored first by the next score(), which also gives the events decided before the failure.
    """

    def __init__(self, scorer, config=None, batch_size=None):
        self.scorer, self.config = scorer, config
        self.batch_size = scorer.batch_size if batch_size is None else check_batch_size(batch_size)
        self.streams = []
        self.failed = {}   # stream -> the exception of its own network call, until the caller removes it
        self._opened = weakref.WeakSet()   # every stream this pool opened, to refuse others' in discard()
        self._turn = 0   # where the next round starts among the streams

    def _next_round(self):
        """Up to batch_size windows for one network call: one from each stream in turn (starting
        where the last round started, plus one), then a second from each, ...: [(stream, its windows)]."""
        active = [stream for stream in self.streams if not stream.frames.closed]
        if not active:
            return []
        first = self._turn % len(active)
        active = active[first:] + active[:first]
        self._turn += 1
        taken, total = {}, 0
        while total < self.batch_size:
            grew = False
            for stream in active:
                if total == self.batch_size:
                    break
                window = stream.frames.next_window()
                if window is not None:
                    taken.setdefault(stream, []).append(window)
                    total += 1
                    grew = True
            if not grew:
                break
        return list(taken.items())

    def open(self, sample_rate=None, channels=1):
        """A new stream of chunks at `sample_rate` (default the model's) with `channels` channels."""
        rate = self.scorer.frontend.sample_rate if sample_rate is None else sample_rate
        stream = EventStream(self.scorer, rate, self.config, channels, self.batch_size)
        stream.error = None   # the exception that failed it, if the network cannot take its audio
        self.streams.append(stream)
        self._opened.add(stream)
        return stream

    def discard(self, stream):
        """Drop `stream` without finishing it: it leaves the pool at once, with nothing more to report;
        its buffered audio, unscored windows and undelivered events are dropped, and it takes no more
        audio (its entry in `failed` goes too). Discarding it again does nothing."""
        if stream not in self._opened:
            raise ArgumentError('discard: this stream was not opened by this pool; discard a stream through the '
                                'pool whose open() made it')
        if stream in self.streams:
            self.streams.remove(stream)
        self.failed.pop(stream, None)
        stream._undelivered = []
        _release(stream)

    def score(self):
        """Score every complete window of every stream, together: {stream: [events]} for the streams
        with new events. A finished stream gives its last events and leaves the pool; a stream the
        network cannot take is failed (see `failed` in the class docstring) and leaves it. If the
        network fails, the error goes on and no stream loses anything: the next score() scores their
        unscored windows and gives the events decided before the failure."""
        out = {}
        for stream in self.streams:
            if stream._undelivered:
                out[stream], stream._undelivered = stream._undelivered, []
        # Each stream's windows scored in this call are reported together at its end, as a stream
        # alone reports the windows one push completes (a start's confidence is its peak so far);
        # only their places and network scores are held meanwhile, not their samples.
        scored_now = {}

        def hold(stream, windows, scores):
            for window in windows:
                window.inputs = None
            held = scored_now.setdefault(stream, ([], []))
            held[0].extend(windows)
            held[1].extend(scores)

        try:
            try:
                while groups := self._next_round():
                    self._score_round(groups, hold)
            finally:
                for stream, (windows, scores) in scored_now.items():
                    out.setdefault(stream, []).extend(stream.report(windows, scores))
        except BaseException:
            for stream, events in out.items():
                stream._undelivered = events
            raise
        for stream in [stream for stream in self.streams if stream.closed]:
            if not stream.frames.closed:   # finished: its open events end with its audio
                stream.frames.closed = True
                out.setdefault(stream, []).extend(stream.tracker.close())
            self.streams.remove(stream)
        return {stream: events for stream, events in out.items() if events}

    def _score_round(self, groups, hold):
        """The windows of one round ([(stream, its windows)]) through the network in one call, each
        stream's with their scores to hold(stream, windows, scores). If the call fails, each stream's
        windows go through on their own, to fail the streams the network cannot take (see the class
        docstring); the error goes on when it is the network's."""
        try:
            parts = scored(self.scorer, [(stream.frames, windows) for stream, windows in groups], self.batch_size)
        except Exception as error:
            round_error = error   # every stream has its windows back (scored gives them back)
        else:
            for (stream, windows), part in zip(groups, parts):
                hold(stream, windows, part)
            return
        failing, failing_shapes, network_works = {}, set(), False
        for stream, windows in groups:
            # Twice on its own before it counts as the stream's: a brief engine error (memory, a
            # timeout) that outlasts the batch call must not end a healthy stream.
            for attempt in range(2):
                windows = stream.frames.next_windows(len(windows))   # the ones given back: they come first
                try:
                    [part] = scored(self.scorer, [(stream.frames, windows)], self.batch_size)
                except Exception as error:
                    failing[stream] = error
                    continue
                failing.pop(stream, None)
                hold(stream, windows, part)
                network_works = True
                break
            if stream in failing:
                failing_shapes |= {window.shape for window in windows}
        if failing and (network_works or self._scores_silence(failing_shapes)):
            for stream, error in failing.items():
                stream.error = error
                self.failed[stream] = error
                _release(stream)
            return
        # No stream's own call failed again (the network failed once), or the network fails on
        # silence too (it fails for everyone): its error, as before; every window is held or given back.
        raise round_error

    def _scores_silence(self, shapes):
        """Whether the network scores inputs of zeros of each of `shapes` (Window.inputs): when every
        stream's own call failed, it tells audio the network cannot take from a network that fails
        for everyone."""
        try:
            for shape in sorted(shapes):
                self.scorer.score_inputs(np.zeros((1,) + shape, np.float32))
        except Exception:
            return False
        return True


def _release(stream):
    """End a pooled EventStream where it is, unfinished (StreamPool's discard and failures): it takes
    no more audio, its buffered samples and unscored windows are dropped, and it cuts no window."""
    stream.closed = True
    stream.resampler = None
    stream._arrivals.clear()
    frames = stream.frames
    frames.finished = frames.closed = True
    frames.returned.clear()
    frames.drop_samples()


def detect_inputs(scorer, data, sample_rate=None, config=None, batch_size=None):
    """detect() of every input of `data` (paths and/or numpy waveforms at `sample_rate`, as
    predict takes them), each loaded and resampled to the model's rate; what Module.detect and
    Predictor.detect return. The windows of all inputs are scored together, `batch_size` windows
    of one length per network call (default: the scorer's)."""
    sources = pipeline.as_sources(data)
    rate = scorer.frontend.sample_rate
    waves = (audio.load(source, sample_rate, rate, name=name) for name, source in sources)
    return [result(scorer, [frames], config) for frames in recording_frames(scorer, waves, batch_size)]


def detect(scorer, wave, config=None, batch_size=None):
    """Frame scores and events of one recording at the model's rate.

    Returns {'frame_hop': seconds, 'frame_scores': [frames, classes], 'events': [...]}.
    """
    [frames] = recording_frames(scorer, [wave], batch_size)
    return result(scorer, [frames], config)


class _Recording:
    """A recording of recording_frames: its stream (fed everything), its windows cut so far with
    their scores (None until scored), and the frames kept of the scored ones at its start."""
    __slots__ = ('stream', 'windows', 'scores', 'parts')

    def __init__(self, stream):
        self.stream, self.windows, self.scores, self.parts = stream, [], [], []

    def keep_scored(self):
        """Keep the frames of the scored windows at the start (windows are kept in order)."""
        done = 0
        while done < len(self.scores) and self.scores[done] is not None:
            done += 1
        if done:
            self.parts.append(self.stream.keep_all(self.windows[:done], self.scores[:done]))
            del self.windows[:done], self.scores[:done]


def recording_frames(scorer, waves, batch_size=None):
    """The frame scores [frames, classes] of each recording of `waves` (1-D float32 at the model's
    rate; any iterable, read one at a time), in order: those of a FrameStream fed the whole
    recording, with the windows of all recordings scored in batches of `batch_size` windows of one
    length. Windows are cut as batches fill, so the samples of only about `batch_size` windows per
    window length (and of the recording being cut) are held at once.
    Consecutive windows are merged into one segment where the scorer allows it (merge_windows); a
    batch of segments then holds about the samples of `batch_size` windows."""
    batch_size = scorer.batch_size if batch_size is None else check_batch_size(batch_size)
    merge = scorer.merge_windows
    if merge > 1:
        segment_frames = scorer.window_frames + (merge - 1) * scorer.hop_frames
        batch_size = max(1, batch_size * scorer.window_frames // segment_frames)
    recordings = []
    pending = {}    # window input shape -> [(recording, window)] waiting for a batch

    def flush(shape):
        batch = pending.pop(shape)
        scores = scorer.network_scores([window for _, window in batch], batch_size)
        for (rec, window), row in zip(batch, scores):
            rec.scores[rec.windows.index(window)] = row
            window.inputs = None   # scored: only its place is needed to keep its frames
        for rec in {id(rec): rec for rec, _ in batch}.values():
            rec.keep_scored()

    for wave in waves:
        stream = FrameStream(scorer, batch_size, merge)
        stream.feed(wave)
        stream.finish()
        del wave
        rec = _Recording(stream)
        recordings.append(rec)
        while (window := stream.next_window()) is not None:
            rec.windows.append(window)
            rec.scores.append(None)
            shape = window.shape
            pending.setdefault(shape, []).append((rec, window))
            if len(pending[shape]) == batch_size:
                flush(shape)
        stream.drop_samples()
        if sum(map(len, pending.values())) > 2 * batch_size:
            # Many recordings shorter than a window, each of its own length: bound what waits.
            for shape in list(pending):
                flush(shape)
    for shape in list(pending):
        flush(shape)
    return [_stack(rec.parts, len(scorer.labels)) for rec in recordings]


def result(scorer, parts, config=None):
    """detect()'s answer from the frames a FrameStream kept (a list of [frames, classes] parts)."""
    scores = _stack(parts, len(scorer.labels))
    events = detect_events(scores, scorer.frame_seconds, scorer.labels, config) if len(scores) else []
    return {'frame_hop': scorer.frame_seconds, 'frame_scores': scores, 'events': events}

