"""`paddle-soundcls serve MODEL_OR_DIR`: the options, and starting uvicorn with them.

Imports no web framework until the server starts, so the command line can list the options
without the `serve` extra installed.
"""
import argparse
import json
import logging
import math
import os
import socket
import sys

from ..deploy import exportdir
from ..deploy.engines import cpu_count
from .settings import API_KEY_ENV, LOOPBACK_HOSTS, MAX_STREAM_MESSAGE_BYTES, MiB, ServeSettings
from ..errors import ServeError  # noqa: F401  (re-exported)

# The engines that run an export ('dygraph' runs a Module in Python, not a server's export).
SERVE_ENGINES = ('auto', 'onnxruntime', 'onnxruntime_int8', 'paddle', 'tflite', 'tflite_int8')

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 8866
LOOPBACK_ADDRESSES = ('127.0.0.1', 'localhost', '::1')
SWITCH_INTERVAL_SECONDS = 0.0005
# No per-message compression on the WebSocket: PCM hardly compresses, and a compressed stream
# lets a client park a thousand times more audio in the connection's buffers (1 MiB of
# silence is 1 kB on the wire), all of it scored even after the client has left.
WS_DEFLATE = False
CONFIG_ENV = 'PADDLE_SOUNDCLS_SERVE_CONFIG'   # how worker processes of --workers N get their settings
SERVE_EXTRA_HINT = "paddle-soundcls serve needs the `serve` extra: pip install 'paddle_soundcls[serve]'"


def resolve_model_dir(model_or_dir):
    """What to serve -> an export directory (one with export.json).

    An export directory is served as it is, without Paddle. A checkpoint directory, or a
    registered model name (its pretrained AudioSet tagger), is exported once into the cache
    (`<cache>/exports`, keyed by its weights; Paddle needed) and served from there, as
    Module.predict runs its cached export.
    """
    path = os.fspath(model_or_dir)
    if exportdir.is_export_dir(path):
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise ServeError(f'{path} is a file; serve an export directory (one with {exportdir.EXPORT_FILE}), a '
                         f'checkpoint directory or a registered model name')
    try:
        from ..export.onnx_cache import cached_export
        from ..module import load_module
    except ImportError as exc:
        raise ServeError(f'{path} is not an export directory (it has no {exportdir.EXPORT_FILE}); serving a '
                         f'checkpoint or a model name exports it first, which needs PaddlePaddle ({exc}). Install '
                         f'paddlepaddle, or serve an export directory (`paddle-soundcls export`)') from None
    if os.path.isdir(path):
        from ..checkpoints.schema import ENSEMBLE_FILE, META_FILE
        if os.path.isfile(os.path.join(path, ENSEMBLE_FILE)):
            raise ServeError(f'{path} is a saved ensemble ({ENSEMBLE_FILE}): export it first (`paddle-soundcls export '
                             f'--checkpoint {path} --output DIR`) and serve DIR')
        if not os.path.isfile(os.path.join(path, META_FILE)):
            # load_module would ask for --model, which serve does not take: say what serve takes.
            raise ServeError(f'{path} is neither an export directory (no {exportdir.EXPORT_FILE}) nor a checkpoint '
                             f'directory written by the Trainer (no {META_FILE}): serve one of those, e.g. '
                             f'ckpt/best_model or the output of `paddle-soundcls export`, or a registered model name')
        module = load_module(path)
    else:
        from ..models.registry import list_models
        if path not in list_models():
            raise ServeError(f'{path} is neither an export directory, a checkpoint directory nor a registered model '
                             f'name ({", ".join(list_models())})')
        module = load_module(model=path, task='tagging')
    return cached_export(module)


def add_serve_arguments(parser):
    """Add the positional MODEL_OR_DIR and the serve options to an argparse parser."""
    defaults = ServeSettings()
    parser.add_argument('model', metavar='MODEL_OR_DIR', help='an export directory (with export.json; no Paddle '
                        'needed), a checkpoint directory or a registered model name (exported once into the cache)')
    parser.add_argument('--host', default=DEFAULT_HOST,
                        help=f'address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for every '
                             f'interface, then set --api-key)')
    parser.add_argument('--port', type=int, default=DEFAULT_PORT, help=f'default {DEFAULT_PORT}')
    parser.add_argument('--workers', type=int, default=1,
                        help='server processes, each with its own model and queue (default 1)')
    parser.add_argument('--threads', type=int, default=None,
                        help='engine threads per worker (default: the CPUs this process may use, divided by --workers)')
    parser.add_argument('--engine', choices=SERVE_ENGINES, default='onnxruntime',
                        help='onnxruntime (model.onnx, the default), onnxruntime_int8 (model.int8.onnx), paddle '
                             '(Paddle Inference; imports paddle), tflite / tflite_int8 (model.tflite / '
                             'model.int8.tflite) or auto, as for the other commands')
    parser.add_argument('--precision', choices=('fp32', 'int8'), default=None, help=argparse.SUPPRESS)
    parser.add_argument('--max-batch', type=int, default=defaults.max_batch,
                        help=f'most clips per engine call (default {defaults.max_batch})')
    parser.add_argument('--max-wait-ms', type=float, default=defaults.max_wait_ms,
                        help=f'how long a clip waits for others to batch with (default {defaults.max_wait_ms:g})')
    parser.add_argument('--max-queue', type=int, default=defaults.max_queue,
                        help=f'clips waiting for the engine before requests get 503 (default {defaults.max_queue})')
    parser.add_argument('--max-body-mb', type=float, default=defaults.max_body_bytes / MiB,
                        help=f'largest request body in MiB (default {defaults.max_body_bytes / MiB:g})')
    parser.add_argument('--max-audio-seconds', type=float, default=None,
                        help='longest clip per request (default: 60 for a model with a training clip length, '
                             'scored in windows of it; 10 for a model that scores clips whole, in one engine call)')
    parser.add_argument('--max-decode-samples', type=float, default=defaults.max_decode_samples,
                        help=f'most samples (frames x channels, from the header) one file may decode to: bounds '
                             f'the memory and time of decoding (default {defaults.max_decode_samples}: 60 s of '
                             f'6-channel 44.1 kHz audio)')
    parser.add_argument('--max-window-seconds', type=float, default=defaults.max_window_seconds,
                        help=f'longest audio one engine call scores: stream and /v1/events windows at most this '
                             f'long, longer clips scored as the mean over windows of it unless the model has a '
                             f'training clip length (default {defaults.max_window_seconds:g})')
    parser.add_argument('--max-overlap', type=float, default=defaults.max_overlap,
                        help=f'most times a stream or /v1/events scores each second of audio, window / hop '
                             f'(default {defaults.max_overlap:g})')
    parser.add_argument('--timeout', type=float, default=defaults.timeout,
                        help=f'seconds from a request\'s first byte to its answer, and between two messages of '
                             f'a stream (default {defaults.timeout:g})')
    parser.add_argument('--top-k', type=int, default=defaults.default_top_k,
                        help=f'labels answered when a request names no top_k (default {defaults.default_top_k})')
    parser.add_argument('--max-connections', type=int, default=256,
                        help='open connections before new ones get 503 (default 256)')
    parser.add_argument('--max-streams', type=int, default=defaults.max_streams,
                        help=f'WebSocket streams open at once; one more is refused with error "busy" and close '
                             f'code 1013 (default {defaults.max_streams})')
    parser.add_argument('--api-key', default=None,
                        help=f'require this key (header `Authorization: Bearer KEY` or `X-API-Key: KEY`); '
                             f'default: the environment variable {API_KEY_ENV}, else no key')
    parser.add_argument('--cors-origin', action='append', default=[], metavar='ORIGIN',
                        help='allow browser pages of ORIGIN (e.g. https://example.org) to call the API; '
                             'repeat for several (default: none)')
    parser.add_argument('--allowed-hosts', default=None, metavar='NAMES',
                        help='comma-separated names requests must be addressed to (the Host header), "*" for any. '
                             'Default: on a loopback --host without an API key, localhost, 127.0.0.1, [::1] and '
                             '--host (so a web page cannot reach the server through a name of its own that points '
                             'here); any name otherwise (behind 0.0.0.0 a load balancer may use its own)')
    parser.add_argument('--index', default=None, metavar='INDEX_DIR',
                        help='a similarity index of this model\'s embeddings (paddle-soundcls index): POST '
                             '/v1/search answers the nearest clips of the audio sent')
    parser.add_argument('--max-search-k', type=int, default=defaults.max_search_k,
                        help=f'most results one /v1/search may ask for (default {defaults.max_search_k})')
    parser.add_argument('--access-log', action='store_true', help='log every request (default off)')
    return parser


def allowed_hosts_for(args, api_key):
    """--allowed-hosts, or its default for --host: the loopback names on a loopback address
    without a key, any name otherwise."""
    if args.allowed_hosts is not None:
        names = tuple(name.strip() for name in args.allowed_hosts.split(',') if name.strip())
        if not names:
            raise ServeError('--allowed-hosts is empty: give the names requests are addressed to (e.g. '
                             'localhost,127.0.0.1), or * for any')
        with_port = [n for n in names if _has_port(n)]
        if with_port:
            raise ServeError(f'--allowed-hosts takes host names without a port (the port is not checked), got '
                             f'{", ".join(with_port)}')
        return names
    host = getattr(args, 'host', DEFAULT_HOST)
    if api_key is not None or host not in LOOPBACK_ADDRESSES:
        return ()
    return LOOPBACK_HOSTS + ((host,) if host not in LOOPBACK_HOSTS else ())


def _has_port(name):
    """'host:8866' or '[::1]:8866' (a bare IPv6 address has more than one colon and no port)."""
    return ']:' in name if name.startswith('[') else name.count(':') == 1


def settings_from_args(args):
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    samples = args.max_decode_samples   # a float on the command line (16e6); a whole one becomes an int
    samples = int(samples) if math.isfinite(samples) and samples == int(samples) else samples
    return ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_body_bytes=int(args.max_body_mb * MiB), max_audio_seconds=args.max_audio_seconds,
                         max_decode_samples=samples,
                         max_window_seconds=args.max_window_seconds, max_overlap=args.max_overlap,
                         timeout=args.timeout, default_top_k=args.top_k, api_key=api_key,
                         cors_origins=tuple(args.cors_origin), allowed_hosts=allowed_hosts_for(args, api_key),
                         max_streams=args.max_streams, index_dir=args.index, max_search_k=args.max_search_k)


def _check_args(args):
    for name in ('port', 'workers', 'max_connections'):
        value = getattr(args, name)
        low = 0 if name == 'port' else 1
        if value < low or (name == 'port' and value > 65535):
            raise ServeError(f'--{name.replace("_", "-")} must be {"0-65535" if name == "port" else "at least 1"}, '
                             f'got {value}')
    if args.threads is not None and args.threads < 1:
        raise ServeError(f'--threads must be at least 1, got {args.threads}')
    if not math.isfinite(args.max_body_mb) or args.max_body_mb <= 0:
        raise ServeError(f'--max-body-mb must be a positive number of MiB, got {args.max_body_mb:g}')


def check_port_free(host, port):
    """A one-line error now, rather than uvicorn's log line and exit after the model has loaded."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        raise ServeError(f'cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port, or stop '
                         f'the program that uses it') from None


def engine_from_args(args):
    """--engine, with the old `--precision int8` read as `--engine onnxruntime_int8` (and a note)."""
    if args.precision is None:
        return args.engine
    engine = 'onnxruntime_int8' if args.precision == 'int8' else args.engine
    if args.precision == 'int8' and args.engine not in ('onnxruntime', 'onnxruntime_int8'):
        raise ServeError(f'--precision int8 runs on onnxruntime (model.int8.onnx), not --engine {args.engine}: use '
                         f'--engine onnxruntime_int8')
    print(f'note: --precision is deprecated; use --engine {engine}', file=sys.stderr)
    return engine


def build_app(model_dir, settings, threads=None, engine='onnxruntime'):
    from ..deploy import Predictor
    from .app import create_app
    return create_app(Predictor(model_dir, engine=engine, num_threads=threads), settings)


def app_from_environment():
    """The app of one worker process of `--workers N`, from the settings the parent left in CONFIG_ENV."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)   # as run_serve does in a single process
    config = json.loads(os.environ[CONFIG_ENV])
    settings = dict(config['settings'], api_key=os.environ.get(API_KEY_ENV) or None)
    settings['cors_origins'] = tuple(settings['cors_origins'])
    settings['allowed_hosts'] = tuple(settings['allowed_hosts'])
    return build_app(config['model_dir'], ServeSettings(**settings), config['threads'], config['engine'])


def run_serve(args):
    """Start the server with the options of `add_serve_arguments`; returns when it stops (0)."""
    try:
        import uvicorn
        from . import app as _  # noqa: F401  (fastapi and starlette: fail here, with the hint)
        try:
            import python_multipart  # noqa: F401  (multipart uploads; the module's name since 0.0.13)
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as exc:
        raise ServeError(f'{SERVE_EXTRA_HINT} ({exc})') from None
    _check_args(args)
    engine = engine_from_args(args)
    # The event loop shares the interpreter with the engine thread, whose numpy work (resampling,
    # features) holds it for stretches: a shorter switch interval hands it back to the loop
    # sooner, so /healthz and small requests stay quick while the engine is busy.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    model_dir = resolve_model_dir(args.model)
    check_port_free(args.host, args.port)
    threads = args.threads or max(1, cpu_count() // args.workers)
    options = dict(host=args.host, port=args.port, access_log=args.access_log, log_level='info',
                   ws_max_size=MAX_STREAM_MESSAGE_BYTES, ws_per_message_deflate=WS_DEFLATE,
                   limit_concurrency=args.max_connections,
                   timeout_keep_alive=5,
                   # On SIGTERM, requests in flight finish (each is bounded by --timeout); then streams
                   # and anything left are closed, so a stop never waits on one client.
                   timeout_graceful_shutdown=math.ceil(settings.timeout) + 1)
    if args.host not in LOOPBACK_ADDRESSES and settings.api_key is None:
        logging.getLogger(__name__).warning('listening on %s without an API key: anyone who reaches this address '
                                            'can use the server (set --api-key or %s)', args.host, API_KEY_ENV)
    if args.workers == 1:
        # Load the model before binding the port, so a bad export fails with its own message.
        uvicorn.run(build_app(model_dir, settings, threads, engine), **options)
        return 0
    from ..deploy import Predictor
    Predictor(model_dir, engine=engine, num_threads=1)  # check the export once, in the parent
    config = {'model_dir': os.path.abspath(model_dir), 'threads': threads, 'engine': engine,
              'settings': {k: v for k, v in settings.to_dict().items() if k != 'api_key'}}
    os.environ[CONFIG_ENV] = json.dumps(config)
    if settings.api_key is not None:
        os.environ[API_KEY_ENV] = settings.api_key  # the workers read it from here, not from their command line
    uvicorn.run('paddle_soundcls.serve.command:app_from_environment', factory=True, workers=args.workers, **options)
    return 0
