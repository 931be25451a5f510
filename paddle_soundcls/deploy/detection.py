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

Latency of a stream: a frame is reported once the window that keeps it is complete: at most
hop + (window - hop) / 2 seconds after it was pushed, plus the compute of one window, plus
half the median filter of the event decisions (EventTracker.delay_seconds).
"""

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
    """

    def __init__(self, score_frames, frontend, labels, geometry, window=None, hop=None, min_seconds=1.0,
                 clip_seconds=None):
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
    or None while more audio is needed; keep(window, network frame scores) -> the new frames.
    Memory: about two windows of samples, whatever the chunks; work per push proportional to it.
    """

    def __init__(self, scorer):
        self.scorer = scorer
        self.windows = SlidingWindow(scorer.window_frames * scorer.frame_samples,
                                     scorer.hop_frames * scorer.frame_samples)
        self.emitted = 0           # frames reported so far
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
        cut = self.windows.next()
        if cut is None and self.finished and self.emitted < self.windows.total // s.frame_samples:
            # The last window ends at the last whole frame; it holds the frames no earlier one kept.
            cut = self.windows.tail(self.windows.total // s.frame_samples * s.frame_samples, always=True)
            final = True
        else:
            final = False
        if cut is None:
            return None
        start, end, samples = cut
        return Window(start // s.frame_samples, max(1, (end - start) // s.frame_samples),
                      pad_to(samples, s.min_samples), final)

    def keep(self, window, network_scores):
        """The frames of `window` (scored: network frame scores [frames', classes]) that are new:
        of each window those of its central hop (the first from its start, the last to its end)."""
        s = self.scorer
        scores = s.geometry.to_frame_rate(np.asarray(network_scores), window.frames)
        keep_end = len(scores) if window.final else s.margin_frames + s.hop_frames
        kept = scores[self.emitted - window.start:keep_end]
        self.emitted += len(kept)
        return kept

    def push(self, samples):
        if self.closed:
            raise ArgumentError('the stream is closed; start a new one')
        self.feed(samples)
        return self._score_ready()

    def close(self):
        """Score what is left (the last window ends at the end of the audio) and end the stream."""
        if self.closed:
            return _stack([], len(self.scorer.labels))
        self.finish()
        self.closed = True
        return self._score_ready()

    def _score_ready(self):
        out = []
        while True:
            window = self.next_window()
            if window is None:
                return _stack(out, len(self.scorer.labels))
            out.append(self.keep(window, np.asarray(self.scorer.score_frames(window.samples[None]))[0]))


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
    """

    def __init__(self, scorer, sample_rate, config=None, channels=1):
        self.sample_rate = audio.check_sample_rate(sample_rate, 'sample_rate')
        self.channels = validate.positive_int('channels', channels, hint='channels of the chunks')
        self.target_sr = scorer.frontend.sample_rate
        self.frames = FrameStream(scorer)
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
        if self.closed:
            raise ArgumentError('push after close: the stream is closed; start a new one with stream()')
        wave = self._mono(chunk)
        if wave.size:
            audio.check_waveform(wave, 'chunk')
        if self.resampler is not None:
            wave = self.resampler.push(wave)
        return self.tracker.push(self.frames.push(wave))

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
        if self.closed:
            return []
        self.closed = True
        events = []
        if self.resampler is not None:
            events += self.tracker.push(self.frames.push(self.resampler.flush()))
        events += self.tracker.push(self.frames.close())
        return events + self.tracker.close()


def detect_inputs(scorer, data, sample_rate=None, config=None):
    """detect() of every input of `data` (paths and/or numpy waveforms at `sample_rate`, as
    predict takes them), each loaded and resampled to the model's rate; what Module.detect and
    Predictor.detect return."""
    sources = pipeline.as_sources(data)
    rate = scorer.frontend.sample_rate
    return [detect(scorer, audio.load(source, sample_rate, rate, name=name), config) for name, source in sources]


def detect(scorer, wave, config=None):
    """Frame scores and events of one recording at the model's rate.

    Returns {'frame_hop': seconds, 'frame_scores': [frames, classes], 'events': [...]}.
    """
    stream = FrameStream(scorer)
    return result(scorer, [stream.push(wave), stream.close()], config)


def result(scorer, parts, config=None):
    """detect()'s answer from the frames a FrameStream kept (a list of [frames, classes] parts)."""
    scores = _stack(parts, len(scorer.labels))
    events = detect_events(scores, scorer.frame_seconds, scorer.labels, config) if len(scores) else []
    return {'frame_hop': scorer.frame_seconds, 'frame_scores': scores, 'events': events}

