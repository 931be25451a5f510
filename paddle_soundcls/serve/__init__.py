"""HTTP server for an export directory: `paddle-soundcls serve EXPORT_DIR`.

    POST /v1/classify        audio (raw bytes, multipart `file`, or JSON base64) -> best labels
    POST /paddlespeech/cls   PaddleSpeech's request and answer, for its existing clients
    POST /v1/events          audio -> when each sound happens
    GET  /v1/stream          WebSocket: PCM chunks in, scores of a sliding window out
    GET  /v1/model, /healthz, /docs (OpenAPI), /  (a page to try it in a browser)

Built on FastAPI (Starlette) and uvicorn: an ASGI stack, so one process serves many slow
clients and WebSockets from one event loop while the model runs in a worker thread; FastAPI
writes the OpenAPI docs from the endpoints and their schemas; both are widely used and kept up
to date, and PaddleSpeech's own server uses the same pair, so its API is reproduced on the
stack it was defined on. Paddle-free: the model runs on `paddle_soundcls.deploy.Predictor`.

Library use: `paddle_soundcls.serve.app.create_app(predictor, ServeSettings(...))` gives the
ASGI app; `add_serve_arguments(parser)` and `run_serve(args)` are the command line.
"""
from .command import ServeError, add_serve_arguments, resolve_model_dir, run_serve
from .settings import API_KEY_ENV, ServeSettings

__all__ = ['API_KEY_ENV', 'ServeError', 'ServeSettings', 'add_serve_arguments', 'resolve_model_dir', 'run_serve']
