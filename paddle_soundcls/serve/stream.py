"""`GET /v1/stream`: a WebSocket that takes PCM chunks and answers with scores as windows fill.

Protocol (every text message is JSON):

1. client -> {"sample_rate": 16000, "format": "int16" | "float32", "channels": 1,
              "window": 2.0, "hop": 0.5, "top_k": 5, "mode": "scores", "options": {},
              "api_key": "..."}       only sample_rate is required; api_key only when the
                                      server has one and the handshake sent no key header
   server -> {"type": "ready", "model", "sample_rate", "format", "channels", "window", "hop", "mode"}
2. client -> binary messages: little-endian PCM, channels interleaved, any length of whole frames
   server -> per window, once `window` seconds have arrived and then every `hop` seconds:
             {"type": "scores", "start": s, "end": s, "results": [{"label", "score"}, ...]}
             (seconds from the start of the stream; what is sent depends on the mode)
3. client -> {"type": "end"}: the server scores the last, partly new window, sends what the
   mode has left, then {"type": "end"}, and closes (1000).

Errors: {"type": "error", "error": {"code", "message"}} and the socket is closed (1008 for a bad
start message, a missing key or a silent client, 1007 for bad PCM, 1003 for a text message that
is not JSON). A window refused because the server is busy gets an error message with its
"start" and "end", and the stream goes on.

Modes are pluggable: `register_stream_mode(name, factory)`; factory(config, labels, meta) gives an
object with `on_window(start, end, scores) -> [messages]` and `on_end() -> [messages]`, where
scores is an OrderedDict(label -> score) of one window, best first. Built in: 'scores' (the
scores of each window) and 'events' (events as they start and end, from the windows' scores).
"""
import asyncio
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from .. import audio
from .settings import MAX_STREAM_MESSAGE_BYTES, ApiError, key_from_headers, key_matches

log = logging.getLogger(__name__)

SAMPLE_FORMATS = {'int16': np.dtype('<i2'), 'float32': np.dtype('<f4')}
DEFAULT_WINDOW = 2.0
DEFAULT_HOP = 0.5
CLOSE_NORMAL, CLOSE_UNSUPPORTED, CLOSE_BAD_DATA, CLOSE_POLICY = 1000, 1003, 1007, 1008


class StreamError(Exception):
    def __init__(self, code, message, close_code):
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


def results_list(scores, top_k):
    return [{'label': label, 'score': score} for label, score in list(scores.items())[:top_k]]


class ClipScores:
    """Mode 'scores': one message with the best `top_k` labels of every window."""

    def __init__(self, config, labels, meta):
        self.top_k = config.top_k

    def on_window(self, start, end, scores):
        return [{'type': 'scores', 'start': round(start, 6), 'end': round(end, 6),
                 'results': results_list(scores, self.top_k)}]

    def on_end(self):
        return []


class WindowEvents:
    """Mode 'events': events as they start and end, decided on the windows' scores (one score per
    label every `hop` seconds, so times are on the hop's grid): {"type": "start" | "end", "label",
    "onset", ("offset"), "confidence"}. The thresholds are the export's saved ones, or
    `options` of the start message (deploy.events.EventConfig fields)."""

    def __init__(self, config, labels, meta):
        from ..deploy.events import EventConfig, EventTracker
        settings = {**(meta.get('events') or {}), **config.options}
        try:
            event_config = EventConfig.from_dict(settings) if settings else None
        except (TypeError, ValueError) as exc:
            raise StreamError('bad_start', f'options: {exc}', CLOSE_POLICY) from None
        self.labels = list(labels)
        self.tracker = EventTracker(self.labels, config.hop, event_config)
        self.hop = config.hop

    def on_window(self, start, end, scores):
        row = np.array([[scores[label] for label in self.labels]], dtype=np.float32)
        return [{**report} for report in self.tracker.push(row)]

    def on_end(self):
        return self.tracker.close()


STREAM_MODES = {'scores': ClipScores, 'events': WindowEvents}


def register_stream_mode(name, factory):
    """Make `mode: name` in a start message use `factory(config, labels, meta)`."""
    STREAM_MODES[name] = factory


@dataclass
class StreamConfig:
    sample_rate: int
    format: str = 'int16'
    channels: int = 1
    window: float = DEFAULT_WINDOW
    hop: float = DEFAULT_HOP
    top_k: int = 5
    mode: str = 'scores'
    options: dict = field(default_factory=dict)


def parse_start(message, settings, num_labels):
    """The start message (a dict) -> StreamConfig; StreamError naming the field otherwise."""
    if not isinstance(message, dict):
        raise StreamError('bad_start', 'the first message must be a JSON object such as {"sample_rate": 16000, '
                                       '"format": "int16"}', CLOSE_POLICY)
    known = set(StreamConfig.__dataclass_fields__) | {'api_key'}
    unknown = sorted(set(message) - known)
    if unknown:
        raise StreamError('bad_start', f'unknown fields {unknown} in the start message; known: {sorted(known)}',
                          CLOSE_POLICY)
    if 'sample_rate' not in message:
        raise StreamError('bad_start', 'the start message needs "sample_rate" (Hz) of the PCM you will send',
                          CLOSE_POLICY)
    values = {k: v for k, v in message.items() if k != 'api_key'}
    values.setdefault('top_k', settings.default_top_k)
    config = StreamConfig(**values)
    try:
        config.sample_rate = audio.check_sample_rate(config.sample_rate, 'sample_rate')
    except audio.AudioError as exc:
        raise StreamError('bad_start', str(exc), CLOSE_POLICY) from None
    if config.format not in SAMPLE_FORMATS:
        raise StreamError('bad_start', f'format must be one of {sorted(SAMPLE_FORMATS)}, got {config.format!r}',
                          CLOSE_POLICY)
    if isinstance(config.channels, bool) or not isinstance(config.channels, int) or not 1 <= config.channels <= 64:
        raise StreamError('bad_start', f'channels must be an int from 1 to 64, got {config.channels!r}', CLOSE_POLICY)
    for name in ('window', 'hop'):
        value = getattr(config, name)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not 0 < value <= settings.max_audio_seconds):
            raise StreamError('bad_start', f'{name} must be seconds in (0, {settings.max_audio_seconds:g}] '
                                           f'(--max-audio-seconds), got {value!r}', CLOSE_POLICY)
    if isinstance(config.top_k, bool) or not isinstance(config.top_k, int) or config.top_k < 1:
        raise StreamError('bad_start', f'top_k must be a positive int, got {config.top_k!r}', CLOSE_POLICY)
    config.top_k = min(config.top_k, num_labels)
    if config.mode not in STREAM_MODES:
        raise StreamError('bad_start', f'mode must be one of {sorted(STREAM_MODES)}, got {config.mode!r}',
                          CLOSE_POLICY)
    if not isinstance(config.options, dict):
        raise StreamError('bad_start', f'options must be a JSON object, got {config.options!r}', CLOSE_POLICY)
    return config


def parse_chunk(data, config):
    """Bytes of interleaved PCM -> mono float32 samples."""
    dtype = SAMPLE_FORMATS[config.format]
    frame_bytes = dtype.itemsize * config.channels
    if len(data) % frame_bytes:
        raise StreamError('bad_chunk', f'a chunk of {config.format} PCM with {config.channels} channel(s) must hold '
                                       f'whole frames of {frame_bytes} bytes; got {len(data)} bytes', CLOSE_BAD_DATA)
    samples = np.frombuffer(data, dtype=dtype).reshape(-1, config.channels)
    if config.format == 'int16':
        samples = samples.astype(np.float32) / 32768.0
    else:
        problem = audio.samples_problem(samples)
        if problem:
            raise StreamError('bad_chunk', f'a float32 chunk {problem}', CLOSE_BAD_DATA)
    return samples.mean(axis=1, dtype=np.float32) if config.channels > 1 else samples[:, 0].astype(np.float32)


class SlidingWindow:
    """Samples in, windows of `window` samples every `hop` samples out, starting at sample 0.

    Keeps at most the last window plus one chunk in memory, however long the stream.
    """

    def __init__(self, window, hop):
        self.window, self.hop = window, hop
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0          # stream index of buffer[0]
        self.next_start = 0      # stream index where the next window starts
        self.last_end = 0        # end of the last window given out

    @property
    def total(self):
        return self.offset + len(self.buffer)

    def push(self, samples):
        """-> [(start, end, window samples)] for every window completed by `samples`."""
        self.buffer = np.concatenate([self.buffer, samples])
        ready = []
        while self.next_start + self.window <= self.total:
            i = self.next_start - self.offset
            ready.append((self.next_start, self.next_start + self.window, self.buffer[i:i + self.window].copy()))
            self.last_end = self.next_start + self.window
            self.next_start += self.hop
        # Keep the last `window` samples (for the tail window at the end) and what the next window needs.
        keep_from = min(self.next_start, max(self.total - self.window, 0))
        drop = min(max(keep_from - self.offset, 0), len(self.buffer))
        self.buffer, self.offset = self.buffer[drop:], self.offset + drop
        return ready

    def tail(self):
        """The last window at the end of the stream if samples arrived after the last one, else None."""
        if self.total <= self.last_end or self.total == 0:
            return None
        start = max(self.total - self.window, 0)
        i = start - self.offset
        return start, self.total, self.buffer[i:].copy()


async def run_stream(websocket, settings, labels, meta, model_rate, classify):
    """Serve one WebSocket. classify: async (waveform at model_rate) -> OrderedDict(label -> score)."""
    await websocket.accept()
    try:
        await _session(websocket, settings, labels, meta, model_rate, classify)
    except StreamError as exc:
        await _close_with_error(websocket, exc.code, exc.message, exc.close_code)
    except WebSocketDisconnect:
        pass  # the client left; nothing to answer
    except Exception as exc:  # a bad stream must not take the server down; log it and end this stream only
        log.exception('stream failed')
        await _close_with_error(websocket, 'internal_error', f'the server failed on this stream ({type(exc).__name__})',
                                1011)


async def _close_with_error(websocket, code, message, close_code):
    try:
        await websocket.send_json({'type': 'error', 'error': {'code': code, 'message': message}})
        await websocket.close(close_code)
    except Exception:  # the client may already be gone
        pass


async def _receive(websocket, timeout, waiting_for):
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout)
    except asyncio.TimeoutError:
        raise StreamError('timeout', f'no message for {timeout:g} s (--timeout) while waiting for {waiting_for}; '
                                     f'closing the stream', CLOSE_POLICY) from None
    if message['type'] == 'websocket.disconnect':
        raise WebSocketDisconnect(message.get('code', 1000))
    return message


def _json_text(message):
    try:
        return json.loads(message['text'])
    except ValueError as exc:
        raise StreamError('bad_message', f'text messages must be JSON ({exc}); send audio as binary messages',
                          CLOSE_UNSUPPORTED) from None


async def _session(websocket, settings, labels, meta, model_rate, classify):
    first = await _receive(websocket, settings.timeout, 'the start message')
    if first.get('text') is None:
        raise StreamError('bad_start', 'send the start message (JSON text, e.g. {"sample_rate": 16000}) before '
                                       'any audio', CLOSE_POLICY)
    start = _json_text(first)
    presented = key_from_headers(websocket.headers) or (start.get('api_key') if isinstance(start, dict) else None)
    if not key_matches(settings, presented if isinstance(presented, str) else None):
        raise StreamError('unauthorized', 'this server needs an API key: send the header `X-API-Key: KEY` or '
                                          '"api_key" in the start message', CLOSE_POLICY)
    config = parse_start(start, settings, len(labels))
    mode = STREAM_MODES[config.mode](config, labels, meta)
    windows = SlidingWindow(max(1, round(config.window * config.sample_rate)),
                            max(1, round(config.hop * config.sample_rate)))
    await websocket.send_json({'type': 'ready', 'model': meta.get('model'), 'sample_rate': config.sample_rate,
                               'format': config.format, 'channels': config.channels, 'window': config.window,
                               'hop': config.hop, 'mode': config.mode})

    async def score(begin, end, samples):
        wave = await run_in_threadpool(audio.resample, samples, config.sample_rate, model_rate)
        start_s, end_s = begin / config.sample_rate, end / config.sample_rate
        try:
            scores = await classify(wave)
        except ApiError as exc:  # busy or timed out: this window is lost, the stream goes on
            await websocket.send_json({'type': 'error', 'start': start_s, 'end': end_s,
                                       'error': {'code': exc.code, 'message': exc.message}})
            return
        for reply in mode.on_window(start_s, end_s, scores):
            await websocket.send_json(reply)

    while True:
        message = await _receive(websocket, settings.timeout, 'audio')
        if message.get('bytes') is not None:
            data = message['bytes']
            if len(data) > MAX_STREAM_MESSAGE_BYTES:
                raise StreamError('chunk_too_large', f'a chunk holds {len(data)} bytes; send at most '
                                                     f'{MAX_STREAM_MESSAGE_BYTES} per message', CLOSE_BAD_DATA)
            for begin, end, samples in windows.push(parse_chunk(data, config)):
                await score(begin, end, samples)
            continue
        control = _json_text(message)
        if control != {'type': 'end'}:
            raise StreamError('bad_message', f'after the start message, text messages can only be {{"type": "end"}}; '
                                             f'got {str(message.get("text"))[:100]!r}', CLOSE_UNSUPPORTED)
        tail = windows.tail()
        if tail is not None:
            await score(*tail)
        for reply in mode.on_end():
            await websocket.send_json(reply)
        await websocket.send_json({'type': 'end'})
        await websocket.close(CLOSE_NORMAL)
        return
