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
its chunks.

Batching: the network scores windows `batch_size` at a time (FrameScorer.network_scores), only
windows of one length in one call, so no window is padded beyond the network's shortest input
and its scores do not depend on its neighbours in the batch (networks that normalise over the
whole input, e.g. CP-Mobile's relaxed frequency-wise normalisation or PaSST, see no other padding).
Offline detection (detect, detect_inputs) cuts the windows of its recordings as they are
needed and scores them in batches, across recordings; a live stream scores the windows that
complete within one push together, so it waits for no later audio.

Latency of a stream: a frame is reported once the window that keeps it is complete: at most
hop + (window - hop) / 2 seconds after it was pushed, plus the compute of one window, plus
half the median filter of the event decisions (EventTracker.delay_seconds).
"""

import time
from collections import deque

import numpy as np

from .. import audio
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


class FrameScorer:
    """Frame scores of audio of any length, window by window.

    score_frames: waveforms float32 [batch, samples] -> frame scores [batch, frames', classes]
        (numpy), the network's frames for each window.
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
    """

    def __init__(self, score_frames, frontend, labels, geometry, window=None, hop=None, min_seconds=1.0,
                 clip_seconds=None, batch_size=DEFAULT_BATCH_SIZE):
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
        self.frame_samples = frontend.hop_length
        self.frame_seconds = frontend.hop_length / frontend.sample_rate
        self.window_frames = max(1, round(window * frontend.sample_rate / self.frame_samples))
        self.hop_frames = max(1, min(self.window_frames, round(hop * frontend.sample_rate / self.frame_samples)))
        self.margin_frames = (self.window_frames - self.hop_frames) // 2
        self.min_samples = int(round(min_seconds * frontend.sample_rate))
        self.batch_size = check_batch_size(batch_size)

    @property
    def latency_seconds(self):
        """Longest wait of a pushed sample for its frame scores, compute not included."""
        return (self.window_frames - self.margin_frames) * self.frame_seconds

    def window_scores(self, segment):
        """Frame scores [frames, classes] of one window of samples, at the front end's frame rate
        (one frame per hop_length samples, frame i starting at sample i * hop_length)."""
        num_frames = max(1, len(segment) // self.frame_samples)
        padded = pad_to(segment, self.min_samples)
        coarse = np.asarray(self.score_frames(padded[None]))[0]
        # Frames over the padding only shape the interpolation at the segment's end; the output
        # stops at the segment's last frame.
        return self.geometry.to_frame_rate(coarse, num_frames)

    def network_scores(self, windows, batch_size=None):
        """The network's frame scores of `windows` (Windows, or 1-D sample arrays already padded to
        min_samples): a list of [frames', classes] arrays, in the order of `windows`. Windows of one
        length go through score_frames together, `batch_size` (default self.batch_size) at a time;
        windows of different lengths are never padded to one another."""
        batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        samples = [w.samples if isinstance(w, Window) else np.asarray(w, dtype=np.float32) for w in windows]
        by_length = {}
        for i, wave in enumerate(samples):
            by_length.setdefault(len(wave), []).append(i)
        out = [None] * len(samples)
        for indices in by_length.values():
            for first in range(0, len(indices), batch_size):
                part = indices[first:first + batch_size]
                scores = np.asarray(self.score_frames(np.stack([samples[i] for i in part])), dtype=np.float32)
                if scores.ndim != 3 or len(scores) != len(part):
                    raise ArgumentError(f'score_frames gave frame scores of shape {list(scores.shape)} for '
                                        f'{len(part)} windows; it must give [windows, frames, classes]')
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
    """One window of a FrameStream to score: `samples` (padded to the network's shortest input)
    from front-end frame `start`, `frames` of them; `final`: the last window of the stream."""
    __slots__ = ('start', 'frames', 'samples', 'final')

    def __init__(self, start, frames, samples, final):
        self.start, self.frames, self.samples, self.final = start, frames, samples, final


class FrameStream:
    """Frame scores of a stream, window by window, with the one window cutter (segments.SlidingWindow):
    windows of `window` every `hop` from the start, the last one ending at the last whole frame.
    Offline detection is this stream fed the whole recording at once, so a live stream gives
    exactly its frames, however its audio is chunked.

    push(samples) -> the new frames' scores [frames, classes], close() -> the rest, each window
    scored by the scorer's score_frames. A caller that scores windows elsewhere (the server, through
    its queue) uses the parts: feed(samples); finish() at the end; next_window() -> a Window to score,
    or None while more audio is needed; keep(window, network frame scores) -> the new frames;
    next_windows(limit) and keep_all(windows, their network frame scores) do the same for several
    windows at once (a batch of them through the network).
    The windows that complete within one push are scored together, `batch_size` at a time
    (default: the scorer's).
    Memory: about two windows of samples, whatever the chunks; work per push proportional to it.
    """

    def __init__(self, scorer, batch_size=None):
        self.scorer = scorer
        self.batch_size = scorer.batch_size if batch_size is None else check_batch_size(batch_size)
        self.windows = SlidingWindow(scorer.window_frames * scorer.frame_samples,
                                     scorer.hop_frames * scorer.frame_samples)
        self.emitted = 0           # frames reported so far
        self.promised = 0          # frames the windows cut so far will report, once kept
        self.finished = False      # no more audio: the last window may be cut
        self.closed = False

    def feed(self, samples):
        if self.finished:
            raise ArgumentError('the stream is closed; start a new one')
        self.windows.push(samples)

    def finish(self):
        self.finished = True

    def next_window(self):
        s = self.scorer
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
        window = Window(start // s.frame_samples, max(1, (end - start) // s.frame_samples),
                        pad_to(samples, s.min_samples), final)
        # What keep() will report of it: up to the end of its central hop (the last window: to its end).
        self.promised = max(self.promised, window.start + (window.frames if final else s.margin_frames + s.hop_frames))
        return window

    def next_windows(self, limit):
        """Up to `limit` next windows (a list; empty while more audio is needed)."""
        windows = []
        while len(windows) < limit and (window := self.next_window()) is not None:
            windows.append(window)
        return windows

    def drop_samples(self):
        """Free the samples of a finished stream whose windows have all been cut (next_window()
        gave None after finish()): offline detection of a long recording then holds only the
        windows' scores until they are kept."""
        self.windows = None

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
            end = window.frames if window.final else min(s.margin_frames + s.hop_frames, window.frames)
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
            out.append(self.keep_all(windows, self.scorer.network_scores(windows, self.batch_size)))
        return _stack(out, len(self.scorer.labels))


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
            raise ArgumentError('push after close: the stream is closed; start a new one with stream()')
        wave = self._mono(chunk)
        if wave.size:
            audio.check_waveform(wave, 'chunk')
        if self.resampler is not None:
            wave = self.resampler.push(wave)
        self.frames.feed(wave)
        self._arrivals.append((self.frames.windows.total, time.monotonic()))

    def score(self):
        """Score this stream's complete windows on its own: the events that started or ended."""
        frames, events = self.frames, []
        while windows := frames.next_windows(frames.batch_size):
            events += self.report(windows, frames.scorer.network_scores(windows, frames.batch_size))
        return events

    def report(self, windows, network_scores):
        """The events of the frames of `windows` (next_windows' windows, scored: their network frame
        scores); records report_delay."""
        events = self.tracker.push(self.frames.keep_all(windows, network_scores))
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
        mics[name].finish()                        # no more audio: the next score() gives its last
                                                   # window's events and ends its open events

    Streams are EventStreams (push and close score a stream alone, with the same results).
    Each stream's report_delay / max_report_delay: seconds from the feed that completed its latest
    window to that window's events being reported (queueing and compute; latency_seconds says
    how long a sample waits for its window). Memory: each stream's buffer (about two windows of
    samples) and at most `batch_size` cut windows per stream while score() runs.
    """

    def __init__(self, scorer, config=None, batch_size=None):
        self.scorer, self.config = scorer, config
        self.batch_size = scorer.batch_size if batch_size is None else check_batch_size(batch_size)
        self.streams = []

    def open(self, sample_rate=None, channels=1):
        """A new stream of chunks at `sample_rate` (default the model's) with `channels` channels."""
        rate = self.scorer.frontend.sample_rate if sample_rate is None else sample_rate
        stream = EventStream(self.scorer, rate, self.config, channels, self.batch_size)
        self.streams.append(stream)
        return stream

    def score(self):
        """Score every complete window of every stream, together: {stream: [events]} for the streams
        with new events. A finished stream gives its last events and leaves the pool."""
        out = {}
        while True:
            ready = [(stream, stream.frames.next_windows(self.batch_size)) for stream in self.streams
                     if not stream.frames.closed]
            ready = [(stream, windows) for stream, windows in ready if windows]
            if not ready:
                break
            scores = self.scorer.network_scores([w for _, windows in ready for w in windows], self.batch_size)
            first = 0
            for stream, windows in ready:
                out.setdefault(stream, []).extend(stream.report(windows, scores[first:first + len(windows)]))
                first += len(windows)
        for stream in [stream for stream in self.streams if stream.closed]:
            if not stream.frames.closed:   # finished: its open events end with its audio
                stream.frames.closed = True
                out.setdefault(stream, []).extend(stream.tracker.close())
            self.streams.remove(stream)
        return {stream: events for stream, events in out.items() if events}


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
    window length (and of the recording being cut) are held at once."""
    batch_size = scorer.batch_size if batch_size is None else check_batch_size(batch_size)
    recordings = []
    pending = {}    # window length in samples -> [(recording, window)] waiting for a batch

    def flush(length):
        batch = pending.pop(length)
        scores = scorer.network_scores([window for _, window in batch], batch_size)
        for (rec, window), row in zip(batch, scores):
            rec.scores[rec.windows.index(window)] = row
            window.samples = None   # scored: only its place is needed to keep its frames
        for rec in {id(rec): rec for rec, _ in batch}.values():
            rec.keep_scored()

    for wave in waves:
        stream = FrameStream(scorer, batch_size)
        stream.feed(wave)
        stream.finish()
        del wave
        rec = _Recording(stream)
        recordings.append(rec)
        while (window := stream.next_window()) is not None:
            rec.windows.append(window)
            rec.scores.append(None)
            length = len(window.samples)
            pending.setdefault(length, []).append((rec, window))
            if len(pending[length]) == batch_size:
                flush(length)
        stream.drop_samples()
        if sum(map(len, pending.values())) > 2 * batch_size:
            # Many recordings shorter than a window, each of its own length: bound what waits.
            for length in list(pending):
                flush(length)
    for length in list(pending):
        flush(length)
    return [_stack(rec.parts, len(scorer.labels)) for rec in recordings]


def result(scorer, parts, config=None):
    """detect()'s answer from the frames a FrameStream kept (a list of [frames, classes] parts)."""
    scores = _stack(parts, len(scorer.labels))
    events = detect_events(scores, scorer.frame_seconds, scorer.labels, config) if len(scores) else []
    return {'frame_hop': scorer.frame_seconds, 'frame_scores': scores, 'events': events}

