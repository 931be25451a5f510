"""When sounds happen: frame scores of recordings of any length and of live streams, and the
events in them (see events.py for how frame scores become events). Paddle-free.

The network scores windows of `window` seconds every `hop` seconds. Each window gives frame
scores at the network's own rate (a frame per 2**k front-end frames, placed in time by the
model's frame geometry, see paddle_soundcls/frames.py), interpolated to the front end's frame
rate (one frame per hop_length samples: 10 ms for the PANNs and EfficientAT front ends, 15.625 ms
for CP-Mobile's); of each window the frames of its central `hop` seconds are kept (the first window keeps its start; the last window is what
remains of the audio and keeps its end), where the network sees context on both sides.
Offline detection is a stream fed the whole recording at once, so a live stream gives exactly
the frames, and so the events, of offline detection of the same audio, whatever the sizes of
its chunks.

Latency of a stream: a frame is reported once the window that keeps it is complete: at most
hop + (window - hop) / 2 seconds after it was pushed, plus the compute of one window, plus
half the median filter of the event decisions (EventTracker.delay_seconds).
"""
import math

import numpy as np

from .. import audio
from ..frames import check_geometry, for_frontend
from . import pipeline
from .events import EventTracker, detect_events

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
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not value > 0):
                raise ValueError(f'{name} must be a positive number of seconds, got {value!r}')
        if hop > window:
            raise ValueError(f'hop ({hop} s) must not be longer than window ({window} s): audio between windows '
                             f'would never be scored')
        if window < min_seconds:
            raise ValueError(f'window ({window:g} s) is shorter than the shortest input the network takes '
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
        padded = pipeline.pad_to(segment, self.min_samples)
        coarse = np.asarray(self.score_frames(padded[None]))[0]
        # Frames over the padding only shape the interpolation at the segment's end; the output
        # stops at the segment's last frame.
        return self.geometry.to_frame_rate(coarse, num_frames)


class FrameStream:
    """Frame scores of a live stream: push(samples) -> the new frames' scores [frames, classes],
    close() -> the rest. Memory: one window of samples."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0      # global frame index of buffer[0]
        self.next_window = 0       # global frame index where the next window starts
        self.emitted = 0           # global frames reported so far
        self.closed = False

    def push(self, samples):
        if self.closed:
            raise ValueError('the stream is closed; start a new one')
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, dtype=np.float32)])
        s = self.scorer
        out = []
        while (self.next_window + s.window_frames - self.buffer_start) * s.frame_samples <= len(self.buffer):
            out.append(self._window(final=False))
        return _stack(out, len(s.labels))

    def close(self):
        """Score what is left (the last window ends at the end of the audio) and end the stream."""
        if self.closed:
            return _stack([], len(self.scorer.labels))
        self.closed = True
        total = self.buffer_start + len(self.buffer) // self.scorer.frame_samples
        if total <= self.emitted:
            return _stack([], len(self.scorer.labels))
        return self._window(final=True)

    def _window(self, final):
        s = self.scorer
        offset = (self.next_window - self.buffer_start) * s.frame_samples
        segment = self.buffer[offset:offset + s.window_frames * s.frame_samples]
        scores = s.window_scores(segment)
        keep_end = len(scores) if final else s.margin_frames + s.hop_frames
        keep_start = self.emitted - self.next_window
        kept = scores[keep_start:keep_end]
        self.emitted += len(kept)
        self.next_window += s.hop_frames
        # Drop the samples no later window reads.
        drop = (self.next_window - self.buffer_start) * s.frame_samples
        self.buffer, self.buffer_start = self.buffer[drop:], self.next_window
        return kept


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
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f'channels must be a positive int (channels of the chunks), got {channels!r}')
        self.channels = int(channels)
        self.target_sr = scorer.frontend.sample_rate
        self.frames = FrameStream(scorer)
        self.tracker = EventTracker(scorer.labels, scorer.frame_seconds, config)
        self.pending = np.zeros(0, dtype=np.float32)  # input not yet resampled (see push)
        self.closed = False

    @property
    def latency_seconds(self):
        return self.frames.scorer.latency_seconds + self.tracker.delay_seconds

    def push(self, chunk):
        if self.closed:
            raise ValueError('push after close: the stream is closed; start a new one with stream()')
        wave = self._mono(chunk)
        if wave.size:
            audio.check_waveform(wave, 'chunk')
        # Resample in one piece per push: a resampler restarted at every chunk edge would
        # click; blocks of a second keep the error of edge effects away from the frames.
        if self.sample_rate != self.target_sr:
            self.pending = np.concatenate([self.pending, wave])
            whole = len(self.pending) // self.sample_rate * self.sample_rate
            if whole == 0:
                return []
            wave, self.pending = audio.resample(self.pending[:whole], self.sample_rate, self.target_sr), \
                self.pending[whole:]
        return self.tracker.push(self.frames.push(wave))

    def _mono(self, chunk):
        """A chunk [frames, channels] (or [frames] when mono) -> float32 mono samples."""
        chunk = np.asarray(chunk)
        if chunk.ndim == 1 and self.channels == 1:
            return audio.to_mono(chunk, 'chunk')
        if chunk.ndim != 2 or chunk.shape[1] != self.channels:
            expected = '[frames] or [frames, 1]' if self.channels == 1 else f'[frames, {self.channels}]'
            raise audio.AudioError(f'chunk: this stream has {self.channels} channel(s), so chunks are {expected} '
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
        if len(self.pending):
            events += self.tracker.push(self.frames.push(audio.resample(self.pending, self.sample_rate,
                                                                        self.target_sr)))
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
    scores = _stack([stream.push(wave), stream.close()], len(scorer.labels))
    events = detect_events(scores, scorer.frame_seconds, scorer.labels, config) if len(scores) else []
    return {'frame_hop': scorer.frame_seconds, 'frame_scores': scores, 'events': events}

