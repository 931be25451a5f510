"""The endpoints, each a small function of the request and the app's `Server` (app.state.server).

    /v1/classify, /v1/events           the API of this package
    /v1/search                         the nearest clips of a served index (serve --index)
    /hf/audio-classification           Hugging Face's inference API (its client works unchanged)
    /paddlespeech/cls (+ /help)        PaddleSpeech's API, for its clients
    /healthz, /v1/model                for load balancers and clients
    /v1/stream                         the WebSocket (stream.py)
"""
import json
import os

from fastapi import Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from . import params
from .decode import base64_steps
from .inputs import parse_json, read_audio_request
from .schemas import PaddleSpeechRequest
from .settings import ApiError, window_and_hop
from .stream import run_stream
from .work import deadline_of, remaining

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
CLASSIFY_PARAMETERS = ('top_k',)
EVENTS_PARAMETERS = ('window', 'hop')
SEARCH_PARAMETERS = ('top_k',)
PADDLESPEECH_FIELDS = ('audio', 'topk')


def server_of(request):
    return request.app.state.server


async def scores_of_request(request, accepted):
    """(the Server, OrderedDict(label -> score), seconds of audio, top_k) of a classify request."""
    server = server_of(request)
    flow, deadline = server.work.flow(), deadline_of(request, server.settings)
    data, field, found = await read_audio_request(request, server.work, accepted, flow, deadline)
    top_k = params.top_k(found, server.settings.default_top_k, len(server.labels))
    scores, duration = await server.work.classify(data, field, flow, deadline)
    return server, scores, duration, top_k


async def classify(request: Request):
    """The audio as raw bytes (`Content-Type: audio/wav`, `audio/flac`, ..., or
    `application/octet-stream` or none, when the bytes are an audio file), as a multipart upload
    (field `file`), or as JSON `{"inputs": base64, "parameters": {"top_k": 5}}`; `top_k` in the
    query string, a form field or "parameters". Answers the best labels, best first."""
    server, scores, duration, top_k = await scores_of_request(request, CLASSIFY_PARAMETERS)
    results = [{'label': label, 'score': score} for label, score in list(scores.items())[:top_k]]
    return {'model': server.model_name, 'duration': round(duration, 6), 'results': results}


async def hf_audio_classification(request: Request):
    """Hugging Face's audio-classification API: the audio in the forms /v1/classify takes (its
    client sends raw bytes without a Content-Type, or `{"inputs": base64, "parameters":
    {"top_k": 2}}`); answers the bare list `[{"label", "score"}, ...]`, best first, which
    `huggingface_hub.InferenceClient(model=URL).audio_classification(...)` reads."""
    _, scores, _, top_k = await scores_of_request(request, CLASSIFY_PARAMETERS)
    return [{'label': label, 'score': score} for label, score in list(scores.items())[:top_k]]


async def events(request: Request):
    """The audio in the forms /v1/classify takes; `window` and `hop` (seconds) in the query
    string, a form field or "parameters". Answers the events, each with its onset and offset in
    seconds, its label and its confidence, by onset; none is an empty list. The decisions
    (thresholds, median filter) are those saved with the export."""
    server = server_of(request)
    flow, deadline = server.work.flow(), deadline_of(request, server.settings)
    data, field, found = await read_audio_request(request, server.work, EVENTS_PARAMETERS, flow, deadline)
    window, hop = window_and_hop(params.seconds(found, 'window'), params.seconds(found, 'hop'), server.work.limits)
    wave, duration = await server.work.decode(data, field, flow, deadline)
    result = await server.work.events(wave, window, hop, flow, deadline)
    return {'model': server.model_name, 'duration': round(duration, 6), 'frame_hop': result['frame_hop'],
            'events': result['events']}


async def search(request: Request):
    """The audio in the forms /v1/classify takes; `top_k` (default 10, at most --max-search-k) in the
    query string, a form field or "parameters". Answers the index's nearest clips or windows, best
    first: file, start, end (seconds), score (cosine similarity) and distance (1 - score). The clip
    is embedded as Predictor.embed embeds it, through the same queue as every other request."""
    server = server_of(request)
    if server.index is None:
        raise ApiError(501, 'search_unsupported', 'this server has no index: start it with --index INDEX_DIR '
                                                  '(made by paddle-soundcls embed, then index)')
    flow, deadline = server.work.flow(), deadline_of(request, server.settings)
    data, field, found = await read_audio_request(request, server.work, SEARCH_PARAMETERS, flow, deadline)
    k = params.top_k(found, 10, min(server.settings.max_search_k, len(server.index)))
    wave, duration = await server.work.decode(data, field, flow, deadline)
    embedding = await server.work.embedding(wave, flow, remaining(deadline))
    results = await server.work.step(lambda: server.index.search(embedding, k), flow, remaining(deadline))
    return {'model': server.model_name, 'duration': round(duration, 6), 'results': results}


def _json_safe(value):
    """`value` if JSON can carry it (no NaN / Inf, no odd types), else a short text of it."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)[:100]


def _paddlespeech_422(errors):
    detail = [{**error, 'loc': ['body', *error['loc']], 'input': _json_safe(error.get('input'))}
              for error in errors]
    return JSONResponse({'detail': jsonable_encoder(detail)}, status_code=422)


async def paddlespeech_cls(request: Request):
    """The request and answers of PaddleSpeech's server (`paddlespeech_client cls` works
    unchanged): `{"audio": base64 wav, "topk": 1}` -> `{"success": true, "code": 200, "message":
    {"description": "success"}, "result": {"topk": 1, "results": [{"class_name", "prob"}]}}`.
    Like PaddleSpeech, a body that does not fit the schema gets 422 `{"detail": [...]}`, and
    audio or topk that cannot be used, or a field it does not take, gets HTTP 200 with
    `"success": false` (code 400 and a description of the problem)."""
    server = server_of(request)
    flow, deadline = server.work.flow(), deadline_of(request, server.settings)
    params.refuse_unknown([name for name, _ in request.query_params.multi_items()], (), 'the query string')
    # Read as JSON whatever the Content-Type: PaddleSpeech's client sends none.
    try:
        payload = await parse_json(server.work, await request.body(), flow, deadline)
    except (ValueError, ApiError) as exc:
        message = exc.message if isinstance(exc, ApiError) else getattr(exc, 'msg', str(exc))
        return _paddlespeech_422([{'type': 'json_invalid', 'loc': [getattr(exc, 'pos', 0)], 'msg': 'JSON decode error',
                                   'input': {}, 'ctx': {'error': message}}])
    if isinstance(payload, dict):
        params.refuse_unknown(sorted(payload), PADDLESPEECH_FIELDS, 'the JSON body')
    try:
        req = PaddleSpeechRequest.model_validate(payload)
    except ValidationError as exc:
        return _paddlespeech_422(exc.errors(include_url=False))
    labels = server.labels
    if req.topk < 1 or req.topk > len(labels):
        raise ApiError(400, 'invalid_parameter', f'topk is {req.topk}; the model has {len(labels)} labels, so '
                                                 f'topk must be from 1 to {len(labels)}', 'topk')
    data = await server.work.steps(base64_steps(req.audio, 'audio'), flow, deadline)
    scores, _ = await server.work.classify(data, 'audio', flow, deadline)
    results = [{'class_name': label, 'prob': score} for label, score in list(scores.items())[:req.topk]]
    return {'success': True, 'code': 200, 'message': {'description': 'success'},
            'result': {'topk': req.topk, 'results': results}}


async def paddlespeech_help():
    # Its exact answer, "True" as a string included.
    return {'success': 'True', 'code': 200, 'message': {'global': 'success'},
            'result': {'description': 'cls server', 'input': 'base64 string of wavfile',
                       'output': 'classification result'}}


async def healthz(request: Request):
    """200 while the engine loop runs (503 otherwise), with the queue depth."""
    server = server_of(request)
    batcher = server.batcher
    body = {'status': 'ok' if batcher.alive else 'down', 'model': server.model_name, 'queue': batcher.depth,
            'max_queue': server.settings.max_queue, 'batches': batcher.batches, 'clips': batcher.items,
            'steps': batcher.steps}
    return JSONResponse(body, status_code=200 if batcher.alive else 503)


async def model_info(request: Request):
    server = server_of(request)
    predictor, limits = server.predictor, server.work.limits
    return {'name': server.model_name, 'task': predictor.task, 'labels': server.labels,
            'sample_rate': server.model_rate, 'frontend': predictor.frontend_cfg.to_dict(),
            'precision': predictor.precision, 'min_seconds': float(predictor.meta.get('min_seconds', 0.0)),
            'max_audio_seconds': server.settings.max_audio_seconds,
            'windows': {'min_window': limits.min_window, 'max_window': limits.max_window,
                        'min_hop': limits.min_hop, 'max_overlap': limits.max_overlap}}


async def stream(websocket: WebSocket):
    server = websocket.app.state.server
    await run_stream(websocket, server.settings, server.labels, server.predictor.meta, server.model_rate,
                     server.work.limits, server.work, server.streams)


async def page():
    return FileResponse(os.path.join(STATIC_DIR, 'index.html'))
