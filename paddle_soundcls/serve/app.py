"""The ASGI application: the endpoints (routes.py), their error answers (error_handlers.py),
the page, the middleware and the batcher's lifetime.

    from paddle_soundcls.deploy import Predictor
    from paddle_soundcls.serve.app import create_app
    app = create_app(Predictor('export_dir'), ServeSettings(max_batch=16))   # any ASGI server runs it

Stateless: every request carries its audio and gets its answer; nothing is kept between
requests, so any number of these processes can sit behind one load balancer.
"""
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import List

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from . import routes
from .batching import Batcher
from .error_handlers import add_error_handlers
from .middleware import AllowedHosts, RequestLimits, RequireApiKey
from .schemas import ERROR_RESPONSES, ClassifyResponse, ErrorResponse, LabelScore, ModelInfo, PaddleSpeechRequest
from .schemas import PaddleSpeechResponse, audio_request
from .settings import ServeSettings
from .stream import OpenStreams
from .work import Work

EVENTS_RESPONSES = {**ERROR_RESPONSES, 501: {'model': ErrorResponse, 'description': 'the export cannot detect events'}}
SEARCH_RESPONSES = {**ERROR_RESPONSES, 501: {'model': ErrorResponse, 'description': 'the server has no index'}}


@dataclass
class Server:
    """What every endpoint of one app shares (app.state.server)."""
    predictor: object
    settings: ServeSettings
    batcher: Batcher
    work: Work
    labels: List[str]
    model_name: str
    model_rate: int
    streams: OpenStreams = field(default_factory=OpenStreams)
    index: object = None   # search.VectorIndex of settings.index_dir, or None


def add_routes(app):
    post = app.add_api_route
    post('/v1/classify', routes.classify, methods=['POST'], response_model=ClassifyResponse,
         responses=ERROR_RESPONSES, openapi_extra=audio_request(routes.CLASSIFY_PARAMETERS),
         summary='Classify one audio clip')
    post('/v1/events', routes.events, methods=['POST'], responses=EVENTS_RESPONSES,
         openapi_extra=audio_request(routes.EVENTS_PARAMETERS), summary='When each sound happens in one audio clip')
    post('/v1/search', routes.search, methods=['POST'], responses=SEARCH_RESPONSES,
         openapi_extra=audio_request(routes.SEARCH_PARAMETERS),
         summary='The clips of the served index nearest to one audio clip')
    post('/hf/audio-classification', routes.hf_audio_classification, methods=['POST'],
         response_model=List[LabelScore], responses=ERROR_RESPONSES,
         openapi_extra=audio_request(routes.CLASSIFY_PARAMETERS),
         summary="Hugging Face's audio-classification API (InferenceClient(model=URL))")
    post('/paddlespeech/cls', routes.paddlespeech_cls, methods=['POST'], response_model=PaddleSpeechResponse,
         response_model_exclude_none=True, summary="PaddleSpeech's sound classification API",
         openapi_extra={'requestBody': {'required': True, 'content': {
             'application/json': {'schema': PaddleSpeechRequest.model_json_schema()}}}})
    post('/paddlespeech/cls/help', routes.paddlespeech_help, methods=['GET'], summary="PaddleSpeech's help answer")
    post('/healthz', routes.healthz, methods=['GET'], summary='Liveness and readiness, for load balancers')
    post('/v1/model', routes.model_info, methods=['GET'], response_model=ModelInfo, summary='The served model')
    app.add_api_websocket_route('/v1/stream', routes.stream)
    post('/', routes.page, methods=['GET'], include_in_schema=False)
    app.mount('/static', StaticFiles(directory=routes.STATIC_DIR), name='static')


def add_middleware(app, settings):
    # The last added runs first: CORS outermost, so its headers reach even a 401; then the Host
    # check, then the key (before any body is read), then the body limits.
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(RequireApiKey, settings=settings)
    if settings.allowed_hosts:
        app.add_middleware(AllowedHosts, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=['GET', 'POST'],
                           allow_headers=['Authorization', 'X-API-Key', 'Content-Type'])


def load_index(index_dir, predictor):
    """The similarity index /v1/search answers from, checked to hold `predictor`'s embeddings."""
    if index_dir is None:
        return None
    from ..errors import ArgumentError
    from ..search.index import VectorIndex
    index = VectorIndex.load(index_dir)
    model, size = index.meta.get('model'), index.meta.get('embedding_size')
    if model != predictor.meta.get('model') or size != predictor.embedding_size:
        raise ArgumentError(f'--index {index_dir} holds embeddings of {model} ({size} values), not of the served '
                            f'{predictor.meta.get("model")} ({predictor.embedding_size}): serve the export that '
                            f'embedded it, or index embeddings of this one')
    return index


def create_app(predictor, settings=None):
    """The ASGI app serving `predictor`: a deploy.Predictor, or anything with its labels, task,
    frontend, meta, precision, min_seconds, clip_seconds, score_batch and frame_scorer."""
    settings = (settings or ServeSettings()).for_model(predictor)
    batcher = Batcher(None, settings.max_batch, settings.max_wait_ms / 1000.0, settings.max_queue)
    work = Work(batcher, predictor, settings)
    batcher.run_batch = work.run_scores
    server = Server(predictor, settings, batcher, work, list(predictor.labels), predictor.meta.get('model', 'model'),
                    predictor.frontend_cfg.sample_rate, index=load_index(settings.index_dir, predictor))

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            work.close()

    app = FastAPI(title='paddle_soundcls', version=__version__, lifespan=lifespan, redoc_url=None,
                  description=f'Sound classification with `{server.model_name}` ({len(server.labels)} labels). '
                              f'The page at / tries it in a browser.')
    app.state.server = server
    add_error_handlers(app)
    add_routes(app)
    add_middleware(app, settings)
    return app
