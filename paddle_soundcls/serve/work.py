"""The server's work: every piece of it through its one Batcher (decoding, clip scores, frame
scores), each unit admitted by the queue and bounded by its request's deadline."""
import asyncio
import time

import numpy as np

from ..deploy import pipeline
from ..deploy.detection import DEFAULT_WINDOW as DEFAULT_EVENTS_WINDOW
from ..deploy.detection import FrameStream
from ..deploy.detection import result as detection_result
from ..deploy.exportdir import ExportError
from .batching import Flow, QueueFull, ShuttingDown, run_steps
from .decode import decode_steps
from .middleware import DEADLINE_KEY
from .settings import QUEUE_RETRY_SECONDS, ApiError, WindowLimits


def deadline_of(request, settings):
    """time.monotonic() by which `request` must be answered (set by middleware.RequestLimits)."""
    return request.scope.get(DEADLINE_KEY) or time.monotonic() + settings.timeout


def remaining(deadline):
    return max(0.0, deadline - time.monotonic())


def network_frame_hop(predictor):
    """Seconds between two frames of the network's output: its frame geometry's stride, or (for
    exports that do not record it) the front end's hop, at least 10 ms. An ensemble's combined frames
    sit on the front end's grid, but no member scores more often than its own network frame hop:
    the finest of those is the ensemble's (a finer hop only repeats the members' work)."""
    members = getattr(predictor, 'members', None)
    if members:
        return min(network_frame_hop(member) for member in members)
    frontend = predictor.frontend_cfg
    try:
        geometry = getattr(predictor, 'frame_geometry', None)
    except Exception:  # an export without it: its property says so when detection needs it
        geometry = None
    if geometry is not None:
        return float(geometry.seconds(frontend))
    return max(0.01, frontend.hop_length / frontend.sample_rate)


def _timeout_error(settings):
    return ApiError(504, 'timeout', f'no answer within {settings.timeout:g} s (--timeout): the server is '
                                    f'overloaded; retry later', headers={'Retry-After': '1'})


NOT_RUNNING = ('the model is not running (the server is starting or stopping): retry in a moment, or on another '
               'server')


class Work:
    """Every piece of the server's work, through its one Batcher: decoding, clip scores, frame
    scores. Each unit is admitted by the queue (503 when full) and waits at most until its
    request's deadline (504); a cancelled request drops its waiting units."""

    def __init__(self, batcher, predictor, settings):
        self.batcher, self.predictor, self.settings = batcher, predictor, settings
        self.labels = list(predictor.labels)
        self.rate = predictor.frontend_cfg.sample_rate
        self.min_samples = int(round(float(predictor.min_seconds) * self.rate))
        clip_seconds = getattr(predictor, 'clip_seconds', None)
        self.clip_samples = int(round(clip_seconds * self.rate)) if clip_seconds else None
        max_window = max(settings.max_window_seconds, clip_seconds or 0.0)
        self.limits = WindowLimits(min_window=float(predictor.min_seconds), min_hop=network_frame_hop(predictor),
                                   max_window=max_window, max_overlap=settings.max_overlap,
                                   default_window=min(max(clip_seconds or DEFAULT_EVENTS_WINDOW,
                                                          float(predictor.min_seconds)), max_window))
        self._score_inputs = None    # the export's frame-scores graph (FrameScorer.score_inputs), loaded on first use

    @staticmethod
    def flow():
        return Flow()

    def close(self):
        pass

    def run_scores(self, items):
        """Clip scores of equal-length waveforms at the model's rate, in one engine call."""
        return list(self.predictor.score_batch(np.stack(items)))

    def run_embeddings(self, items):
        """Embeddings of equal-length waveforms at the model's rate, in one engine call."""
        return list(self.predictor.embed_batch(np.stack(items)))

    def run_frames(self, windows):
        """Frame scores of detection.Windows whose inputs have one shape, in one engine call (the inputs
        of a window cut with defer=True, its features, are computed here, in the engine thread)."""
        return list(np.asarray(self._score_inputs(np.stack([window.prepared() for window in windows]))))

    def submit(self, items, flow, run=None, key=None):
        try:
            return self.batcher.submit_many(items, flow, run, key)
        except QueueFull as exc:
            raise ApiError(503, 'busy', f'the server is busy ({self.batcher.max_queue} units of work queued, '
                                        f'--max-queue): retry after {exc.retry_after} s',
                           headers={'Retry-After': str(exc.retry_after)}) from None
        except ShuttingDown:
            raise ApiError(503, 'not_running', NOT_RUNNING, headers={'Retry-After': '1'}) from None

    async def wait(self, futures, timeout):
        """The results of `futures`; all of them are dropped when one fails or the time runs out."""
        gathered = asyncio.gather(*futures)
        # Cancelled from outside (the client left), the gathering keeps an exception no one reads,
        # which asyncio would log as an error: read it here.
        gathered.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await asyncio.wait_for(gathered, timeout)
        except asyncio.TimeoutError:
            raise _timeout_error(self.settings) from None
        except ShuttingDown:
            raise ApiError(503, 'not_running', NOT_RUNNING, headers={'Retry-After': '1'}) from None
        finally:
            for future in futures:
                future.cancel()

    async def step(self, fn, flow, timeout):
        """fn() run alone in the engine thread."""
        [result] = await self.wait(self.submit([fn], flow, run=run_steps, key=object()), timeout)
        return result

    async def steps(self, generator, flow, deadline):
        """Runs a generator of steps (decode.decode_steps, decode.base64_steps) in the engine thread,
        one step per unit of work; its return value."""
        def advance():
            try:
                next(generator)
            except StopIteration as done:
                return True, done.value
            return False, None
        try:
            while True:
                finished, value = await self.step(advance, flow, remaining(deadline))
                if finished:
                    return value
        finally:
            generator.close()

    async def decode(self, data, field, flow, deadline):
        """Audio file bytes -> (mono waveform at the model's rate, seconds), decoded in bounded steps."""
        settings = self.settings
        return await self.steps(decode_steps(data, self.rate, settings.max_audio_seconds, settings.max_decode_samples,
                                             field), flow, deadline)

    async def classify(self, data, field, flow, deadline):
        """Audio file bytes -> (OrderedDict(label -> score), best first; seconds of audio)."""
        wave, duration = await self.decode(data, field, flow, deadline)
        return await self.clip_scores(wave, flow, remaining(deadline)), duration

    def segments(self, wave):
        """The pieces one clip is scored in, exactly as Predictor.predict cuts them (so the server's
        scores are the runtime's): windows of the model's training clip length; without one (the
        pretrained taggers), the whole clip, in one engine call of up to --max-audio-seconds."""
        return [segment for _, _, segment in pipeline.clip_segments(wave, self.clip_samples, self.min_samples)]

    async def clip_scores(self, wave, flow, timeout):
        """One waveform at the model's rate -> OrderedDict(label -> score), best first: the mean of its
        segments' scores."""
        return pipeline.to_dict(await self.segments_mean(wave, self.run_scores, 'scores', flow, timeout), self.labels)

    async def embedding(self, wave, flow, timeout):
        """One waveform at the model's rate -> its embedding [embedding_size], as Predictor.embed gives
        it: the mean of its segments' embeddings."""
        return await self.segments_mean(wave, self.run_embeddings, 'embeddings', flow, timeout)

    async def segments_mean(self, wave, run, kind, flow, timeout):
        """The mean over `wave`'s segments (see segments) of what run gives for them, through the queue."""
        by_length = {}
        for segment in self.segments(wave):
            by_length.setdefault(len(segment), []).append(segment)
        futures = []
        try:
            for length, segments in by_length.items():
                futures += self.submit(segments, flow, run, (kind, length))
        except ApiError:
            for future in futures:
                future.cancel()
            raise
        return np.mean(await self.wait(futures, timeout), axis=0)

    async def frame_scorer(self, window, hop):
        """The export's detection.FrameScorer for `window` and `hop`; its windows are scored through
        the queue (frame_scores), not by the scorer itself."""
        try:   # the first call loads the frame-scores graph: not on the event loop
            scorer = await asyncio.get_running_loop().run_in_executor(None, self.predictor.frame_scorer, window, hop)
        except ExportError as exc:
            raise ApiError(501, 'events_unsupported', f'this export cannot detect events: {exc}') from None
        except ValueError as exc:  # window / hop the detector cannot use
            raise ApiError(400, 'invalid_parameter', str(exc), 'window') from None
        if self._score_inputs is None:
            self._score_inputs = scorer.score_inputs   # every scorer of the export runs the same graph
        return scorer

    async def frame_windows(self, windows, flow, deadline):
        """Submit detection.Windows as units of work (one per window, batched with others of its
        length), waiting for room while the queue is full, up to `deadline`: the callers (an admitted
        /v1/events request, an event stream) need every window. Their futures."""
        while True:
            futures = []
            try:
                for window in windows:
                    futures += self.submit([window], flow, self.run_frames, ('frames', window.shape))
                return futures
            except ApiError as exc:
                for future in futures:
                    future.cancel()
                if not (exc.code == 'busy' and remaining(deadline) > QUEUE_RETRY_SECONDS):
                    raise
                await asyncio.sleep(QUEUE_RETRY_SECONDS)

    async def frame_scores(self, window, flow, timeout):
        """Network frame scores of one detection.Window through the queue, waiting for room (see
        frame_windows); ApiError when `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        [scores] = await self.wait(await self.frame_windows([window], flow, deadline), remaining(deadline))
        return scores

    async def events(self, wave, window, hop, flow, deadline):
        """detection.detect of one waveform: the same windows and decisions (FrameStream), queued up
        to --max-batch windows at a time (a request alone on the engine has them scored together; with
        others, the batcher takes every request's next window first); the client leaving or the
        deadline stops it between groups."""
        scorer = await self.frame_scorer(window, hop)
        # Offline, windows merge as in detection.detect, into segments of at most --max-window-seconds
        # (the most audio one unit of work may hold).
        longest = int(self.limits.max_window / scorer.frame_seconds + 1e-9)
        merge = max(1, min(scorer.merge_windows, 1 + (longest - scorer.window_frames) // scorer.hop_frames))
        frames = FrameStream(scorer, merge_windows=merge)
        frames.feed(wave)
        frames.finish()
        parts = []
        # defer: the windows' features are computed in the engine thread, not on the event loop (a batch
        # of merged 10-s segments held it for 50-180 ms).
        while windows := frames.next_windows(max(1, min(self.batcher.max_batch,
                                                        self.batcher.max_queue - self.batcher.depth)), defer=True):
            # Admitted (its audio decoded through the queue), the request waits for room for its
            # windows rather than fail with work already done.
            futures = await self.frame_windows(windows, flow, deadline)
            parts.append(frames.keep_all(windows, await self.wait(futures, remaining(deadline))))
        return detection_result(scorer, parts, getattr(self.predictor, 'event_config', None))
