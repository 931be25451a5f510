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
import time
from contextlib import asynccontextmanager
from typing import Dict, List, Optional

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from .batching import Batcher, QueueFull, ShuttingDown
from .decode import decode_audio, decode_base64
from .middleware import DEADLINE_KEY, RequestLimits, RequireApiKey
from .settings import PADDLESPEECH_PREFIX, ApiError, ServeSettings, error_body
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


def check_top_k(value, field, num_labels):
    """A positive int (an int-valued string from a form or query is fine); capped at the number of labels."""
    if isinstance(value, str) and value.strip().lstrip('+').isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, 'invalid_parameter', f'{field} must be a positive int, got {value!r}', field)
    return min(value, num_labels)


def remaining_time(request, settings):
    deadline = request.scope.get(DEADLINE_KEY)
    return settings.timeout if deadline is None else max(0.0, deadline - time.monotonic())


def create_app(predictor, settings=None):
    """The ASGI app serving `predictor` (a deploy.Predictor, or anything with its predict, labels,
    task, frontend, meta and precision)."""
    settings = settings or ServeSettings()
    model_rate = predictor.frontend.sample_rate
    model_name = predictor.meta.get('model', 'model')
    labels = list(predictor.labels)

    def run_batch(waves):
        # Inputs of different lengths are grouped by length inside predict, so any mix works.
        return predictor.predict(waves, sample_rate=model_rate, batch_size=settings.max_batch)

    batcher = Batcher(run_batch, settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title='paddle_soundcls', version=__version__, lifespan=lifespan, redoc_url=None,
                  description=f'Sound classification with `{model_name}` ({len(labels)} labels). '
                              f'The page at / tries it in a browser.')
    app.state.predictor, app.state.batcher, app.state.settings = predictor, batcher, settings

    async def classify_wave(wave, timeout):
        """One waveform at the model's rate -> OrderedDict(label -> score), best first, via the batcher."""
        not_running = ApiError(503, 'not_running', 'the model is not running (the server is starting or stopping): '
                                                   'retry in a moment, or on another server', headers={'Retry-After': '1'})
        try:
            future = batcher.submit(wave)
        except QueueFull as exc:
            raise ApiError(503, 'busy', f'the server is busy ({batcher.max_queue} clips queued, --max-queue): retry '
                                        f'after {exc.retry_after} s', headers={'Retry-After': str(exc.retry_after)})
        except ShuttingDown:
            raise not_running from None
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, 'timeout', f'no answer within {settings.timeout:g} s (--timeout): the server is '
                                           f'overloaded; retry later', headers={'Retry-After': '1'}) from None
        except ShuttingDown:
            raise not_running from None

    async def classify_bytes(request, data, field):
        wave, duration = await run_in_threadpool(decode_audio, data, model_rate, settings.max_audio_seconds, field)
        scores = await classify_wave(wave, remaining_time(request, settings))
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
        body = error_body(request.url.path, 500, 'internal_error',
                          f'the server failed on this request ({type(exc).__name__}); the server log has the details')
        if request.url.path.startswith(PADDLESPEECH_PREFIX):  # PaddleSpeech's own answer to an unknown error
            body = {'success': False, 'code': 509, 'message': {'description': 'Unknown error occurred.'}}
            return JSONResponse(body, status_code=200)
        return JSONResponse(body, status_code=500)

    # Endpoints ------------------------------------------------------------------------

    @app.post('/v1/classify', response_model=ClassifyResponse, responses=ERROR_RESPONSES, openapi_extra=CLASSIFY_BODY,
              summary='Classify one audio clip')
    async def classify(request: Request,
                       top_k: Optional[int] = Query(None, ge=1, description=f'labels to answer (default '
                                                                            f'{settings.default_top_k})')):
        """The audio as raw bytes (`Content-Type: audio/wav`, `audio/flac`, ... or
        `application/octet-stream`), as a multipart upload (field `file`), or as JSON
        `{"inputs": base64, "parameters": {"top_k": 5}}`. Answers the best labels, best first."""
        data, field, top_k = await read_audio_body(request, top_k)
        top_k = check_top_k(settings.default_top_k if top_k is None else top_k, 'top_k', len(labels))
        scores, duration = await classify_bytes(request, data, field)
        results = [{'label': label, 'score': score} for label, score in list(scores.items())[:top_k]]
        return {'model': model_name, 'duration': round(duration, 6), 'results': results}

    @app.post('/v1/events', responses=ERROR_RESPONSES, openapi_extra=CLASSIFY_BODY,
              summary='When each sound happens in one audio clip')
    async def events(request: Request,
                     window: Optional[float] = Query(None, gt=0, le=60, description='seconds per window (default: '
                                                                                    "the model's clip length, or 10)"),
                     hop: Optional[float] = Query(None, gt=0, le=60, description='seconds between windows '
                                                                                 '(default: half the window)')):
        """The audio in the forms /v1/classify takes. Answers the events, each with its onset and
        offset in seconds, its label and its confidence, by onset; none is an empty list. The
        decisions (thresholds, median filter) are those saved with the export."""
        data, field, _ = await read_audio_body(request, None)
        wave, duration = await run_in_threadpool(decode_audio, data, model_rate, settings.max_audio_seconds, field)
        try:
            [result] = await asyncio.wait_for(run_in_threadpool(predictor.detect, [wave], model_rate, window, hop),
                                              remaining_time(request, settings))
        except asyncio.TimeoutError:
            raise ApiError(504, 'timeout', f'no answer within {settings.timeout:g} s (--timeout): the server is '
                                           f'overloaded; retry later', headers={'Retry-After': '1'}) from None
        except ValueError as exc:  # window / hop the detector cannot use
            raise ApiError(400, 'invalid_parameter', str(exc), 'window') from None
        return {'model': model_name, 'duration': round(duration, 6), 'frame_hop': result['frame_hop'],
                'events': result['events']}

    async def read_audio_body(request, top_k):
        """(audio bytes, the field they came in, top_k) of a request in any of the accepted forms."""
        content_type = request.headers.get('content-type', '')
        media = content_type.split(';')[0].strip().lower()
        body = await request.body()
        if media == 'multipart/form-data':
            data, field, top_k = await read_multipart(request, top_k)
        elif media == 'application/json' or media.endswith('+json'):
            data, field, top_k = read_json_inputs(body, top_k)
        elif media.startswith('audio/') or media in RAW_TYPES:
            data, field = body, 'body'
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

    def read_json_inputs(body, top_k):
        try:
            payload = json.loads(body)
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
        parameters = payload.get('parameters') or {}
        if not isinstance(parameters, dict):
            raise ApiError(400, 'invalid_parameter', f'parameters must be a JSON object, got {parameters!r}',
                           'parameters')
        unknown = sorted(set(parameters) - set(JSON_PARAMETERS))
        if unknown:
            raise ApiError(400, 'unknown_parameter', f'unknown parameters {unknown}; known: {list(JSON_PARAMETERS)}',
                           f'parameters.{unknown[0]}')
        if 'top_k' in parameters:
            top_k = check_top_k(parameters['top_k'], 'parameters.top_k', len(labels))
        return decode_base64(payload['inputs'], 'inputs'), 'inputs', top_k

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
        # Read as JSON whatever the Content-Type: PaddleSpeech's client sends none.
        try:
            payload = json.loads(body)
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
        scores, _ = await classify_bytes(request, decode_base64(req.audio, 'audio'), 'audio')
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
                'max_queue': settings.max_queue, 'batches': batcher.batches, 'clips': batcher.items}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get('/v1/model', response_model=ModelInfo, summary='The served model')
    async def model_info():
        return {'name': model_name, 'task': predictor.task, 'labels': labels, 'sample_rate': model_rate,
                'frontend': predictor.frontend.to_dict(), 'precision': predictor.precision,
                'min_seconds': float(predictor.meta.get('min_seconds', 0.0)),
                'max_audio_seconds': settings.max_audio_seconds}

    @app.websocket('/v1/stream')
    async def stream(websocket: WebSocket):
        async def classify_window(wave):
            return await classify_wave(wave, settings.timeout)
        await run_stream(websocket, settings, labels, predictor.meta, model_rate, classify_window)

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
