"""The ASGI application: endpoints, error answers, the page, and the batcher's lifetime.

    from paddle_soundcls.deploy import Predictor
    from paddle_soundcls.serve.app import create_app
    app = create_app(Predictor('export_dir'), ServeSettings(max_batch=16))   # any ASGI server runs it

Stateless: every request carries its audio and gets its answer; nothing is kept between
requests, so any number of these processes can sit behind one load balancer.
"""
import asyncio
import json
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from typing import Dict, List, Optional

import numpy as np

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..deploy import pipeline
from ..deploy.detection import DEFAULT_WINDOW as DEFAULT_EVENTS_WINDOW
from ..deploy.detection import FrameStream
from ..deploy.detection import result as detection_result
from ..deploy.exportdir import ExportError
from .batching import Batcher, Flow, QueueFull, ShuttingDown, run_steps
from .decode import base64_steps, decode_steps
from .middleware import DEADLINE_KEY, RequestLimits, RequireApiKey
from .settings import PADDLESPEECH_PREFIX, ApiError, ServeSettings, WindowLimits, error_body, window_and_hop
from .stream import run_stream

log = logging.getLogger(__name__)
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
RAW_TYPES = ('application/octet-stream',)   # besides audio/*
JSON_PARAMETERS = ('top_k',)


# Response schemas: they document the answers in the OpenAPI docs.

class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str = Field(description='registry name of the served model')
    duration: float = Field(description='seconds of audio in the request')
    results: List[LabelScore] = Field(description='the best top_k labels, best first')


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: List[str]
    sample_rate: int
    frontend: Dict
    precision: str
    min_seconds: float
    max_audio_seconds: float
    windows: Dict = Field(description='what stream and /v1/events windows may be: min_window, max_window, min_hop '
                                      '(seconds), max_overlap (window / hop)')


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PaddleSpeechRequest(BaseModel):
    """PaddleSpeech's CLS request."""
    audio: str = Field(description='base64 of a WAV (or FLAC / OGG) file')
    topk: int = 1


class PaddleSpeechMessage(BaseModel):
    description: str


class PaddleSpeechResult(BaseModel):
    class_name: str
    prob: float


class PaddleSpeechResults(BaseModel):
    topk: int
    results: List[PaddleSpeechResult]


class PaddleSpeechResponse(BaseModel):
    success: bool
    code: int
    message: PaddleSpeechMessage
    result: Optional[PaddleSpeechResults] = None


ERROR_RESPONSES = {status: {'model': ErrorResponse, 'description': text} for status, text in (
    (400, 'malformed request'), (401, 'missing or wrong API key'), (408, 'body not received in time'),
    (413, 'body or audio too long'), (415, 'unsupported Content-Type'), (422, 'audio not usable'),
    (503, 'queue full: retry after Retry-After seconds'), (504, 'no answer within --timeout'))}

CLASSIFY_BODY = {'requestBody': {'required': True, 'content': {
    'audio/*': {'schema': {'type': 'string', 'format': 'binary'}},
    'application/octet-stream': {'schema': {'type': 'string', 'format': 'binary'}},
    'multipart/form-data': {'schema': {'type': 'object', 'required': ['file'], 'properties': {
        'file': {'type': 'string', 'format': 'binary'}, 'top_k': {'type': 'integer', 'minimum': 1}}}},
    'application/json': {'schema': {'type': 'object', 'required': ['inputs'], 'properties': {
        'inputs': {'type': 'string', 'description': 'base64 of the audio file'},
        'parameters': {'type': 'object', 'properties': {'top_k': {'type': 'integer', 'minimum': 1}}}}}},
}}}


TOP_K_TEXT = re.compile(r'\+?[0-9]{1,9}')   # ASCII digits only: str.isdigit() is true for '²'


def check_top_k(value, field, num_labels):
    """A positive int (an int-valued string from a form or query is fine); capped at the number of labels."""
    if isinstance(value, str) and TOP_K_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40]) + '...'
        raise ApiError(400, 'invalid_parameter', f'{field} must be a positive int, got {shown}', field)
    return min(value, num_labels)


def remaining_time(request, settings):
    deadline = request.scope.get(DEADLINE_KEY)
    return settings.timeout if deadline is None else max(0.0, deadline - time.monotonic())


def network_frame_hop(predictor):
    """Seconds between two frames of the network's output: its frame geometry's stride, or (for
    exports that do not record it) the front end's hop, at least 10 ms."""
    frontend = predictor.frontend
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
        self.rate = predictor.frontend.sample_rate
        self.min_samples = int(round(float(predictor.min_seconds) * self.rate))
        clip_seconds = getattr(predictor, 'clip_seconds', None)
        self.clip_samples = int(round(clip_seconds * self.rate)) if clip_seconds else None
        max_window = max(settings.max_window_seconds, clip_seconds or 0.0)
        self.limits = WindowLimits(min_window=float(predictor.min_seconds), min_hop=network_frame_hop(predictor),
                                   max_window=max_window, max_overlap=settings.max_overlap,
                                   default_window=min(max(clip_seconds or DEFAULT_EVENTS_WINDOW,
                                                          float(predictor.min_seconds)), max_window))
        self._score_frames = None    # the export's frame-scores graph, loaded on first use

    @staticmethod
    def flow():
        return Flow()

    def close(self):
        pass

    def run_scores(self, items):
        """Clip scores of equal-length waveforms at the model's rate, in one engine call."""
        return list(self.predictor.score_batch(np.stack(items)))

    def run_frames(self, items):
        """Frame scores of equal-length windows at the model's rate, in one engine call."""
        return list(np.asarray(self._score_frames(np.stack(items))))

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
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout)
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
                finished, value = await self.step(advance, flow, max(0.0, deadline - time.monotonic()))
                if finished:
                    return value
        finally:
            generator.close()

    async def decode(self, data, field, flow, deadline):
        """Audio file bytes -> (mono waveform at the model's rate, seconds), decoded in bounded steps."""
        settings = self.settings
        return await self.steps(decode_steps(data, self.rate, settings.max_audio_seconds, settings.max_decode_samples,
                                             field), flow, deadline)

    def segments(self, wave):
        """The pieces one clip is scored in, exactly as Predictor.predict cuts them (so the server's
        scores are the runtime's): windows of the model's training clip length; without one (the
        pretrained taggers), the whole clip, in one engine call of up to --max-audio-seconds."""
        return [segment for _, _, segment in pipeline.clip_segments(wave, self.clip_samples, self.min_samples)]

    async def clip_scores(self, wave, flow, timeout):
        """One waveform at the model's rate -> OrderedDict(label -> score), best first: the mean of its
        segments' scores."""
        by_length = {}
        for segment in self.segments(wave):
            by_length.setdefault(len(segment), []).append(segment)
        futures = []
        try:
            for length, segments in by_length.items():
                futures += self.submit(segments, flow, self.run_scores, ('scores', length))
        except ApiError:
            for future in futures:
                future.cancel()
            raise
        rows = await self.wait(futures, timeout)
        return pipeline.to_dict(np.mean(rows, axis=0), self.labels)

    async def frame_scorer(self, window, hop):
        """The export's detection.FrameScorer for `window` and `hop`; its windows are scored through
        the queue (frame_scores), not by the scorer itself."""
        try:   # the first call loads the frame-scores graph: not on the event loop
            scorer = await asyncio.get_running_loop().run_in_executor(None, self.predictor.frame_scorer, window, hop)
        except ExportError as exc:
            raise ApiError(501, 'events_unsupported', f'this export cannot detect events: {exc}') from None
        except ValueError as exc:  # window / hop the detector cannot use
            raise ApiError(400, 'invalid_parameter', str(exc), 'window') from None
        if self._score_frames is None:
            self._score_frames = scorer.score_frames   # every scorer of the export runs the same graph
        return scorer

    async def frame_scores(self, window, flow, timeout):
        """Network frame scores of one detection.Window, as a unit of work through the queue."""
        samples = window.samples
        [scores] = await self.wait(self.submit([samples], flow, self.run_frames, ('frames', len(samples))), timeout)
        return scores

    async def events(self, wave, window, hop, flow, deadline):
        """detection.detect of one waveform: the same windows and decisions (FrameStream), each window
        waiting its turn in the queue; the client leaving or the deadline stops it between windows."""
        scorer = await self.frame_scorer(window, hop)
        frames = FrameStream(scorer)
        frames.feed(wave)
        frames.finish()
        parts = []
        while (next_window := frames.next_window()) is not None:
            coarse = await self.frame_scores(next_window, flow, max(0.0, deadline - time.monotonic()))
            parts.append(frames.keep(next_window, coarse))
        return detection_result(scorer, parts, getattr(self.predictor, 'event_config', None))


def create_app(predictor, settings=None):
    """The ASGI app serving `predictor`: a deploy.Predictor, or anything with its labels, task,
    frontend, meta, precision, min_seconds, clip_seconds, score_batch and frame_scorer."""
    settings = (settings or ServeSettings()).for_model(predictor)
    model_rate = predictor.frontend.sample_rate
    model_name = predictor.meta.get('model', 'model')
    labels = list(predictor.labels)
    batcher = Batcher(None, settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue)
    work = Work(batcher, predictor, settings)
    batcher.run_batch = work.run_scores

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            work.close()

    app = FastAPI(title='paddle_soundcls', version=__version__, lifespan=lifespan, redoc_url=None,
                  description=f'Sound classification with `{model_name}` ({len(labels)} labels). '
                              f'The page at / tries it in a browser.')
    app.state.predictor, app.state.batcher, app.state.settings, app.state.work = predictor, batcher, settings, work

    def deadline_of(request):
        return time.monotonic() + remaining_time(request, settings)

    async def classify_bytes(request, data, field, flow):
        deadline = deadline_of(request)
        wave, duration = await work.decode(data, field, flow, deadline)
        scores = await work.clip_scores(wave, flow, max(0.0, deadline - time.monotonic()))
        return scores, duration

    # Errors ---------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request, exc):
        if request.url.path.startswith(PADDLESPEECH_PREFIX) and exc.status in (400, 422):
            # PaddleSpeech answers unusable input with HTTP 200, "success": false and its code 400
            # ("Input parameters are not valid"); kept for its clients.
            body = error_body(request.url.path, 400, exc.code, exc.message)
            return JSONResponse(body, status_code=200, headers=exc.headers)
        body = error_body(request.url.path, exc.status, exc.code, exc.message, exc.field)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = '.'.join(str(part) for part in first.get('loc', ()) if part not in ('query', 'body'))
        message = f'{where}: {first.get("msg", "invalid value")}' if where else first.get('msg', 'invalid request')
        body = error_body(request.url.path, 400, 'invalid_parameter', message, where or None)
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        code = {404: 'not_found', 405: 'method_not_allowed'}.get(exc.status_code, f'http_{exc.status_code}')
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f'no endpoint {request.method} {request.url.path}; the endpoints are listed at /docs'
        body = error_body(request.url.path, exc.status_code, code, message)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, 'headers', None))

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        log.exception('request %s %s failed', request.method, request.url.path)
        # This answer leaves from outside the CORS middleware: its headers are added here.
        origin = request.headers.get('origin')
        headers = {'Access-Control-Allow-Origin': origin, 'Vary': 'Origin'} if origin in settings.cors_origins else {}
        body = error_body(request.url.path, 500, 'internal_error',
                          f'the server failed on this request ({type(exc).__name__}); the server log has the details')
        if request.url.path.startswith(PADDLESPEECH_PREFIX):  # PaddleSpeech's own answer to an unknown error
            body = {'success': False, 'code': 509, 'message': {'description': 'Unknown error occurred.'}}
            return JSONResponse(body, status_code=200, headers=headers)
        return JSONResponse(body, status_code=500, headers=headers)

    # Endpoints ------------------------------------------------------------------------

    @app.post('/v1/classify', response_model=ClassifyResponse, responses=ERROR_RESPONSES, openapi_extra=CLASSIFY_BODY,
              summary='Classify one audio clip')
    async def classify(request: Request,
                       top_k: Optional[int] = Query(None, ge=1, description=f'labels to answer (default '
                                                                            f'{settings.default_top_k})')):
        """The audio as raw bytes (`Content-Type: audio/wav`, `audio/flac`, ... or
        `application/octet-stream`), as a multipart upload (field `file`), or as JSON
        `{"inputs": base64, "parameters": {"top_k": 5}}`. Answers the best labels, best first."""
        flow = work.flow()
        data, field, top_k = await read_audio_body(request, top_k, flow)
        top_k = check_top_k(settings.default_top_k if top_k is None else top_k, 'top_k', len(labels))
        scores, duration = await classify_bytes(request, data, field, flow)
        results = [{'label': label, 'score': score} for label, score in list(scores.items())[:top_k]]
        return {'model': model_name, 'duration': round(duration, 6), 'results': results}

    @app.post('/v1/events', responses={**ERROR_RESPONSES, 501: {'model': ErrorResponse, 'description':
                                                                'the export cannot detect events'}},
              openapi_extra=CLASSIFY_BODY, summary='When each sound happens in one audio clip')
    async def events(request: Request,
                     window: Optional[float] = Query(None, description="seconds per window (default: the model's "
                                                                       'clip length, else 10, at most '
                                                                       '--max-window-seconds); at least the model\'s '
                                                                       'shortest input'),
                     hop: Optional[float] = Query(None, description='seconds between windows (default: half the '
                                                                    "window); at least the network's frame hop, at "
                                                                    'most the window, window / hop at most '
                                                                    '--max-overlap')):
        """The audio in the forms /v1/classify takes. Answers the events, each with its onset and
        offset in seconds, its label and its confidence, by onset; none is an empty list. The
        decisions (thresholds, median filter) are those saved with the export."""
        window, hop = window_and_hop(window, hop, work.limits)
        flow = work.flow()
        data, field, _ = await read_audio_body(request, None, flow)
        deadline = deadline_of(request)
        wave, duration = await work.decode(data, field, flow, deadline)
        result = await work.events(wave, window, hop, flow, deadline)
        return {'model': model_name, 'duration': round(duration, 6), 'frame_hop': result['frame_hop'],
                'events': result['events']}

    async def read_audio_body(request, top_k, flow):
        """(audio bytes, the field they came in, top_k) of a request in any of the accepted forms."""
        content_type = request.headers.get('content-type', '')
        media = content_type.split(';')[0].strip().lower()
        if media == 'multipart/form-data':   # parsed as it is streamed, not joined first
            data, field, top_k = await read_multipart(request, top_k)
        elif media == 'application/json' or media.endswith('+json'):
            data, field, top_k = await read_json_inputs(request, await request.body(), top_k, flow)
        elif media.startswith('audio/') or media in RAW_TYPES:
            data, field = await request.body(), 'body'
        else:
            raise ApiError(415, 'unsupported_media_type',
                           f'Content-Type {content_type or "(none)"!r} is not accepted: send the audio file as raw '
                           f'bytes with `Content-Type: audio/wav` (or audio/flac, application/octet-stream, ...), '
                           f'as multipart/form-data with a field "file", or as application/json '
                           f'{{"inputs": base64, "parameters": {{"top_k": 5}}}}')
        return data, field, top_k

    async def read_multipart(request, top_k):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # Starlette's parser raises its own types for malformed bodies
            detail = getattr(exc, 'detail', None) or str(exc) or type(exc).__name__
            raise ApiError(400, 'bad_multipart', f'the multipart body could not be parsed ({detail}): send one '
                                                 f'file in a field named "file", e.g. curl -F file=@clip.wav')
        upload = form.get('file')
        if not isinstance(upload, UploadFile):
            raise ApiError(400, 'missing_field', 'the multipart body has no file in a field named "file": send '
                                                 'e.g. curl -F file=@clip.wav', 'file')
        data = await upload.read()
        await form.close()
        form_top_k = form.get('top_k')
        return data, 'file', form_top_k if form_top_k is not None else top_k

    async def parse_json(body, flow, deadline):
        """The JSON of a body, parsed in the engine thread (a large body takes a while); ValueError
        when it is not JSON (RecursionError, too deeply nested, included)."""
        def parse():
            try:
                return json.loads(body)
            except RecursionError:
                raise ValueError('nested too deeply') from None
        return await work.step(parse, flow, max(0.0, deadline - time.monotonic()))

    async def read_json_inputs(request, body, top_k, flow):
        deadline = deadline_of(request)
        try:
            payload = await parse_json(body, flow, deadline)
        except ValueError as exc:
            raise ApiError(400, 'invalid_json', f'the body is not valid JSON ({exc}): send '
                                                f'{{"inputs": base64, "parameters": {{"top_k": 5}}}}')
        if not isinstance(payload, dict) or 'inputs' not in payload:
            raise ApiError(400, 'missing_field', 'the JSON body needs "inputs": the base64 of an audio file',
                           'inputs')
        unknown = sorted(set(payload) - {'inputs', 'parameters'})
        if unknown:
            raise ApiError(400, 'unknown_field', f'unknown fields {unknown}; known: ["inputs", "parameters"]',
                           unknown[0])
        parameters = payload.get('parameters')
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise ApiError(400, 'invalid_parameter', f'parameters must be a JSON object such as {{"top_k": 5}}, got '
                                                     f'{json.dumps(parameters)[:100]}', 'parameters')
        unknown = sorted(set(parameters) - set(JSON_PARAMETERS))
        if unknown:
            raise ApiError(400, 'unknown_parameter', f'unknown parameters {unknown}; known: {list(JSON_PARAMETERS)}',
                           f'parameters.{unknown[0]}')
        if 'top_k' in parameters:
            top_k = check_top_k(parameters['top_k'], 'parameters.top_k', len(labels))
        data = await work.steps(base64_steps(payload['inputs'], 'inputs'), flow, deadline)
        return data, 'inputs', top_k

    @app.post('/paddlespeech/cls', response_model=PaddleSpeechResponse, response_model_exclude_none=True,
              summary="PaddleSpeech's sound classification API",
              openapi_extra={'requestBody': {'required': True, 'content': {
                  'application/json': {'schema': PaddleSpeechRequest.model_json_schema()}}}})
    async def paddlespeech_cls(request: Request):
        """The request and answers of PaddleSpeech's server (`paddlespeech_client cls` works
        unchanged): `{"audio": base64 wav, "topk": 1}` -> `{"success": true, "code": 200, "message":
        {"description": "success"}, "result": {"topk": 1, "results": [{"class_name", "prob"}]}}`.
        Like PaddleSpeech, a body that does not fit the schema gets 422 `{"detail": [...]}`, and
        audio or topk that cannot be used gets HTTP 200 with `"success": false` (code 400 and a
        description of the problem)."""
        body = await request.body()
        flow = work.flow()
        deadline = deadline_of(request)
        # Read as JSON whatever the Content-Type: PaddleSpeech's client sends none.
        try:
            payload = await parse_json(body, flow, deadline)
        except ValueError as exc:
            detail = [{'type': 'json_invalid', 'loc': ['body', getattr(exc, 'pos', 0)], 'msg': 'JSON decode error',
                       'input': {}, 'ctx': {'error': getattr(exc, 'msg', str(exc))}}]
            return JSONResponse({'detail': detail}, status_code=422)
        try:
            req = PaddleSpeechRequest.model_validate(payload)
        except ValidationError as exc:
            detail = [dict(error, loc=['body', *error['loc']]) for error in exc.errors(include_url=False)]
            return JSONResponse({'detail': jsonable_encoder(detail)}, status_code=422)
        if req.topk < 1 or req.topk > len(labels):
            raise ApiError(400, 'invalid_parameter', f'topk is {req.topk}; the model has {len(labels)} labels, so '
                                                     f'topk must be from 1 to {len(labels)}', 'topk')
        data = await work.steps(base64_steps(req.audio, 'audio'), flow, deadline)
        scores, _ = await classify_bytes(request, data, 'audio', flow)
        results = [{'class_name': label, 'prob': score} for label, score in list(scores.items())[:req.topk]]
        return {'success': True, 'code': 200, 'message': {'description': 'success'},
                'result': {'topk': req.topk, 'results': results}}

    @app.get('/paddlespeech/cls/help', summary="PaddleSpeech's help answer")
    async def paddlespeech_help():
        # Its exact answer, "True" as a string included.
        return {'success': 'True', 'code': 200, 'message': {'global': 'success'},
                'result': {'description': 'cls server', 'input': 'base64 string of wavfile',
                           'output': 'classification result'}}

    @app.get('/healthz', summary='Liveness and readiness, for load balancers')
    async def healthz():
        """200 while the engine loop runs (503 otherwise), with the queue depth."""
        body = {'status': 'ok' if batcher.alive else 'down', 'model': model_name, 'queue': batcher.depth,
                'max_queue': settings.max_queue, 'batches': batcher.batches, 'clips': batcher.items,
                'steps': batcher.steps}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get('/v1/model', response_model=ModelInfo, summary='The served model')
    async def model_info():
        limits = work.limits
        return {'name': model_name, 'task': predictor.task, 'labels': labels, 'sample_rate': model_rate,
                'frontend': predictor.frontend.to_dict(), 'precision': predictor.precision,
                'min_seconds': float(predictor.meta.get('min_seconds', 0.0)),
                'max_audio_seconds': settings.max_audio_seconds,
                'windows': {'min_window': limits.min_window, 'max_window': limits.max_window,
                            'min_hop': limits.min_hop, 'max_overlap': limits.max_overlap}}

    @app.websocket('/v1/stream')
    async def stream(websocket: WebSocket):
        await run_stream(websocket, settings, labels, predictor.meta, model_rate, work.limits, work)

    @app.get('/', include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, 'index.html'))

    app.mount('/static', StaticFiles(directory=STATIC_DIR), name='static')

    # Middleware: the last added runs first. CORS outermost, so its headers reach even a 401.
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(RequireApiKey, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=['GET', 'POST'],
                           allow_headers=['Authorization', 'X-API-Key', 'Content-Type'])
    return app
