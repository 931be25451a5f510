"""`GET /v1/stream`: a WebSocket that takes PCM chunks and answers with scores as windows fill.

Protocol (every text message is JSON):

1. client -> {"sample_rate": 16000, "format": "int16" | "float32", "channels": 1,
              "window": 2.0, "hop": 0.5, "top_k": 5, "mode": "scores", "options": {},
              "progress": false, "api_key": "..."}       only sample_rate is required; api_key only when the
                                      server has one and the handshake sent no key header
   server -> {"type": "ready", "model", "sample_rate", "format", "channels", "window", "hop", "mode"}
2. client -> binary messages: little-endian PCM, channels interleaved, any length of whole frames
   server -> per window, once `window` seconds have arrived and then every `hop` seconds:
             {"type": "scores", "start": s, "end": s, "results": [{"label", "score"}, ...]}
             (seconds from the start of the stream; what is sent depends on the mode)
             mode "events" with "progress": true in the start message also sends, after each window:
             {"type": "progress", "start": s, "end": s, "frames_end": s} (the window scored, and the
             end of the frame scores known so far: events up to frames_end minus the median filter's
             half width are decided)
3. client -> {"type": "end"}: the server scores the last, partly new window, sends what the
   mode has left, then {"type": "done"}, and closes (1000).

window and hop follow the rule of /v1/events (settings.check_window_hop), and have its defaults
(the model's training clip length, or 10 s, within --max-window-seconds; hop half of it): window
at least the model's shortest input and at most --max-window-seconds, hop at least the
network's frame hop and at most the window, window / hop at most --max-overlap.

The start message is at most MAX_START_MESSAGE_BYTES; a field it does not take is refused
(`unknown_parameter`, the rule of every endpoint: params.py); sample_rate is at least
MIN_STREAM_SAMPLE_RATE. A wrong key in the handshake's headers is refused before the handshake
is answered (HTTP 403).

Errors: {"type": "error", "error": {"code", "message"}} and the socket is closed, the close
frame's reason carrying the code (1008 for a bad start message, a missing key or a silent client, 1007 for bad PCM, 1003 for a text message that
is not JSON); a client sending more than MAX_MESSAGES_PER_SECOND messages a second gets
"too_many_messages" and its connection is dropped. A window refused because the server is
busy gets an error message with its "start" and "end", and the stream goes on. A handshake
from a browser page of another origin than the server's own or those of --cors-origin is
refused (HTTP 403).

Cost of one stream: the audio is resampled to the model's rate once, as it arrives (work
proportional to each message), into a buffer of two windows; windows are scored one at a time
through the server's engine queue, so one stream has at most one window waiting there. The
server reads at most READ_AHEAD_BYTES of PCM ahead of the scoring (many small messages are
taken as one piece); when the client leaves, the stream's waiting work is dropped at once.

Modes are pluggable: `register_stream_mode(name, factory)`; factory(config, labels, meta) gives an
object with `on_window(start, end, scores) -> [messages]` and `on_end() -> [messages]`, where
scores is an OrderedDict(label -> score) of one window, best first; or, with `frames = True`,
`start(scorer)`, `on_frames(frame scores [frames, classes]) -> [messages]` and `on_end()`, fed
the frames of offline detection. Built in: 'scores' (the scores of each window) and 'events'
(events as they start and end, decided on the frames as /v1/events and Predictor.stream do).
"""
import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

from starlette.websockets import WebSocketDisconnect

from .. import audio, validate
from ..deploy import pcm
from ..deploy.detection import FrameStream
from ..deploy.events import EventConfig, EventTracker
from ..deploy.segments import SlidingWindow
from ..errors import ArgumentError
from . import params
from .params import unknown_message
from .settings import (MAX_STREAM_MESSAGE_BYTES, ApiError, key_from_headers, key_matches, window_and_hop,
                       origin_allowed)

log = logging.getLogger(__name__)

CLOSE_NORMAL, CLOSE_UNSUPPORTED, CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_TRY_AGAIN = 1000, 1003, 1007, 1008, 1013
READ_AHEAD_BYTES = 2 * MAX_STREAM_MESSAGE_BYTES   # PCM read and held while earlier audio is scored
PIECE_SAMPLES = 1 << 16           # stream samples resampled in one step
# Messages a stream may send in a second (as a burst, and on average): 5 % of that is a 10-ms
# chunk's rate. Each message costs the server's event loop its parsing however small it is,
# so a flood of tiny ones is dropped, connection and all (its buffered data with it).
MAX_MESSAGES_PER_SECOND = 5000
# Below this rate a stream is not audio a sound model can use, and each sample would be
# upsampled many times over to the model's rate (1 kHz -> 32 kHz is 32 samples each).
MIN_STREAM_SAMPLE_RATE = 8000
# The start message is a few fields (with per-class thresholds in "options", a few kB); more is
# refused before it is parsed.
MAX_START_MESSAGE_BYTES = 64 * 1024
MAX_START_ITEMS = 4096
INLINE_ELEMENTS = 1 << 18         # a resampling step this small (samples x filter taps) runs on the event loop


class StreamError(Exception):
    """close_code None: the connection is dropped after the error message, without the closing
    handshake (which would keep reading what the client still sends)."""

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


class FrameEvents:
    """Mode 'events': events as they start and end, decided on frame scores exactly as /v1/events,
    Predictor.stream and `paddle-soundcls events -` decide them (the same windows, frames and
    decisions): {"type": "start" | "end", "label", "onset", ("offset"), "confidence"}. The
    thresholds are the export's saved ones, or `options` of the start message
    (deploy.events.EventConfig fields)."""
    frames = True   # takes the frames of detection.FrameStream (on_frames), not clip scores of windows

    def __init__(self, config, labels, meta):
        settings = {**(meta.get('events') or {}), **config.options}
        try:
            self.config = EventConfig.from_dict(settings) if settings else None
            if self.config is not None:
                self.config.thresholds(len(labels))
        except (TypeError, ValueError) as exc:
            raise StreamError('bad_start', f'options: {exc}', CLOSE_POLICY) from None
        self.labels = list(labels)
        self.tracker = None

    def start(self, scorer):
        self.tracker = EventTracker(self.labels, scorer.frame_seconds, self.config)

    def on_frames(self, frame_scores):
        return [dict(report) for report in self.tracker.push(frame_scores)]

    def on_end(self):
        return self.tracker.close()


STREAM_MODES = {'scores': ClipScores, 'events': FrameEvents}


def register_stream_mode(name, factory):
    """Make `mode: name` in a start message use `factory(config, labels, meta)`."""
    STREAM_MODES[name] = factory


@dataclass
class StreamConfig:
    sample_rate: int
    format: str = 'int16'
    channels: int = 1
    window: float = None      # None: the model's training clip length (or 10 s) within --max-window-seconds
    hop: float = None         # None: half the window
    top_k: int = 5
    mode: str = 'scores'
    options: dict = field(default_factory=dict)
    progress: bool = False    # frame modes: a "progress" message after every window scored


def _bad_start(message):
    return StreamError('bad_start', message, CLOSE_POLICY)


def parse_start(message, settings, num_labels, limits):
    """The start message (a dict) -> StreamConfig; StreamError naming the field otherwise.

    limits: the settings.WindowLimits of the served model.
    """
    if not isinstance(message, dict):
        raise _bad_start('the first message must be a JSON object such as {"sample_rate": 16000, "format": "int16"}')
    known = set(StreamConfig.__dataclass_fields__) | {'api_key'}
    for name in sorted(message):
        if name not in known:
            raise StreamError('unknown_parameter', unknown_message(name, known, 'the start message'), CLOSE_POLICY)
    if 'sample_rate' not in message:
        raise _bad_start('the start message needs "sample_rate" (Hz) of the PCM you will send')
    values = {k: v for k, v in message.items() if k != 'api_key'}
    values.setdefault('top_k', settings.default_top_k)
    config = StreamConfig(**values)
    try:
        config.sample_rate = audio.check_sample_rate(config.sample_rate, 'sample_rate')
    except audio.AudioError as exc:
        raise _bad_start(str(exc)) from None
    if config.sample_rate < MIN_STREAM_SAMPLE_RATE:
        raise _bad_start(f'sample_rate is {config.sample_rate} Hz; streams take at least {MIN_STREAM_SAMPLE_RATE} Hz '
                         f'(lower rates carry too little of the sound, and would be upsampled many times over to '
                         f'the model\'s rate): send the audio at {MIN_STREAM_SAMPLE_RATE} Hz or more')
    # Each field's type before its value: an unhashable list or object must not reach a lookup.
    for name, table in (('format', pcm.SAMPLE_FORMATS), ('mode', STREAM_MODES)):
        value = getattr(config, name)
        if not isinstance(value, str) or value not in table:
            raise _bad_start(f'{name} must be one of {sorted(table)}, got {value!r}')
    if isinstance(config.channels, bool) or not isinstance(config.channels, int) or not 1 <= config.channels <= 64:
        raise _bad_start(f'channels must be an int from 1 to 64, got {config.channels!r}')
    try:
        config.window, config.hop = window_and_hop(config.window, config.hop, limits)
    except ApiError as exc:
        raise _bad_start(exc.message) from None
    try:
        config.top_k = min(validate.positive_int('top_k', config.top_k), num_labels)
    except ArgumentError as exc:
        raise _bad_start(str(exc)) from None
    if not isinstance(config.options, dict):
        raise _bad_start(f'options must be a JSON object, got {validate.shown(config.options)}')
    if config.options and config.mode == 'scores':
        raise _bad_start('options are the event thresholds of mode "events" (or of a registered mode that takes '
                         'them); mode \'scores\' takes none')
    if not isinstance(config.progress, bool):
        raise _bad_start(f'progress must be true or false, got {validate.shown(config.progress)}')
    median = config.options.get('median_filter_seconds')
    if validate.is_finite_number(median) and median > limits.max_window:
        # The tracker holds and sorts this many seconds of frame scores for every frame it decides.
        raise _bad_start(f'options.median_filter_seconds must be at most {limits.max_window:g} seconds (the '
                         f"server's longest window), got {validate.shown(median)}")
    return config


def parse_chunk(data, config):
    """Bytes of interleaved PCM -> mono float32 samples (deploy.pcm, as the command line reads them)."""
    try:
        return pcm.decode(data, config.format, config.channels)
    except audio.AudioError as exc:
        raise StreamError('bad_chunk', str(exc), CLOSE_BAD_DATA) from None


class Inbox:
    """PCM received and not yet scored, in one buffer of at most `limit` bytes (then the reader
    waits, and the client with it): the scorer takes all of it at once, so a thousand small
    messages cost it one step."""

    def __init__(self, limit):
        self.limit = limit
        self.data = bytearray()
        self.ended = False
        self._changed = asyncio.Condition()

    async def put(self, data):
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.data) < self.limit)
            self.data += data
            self._changed.notify_all()

    async def end(self):
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def take(self):
        """(all the PCM received since the last take, whether the client has ended the stream)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.data or self.ended)
            data, self.data = bytes(self.data), bytearray()
            self._changed.notify_all()
            return data, self.ended


class OpenStreams:
    """The streams a server has open, against settings.max_streams."""

    def __init__(self):
        self.count = 0


async def run_stream(websocket, settings, labels, meta, model_rate, limits, engine, streams=None):
    """Serve one WebSocket.

    streams: the server's OpenStreams (None: not counted); one beyond settings.max_streams is
    refused, after the Origin and key checks, which every client meets whatever the load.

    limits: settings.WindowLimits; engine: has flow(), clip_scores(wave at model_rate, flow,
    timeout) -> OrderedDict(label -> score) (raising ApiError when busy or late) and step(fn,
    flow, timeout) -> fn() run in the engine thread.
    """
    if not origin_allowed(settings, websocket.headers):
        # Browsers open WebSockets to any site without asking it; the Origin header says which page did.
        await websocket.close(CLOSE_POLICY)   # before accept: the handshake is answered with HTTP 403
        return
    presented = key_from_headers(websocket.headers)
    if presented and not key_matches(settings, presented):
        await websocket.close(CLOSE_POLICY)   # a wrong key in the handshake: refused before any message is read
        return
    if streams is not None and streams.count >= settings.max_streams:
        await refuse_stream(websocket, settings.max_streams)
        return
    await websocket.accept()
    if streams is not None:
        streams.count += 1
    try:
        await _session(websocket, settings, labels, meta, model_rate, limits, engine)
    except StreamError as exc:
        await _close_with_error(websocket, exc.code, exc.message, exc.close_code)
    except (WebSocketDisconnect, OSError):
        pass  # the client left; nothing to answer
    except Exception as exc:  # a bad stream must not take the server down; log it and end this stream only
        log.exception('stream failed')
        await _close_with_error(websocket, 'internal_error', f'the server failed on this stream ({type(exc).__name__})',
                                1011)
    finally:
        if streams is not None:
            streams.count -= 1


async def refuse_stream(websocket, max_streams):
    """A stream beyond --max-streams: told why (error "busy") and closed with 1013 (try again)."""
    await websocket.accept()
    await _close_with_error(websocket, 'busy', f'the server has {max_streams} streams open (--max-streams); '
                                               f'try again later', CLOSE_TRY_AGAIN)


def close_reason(code, message):
    """The reason of a close frame: the error's code and the start of its message, within the
    123 bytes a close frame carries."""
    return f'{code}: {message}'.encode('utf-8')[:123].decode('utf-8', 'ignore')


async def _close_with_error(websocket, code, message, close_code):
    try:
        await websocket.send_json({'type': 'error', 'error': {'code': code, 'message': message}})
        if close_code is not None:
            await websocket.close(close_code, reason=close_reason(code, message))
    except Exception:  # the client may already be gone
        pass


async def _receive(websocket, timeout, waiting_for):
    # Not asyncio.wait_for: before Python 3.12 it can swallow a cancellation that arrives as the
    # message does, and a reader cancelled that way would go on waiting for the client.
    receiving = asyncio.ensure_future(websocket.receive())
    try:
        done, _ = await asyncio.wait({receiving}, timeout=timeout)
    finally:
        if not receiving.done():
            receiving.cancel()
    if not done:
        raise StreamError('timeout', f'no message for {timeout:g} s (--timeout) while waiting for {waiting_for}; '
                                     f'closing the stream', CLOSE_POLICY)
    message = receiving.result()
    if message['type'] == 'websocket.disconnect':
        raise WebSocketDisconnect(message.get('code', 1000))
    return message


def _json_text(message, code='bad_message', close_code=CLOSE_UNSUPPORTED):
    try:
        return json.loads(message['text'], object_pairs_hook=params.object_without_duplicates)
    except params.DuplicateKey as exc:
        raise StreamError('duplicate_parameter', str(exc), close_code) from None
    except (ValueError, RecursionError) as exc:
        reason = 'nested too deeply' if isinstance(exc, RecursionError) else str(exc)
        raise StreamError(code, f'text messages must be JSON ({reason}); send audio as binary messages',
                          close_code) from None


async def _session(websocket, settings, labels, meta, model_rate, limits, engine):
    first = await _receive(websocket, settings.timeout, 'the start message')
    text = first.get('text')
    if text is None:
        raise _bad_start('send the start message (JSON text, e.g. {"sample_rate": 16000}) before any audio')
    if len(text) > MAX_START_MESSAGE_BYTES or sum(text.count(c) for c in ',[{') > MAX_START_ITEMS:
        raise _bad_start(f'the start message holds {len(text)} characters; it takes at most '
                         f'{MAX_START_MESSAGE_BYTES} (and {MAX_START_ITEMS} JSON items): send its fields only')
    start = _json_text(first, 'bad_start', CLOSE_POLICY)
    presented, from_header = key_from_headers(websocket.headers), True
    if not presented and isinstance(start, dict):
        presented, from_header = start.get('api_key'), False
    if not key_matches(settings, presented if isinstance(presented, str) else None, from_header):
        raise StreamError('unauthorized', 'this server needs an API key: send the header `X-API-Key: KEY` or '
                                          '"api_key" in the start message', CLOSE_POLICY)
    config = parse_start(start, settings, len(labels), limits)
    try:
        mode = STREAM_MODES[config.mode](config, labels, meta)
    except StreamError:
        raise
    except Exception as exc:  # a mode's own check of the options
        raise _bad_start(f'options: {exc}') from None
    if config.progress and not getattr(mode, 'frames', False):   # the mode object says, whatever made it
        raise _bad_start(f'progress reports the windows of a frame mode such as "events"; mode {config.mode!r} '
                         f'already answers every window')
    scorer = None
    if getattr(mode, 'frames', False):   # refused before `ready`: a model that cannot detect events says so first
        try:
            scorer = await engine.frame_scorer(config.window, config.hop)
        except ApiError as exc:
            raise StreamError(exc.code, exc.message, CLOSE_POLICY) from None
    await websocket.send_json({'type': 'ready', 'model': meta.get('model'), 'sample_rate': config.sample_rate,
                               'format': config.format, 'channels': config.channels, 'window': config.window,
                               'hop': config.hop, 'mode': config.mode})
    flow = engine.flow()
    inbox = Inbox(READ_AHEAD_BYTES)
    reader = asyncio.ensure_future(_read(websocket, inbox, config, settings.timeout))
    scoring = asyncio.ensure_future(_score(websocket, inbox, config, mode, model_rate, settings, engine, flow,
                                           scorer))
    try:
        done, _ = await asyncio.wait({reader, scoring}, return_when=asyncio.FIRST_COMPLETED)
        if scoring in done:
            scoring.result()
        else:
            # The client left, went silent or sent something wrong: its waiting work goes at once.
            flow.cancel()
            reader.result()
    finally:
        flow.cancel()
        for task in (reader, scoring):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _read(websocket, inbox, config, timeout):
    """Messages of the client into `inbox` (PCM, and the end); returns when the client leaves."""
    frame_bytes = pcm.frame_bytes(config.format, config.channels)
    ended = False
    allowance, last = float(MAX_MESSAGES_PER_SECOND), time.monotonic()
    while True:
        if ended:  # only the disconnect may follow; the scoring of the last window may take a while
            message = await websocket.receive()
            if message['type'] == 'websocket.disconnect':
                return
            raise StreamError('bad_message', 'nothing may follow {"type": "end"}', CLOSE_UNSUPPORTED)
        try:
            message = await _receive(websocket, timeout, 'audio')
        except WebSocketDisconnect:
            return
        now = time.monotonic()
        allowance = min(float(MAX_MESSAGES_PER_SECOND), allowance + (now - last) * MAX_MESSAGES_PER_SECOND) - 1
        last = now
        if allowance < 0:
            raise StreamError('too_many_messages', f'more than {MAX_MESSAGES_PER_SECOND} messages a second: send '
                                                   f'the audio in fewer, longer chunks (e.g. 0.1 s each)', None)
        if message.get('bytes') is not None:
            data = message['bytes']
            if len(data) > MAX_STREAM_MESSAGE_BYTES:
                raise StreamError('chunk_too_large', f'a chunk holds {len(data)} bytes; send at most '
                                                     f'{MAX_STREAM_MESSAGE_BYTES} per message', CLOSE_BAD_DATA)
            if len(data) % frame_bytes:
                parse_chunk(data, config)   # its error names the problem
            await inbox.put(data)
            continue
        control = _json_text(message)
        if control != {'type': 'end'}:
            raise StreamError('bad_message', f'after the start message, text messages can only be {{"type": "end"}}; '
                                             f'got {str(message.get("text"))[:100]!r}', CLOSE_UNSUPPORTED)
        await inbox.end()
        ended = True


class ClipWindows:
    """The windows of a stream in a clip-scores mode (on_window): each window's clip scores, as
    Predictor.predict(window=, hop=) scores them, through the engine queue. A window refused
    (busy, late) is reported with its times and lost; the stream goes on."""

    def __init__(self, websocket, mode, config, model_rate, engine, flow, timeout):
        self.websocket, self.mode, self.engine, self.flow, self.timeout = websocket, mode, engine, flow, timeout
        self.rate = model_rate
        self.windows = SlidingWindow(max(1, round(config.window * model_rate)), max(1, round(config.hop * model_rate)))
        self.finished = False

    def feed(self, samples):
        self.windows.push(samples)

    def finish(self):
        self.finished = True

    async def drain(self):
        while (cut := self.windows.next()) is not None:
            await self._score(*cut)
        if self.finished and (cut := self.windows.tail()) is not None:
            await self._score(*cut)

    async def _score(self, begin, end, samples):
        start_s, end_s = begin / self.rate, end / self.rate
        try:
            scores = await self.engine.clip_scores(samples, self.flow, self.timeout)
        except ApiError as exc:  # busy or timed out: this window is lost, the stream goes on
            await self.websocket.send_json({'type': 'error', 'start': start_s, 'end': end_s,
                                            'error': {'code': exc.code, 'message': exc.message}})
            return
        for reply in self.mode.on_window(start_s, end_s, scores):
            await self.websocket.send_json(reply)


class FrameWindows:
    """The windows of a stream in a frame mode (on_frames): detection.FrameStream's windows, each
    scored through the engine queue, its new frames given to the mode. Every window is needed for
    the frames that follow: a window the full queue refuses waits for room (a stream has one
    window in the queue at a time, so many streams wait their turn instead of failing), and a
    window still unscored after `timeout` ends the stream (1013: try again)."""

    def __init__(self, websocket, mode, scorer, engine, flow, timeout, progress=False):
        self.websocket, self.mode, self.engine, self.flow, self.timeout = websocket, mode, engine, flow, timeout
        self.frames = FrameStream(scorer)
        self.progress = progress
        mode.start(scorer)

    def feed(self, samples):
        self.frames.feed(samples)

    def finish(self):
        self.frames.finish()

    async def drain(self):
        # A window's features are computed here, on the event loop (a few hundred microseconds; the
        # frames no earlier window held): computed in the engine thread instead (next_window(defer=True)),
        # 175 mn04 int8 streams kept up 140 times of 175 instead of 174, as the engine thread then does
        # both in turn while the loop waits.
        while (window := self.frames.next_window()) is not None:
            try:
                coarse = await self.engine.frame_scores(window, self.flow, self.timeout)   # waits for room
            except ApiError as exc:
                raise StreamError(exc.code, f'{exc.message}; events need every window, so the stream ends here: '
                                            f'start a new one', CLOSE_TRY_AGAIN) from None
            for reply in self.mode.on_frames(self.frames.keep(window, coarse)):
                await self.websocket.send_json(reply)
            if self.progress:
                seconds = self.frames.scorer.frame_seconds
                await self.websocket.send_json({'type': 'progress', 'start': round(window.start * seconds, 6),
                                                'end': round((window.start + window.frames) * seconds, 6),
                                                'frames_end': round(self.frames.emitted * seconds, 6)})


async def _score(websocket, inbox, config, mode, model_rate, settings, engine, flow, scorer=None):
    """Scores the windows of the PCM in `inbox` as they complete, one at a time; at the end, the rest.
    scorer: the detection.FrameScorer of a frame mode (engine.frame_scorer)."""
    resampler = audio.Resampler(config.sample_rate, model_rate)
    if getattr(mode, 'frames', False):
        windows = FrameWindows(websocket, mode, scorer, engine, flow, settings.timeout, config.progress)
    else:
        windows = ClipWindows(websocket, mode, config, model_rate, engine, flow, settings.timeout)

    async def resample(piece):
        if resampler.orig_sr == resampler.target_sr or len(piece) * resampler.taps <= INLINE_ELEMENTS:
            return resampler.push(piece)
        return await engine.step(lambda: resampler.push(piece), flow, settings.timeout)

    # Pieces that resample to at most about PIECE_SAMPLES samples each (1 kHz -> 32 kHz is 32x).
    piece = max(1, min(PIECE_SAMPLES, PIECE_SAMPLES * config.sample_rate // model_rate))
    ended = False
    while not ended:
        data, ended = await inbox.take()
        samples = parse_chunk(data, config)
        for first in range(0, len(samples), piece):
            windows.feed(await resample(samples[first:first + piece]))
            await windows.drain()
    windows.feed(resampler.flush())
    windows.finish()
    await windows.drain()
    for reply in mode.on_end():
        await websocket.send_json(reply)
    await websocket.send_json({'type': 'done'})
    await websocket.close(CLOSE_NORMAL)
