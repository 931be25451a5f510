"""The server's settings and its JSON errors. No web framework imported here, so the command
line can build its parser without the `serve` extra installed."""
import hmac
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Tuple

from .. import validate
from ..errors import ArgumentError

MiB = 1 << 20
API_KEY_ENV = 'PADDLE_SOUNDCLS_API_KEY'
# Paths that need the API key when one is set. The page, its files, /healthz (probed by load
# balancers) and the OpenAPI docs stay open: they reveal nothing and run no model.
# With an API key, every path needs it except these: what a load balancer, a browser loading the
# page and a client reading the API's description ask for. Open by name, so a new route is
# guarded unless it is added here.
OPEN_PATHS = ('/', '/healthz', '/openapi.json', '/docs', '/docs/oauth2-redirect', '/redoc')
OPEN_PREFIXES = ('/static/',)


def needs_api_key(path):
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)
PADDLESPEECH_PREFIX = '/paddlespeech/'
# One WebSocket message of PCM; 1 MiB is 16 s of 16-kHz int16, far more than a chunk needs.
MAX_STREAM_MESSAGE_BYTES = MiB


# Stream windows and /v1/events windows: each second of audio is scored at most this many
# times (window / hop), so a small hop cannot multiply the work of a stream without bound.
DEFAULT_MAX_OVERLAP = 4
# Work that waits for room in the full queue (a started /v1/events request, an event stream's
# window) asks again this often, until its deadline.
QUEUE_RETRY_SECONDS = 0.02


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of one server process; each value checked on creation.

    max_batch: most clips per engine call; max_wait_ms: how long the first clip of a batch
    waits for others; max_queue: units of work (clip segments, windows, decoding steps)
    waiting for the engine before new work gets 503; max_body_bytes / max_audio_seconds: per
    request (max_audio_seconds None: max_audio_seconds_for(the model), 60 s for a model with a
    training clip length, 10 s for one that scores clips whole); max_decode_samples: most samples (frames x channels, read from the header before
    decoding) one file may decode to; max_window_seconds: the longest audio one engine call
    scores (stream and /v1/events windows at most this long; clips are scored as predict scores
    them: in windows of the training clip length, or whole);
    max_overlap: most times a stream or /v1/events scores each second of audio (window / hop);
    timeout: seconds for a request from its first byte to its answer (and for a stream between
    two messages); default_top_k: labels answered when a request names no top_k; api_key: None
    for an open server (surrounding whitespace is dropped, as it is from a presented key);
    cors_origins: origins allowed to call from a browser page of another site (none by default);
    allowed_hosts: the names (Host header, port ignored) requests must be addressed to, () for
    any (the command line sets them for a loopback address without a key; see host_allowed);
    max_streams: WebSocket streams open at once (the server's --max-connections does not count
    them once their connection is upgraded); one more is refused (error "busy", close 1013);
    index_dir: a similarity index (paddle-soundcls index) of this model's embeddings that
    /v1/search answers from, or None; max_search_k: most results one search may ask for.
    """
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_bytes: int = 25 * MiB
    max_audio_seconds: Optional[float] = None
    max_decode_samples: int = 16_000_000
    max_window_seconds: float = 5.0
    max_overlap: float = DEFAULT_MAX_OVERLAP
    timeout: float = 30.0
    default_top_k: int = 5
    api_key: Optional[str] = field(default=None, repr=False)
    cors_origins: Tuple[str, ...] = ()
    allowed_hosts: Tuple[str, ...] = ()
    max_streams: int = 256
    index_dir: Optional[str] = None
    max_search_k: int = 100

    def __post_init__(self):
        for name in ('max_batch', 'max_queue', 'max_body_bytes', 'max_decode_samples', 'default_top_k', 'max_streams',
                     'max_search_k'):
            validate.positive_int(name, getattr(self, name))
        validate.non_negative_number('max_wait_ms', self.max_wait_ms)
        validate.positive_number('max_audio_seconds', self.max_audio_seconds, allow_none=True,
                                 hint="None: the model's default")
        validate.positive_number('max_window_seconds', self.max_window_seconds)
        validate.number('max_overlap', self.max_overlap, 1.0)
        validate.positive_number('timeout', self.timeout)
        object.__setattr__(self, 'api_key', check_api_key(self.api_key))
        object.__setattr__(self, 'cors_origins', tuple(self.cors_origins))
        object.__setattr__(self, 'allowed_hosts', tuple(name.strip().lower() for name in self.allowed_hosts))

    def to_dict(self):
        return asdict(self)

    def for_model(self, predictor):
        """These settings with max_audio_seconds decided for `predictor` where it was left to the model."""
        if self.max_audio_seconds is not None:
            return self
        return replace(self, max_audio_seconds=max_audio_seconds_for(predictor))


# The longest clip per request when --max-audio-seconds is not given. A model with a training clip
# length scores a long clip in windows of it, one engine unit each; a model that scores clips
# whole (the pretrained taggers) runs a clip in one engine call, which other requests wait for,
# so its clips are held to the AudioSet clip length it learnt from (longer audio: /v1/events).
MAX_AUDIO_SECONDS_WINDOWED = 60.0
MAX_AUDIO_SECONDS_WHOLE = 10.0


def max_audio_seconds_for(predictor):
    return MAX_AUDIO_SECONDS_WINDOWED if getattr(predictor, 'clip_seconds', None) else MAX_AUDIO_SECONDS_WHOLE


def check_api_key(key):
    """The key as clients can present it (surrounding whitespace dropped), or None; ValueError for
    a key no HTTP header can carry."""
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip():
        raise ArgumentError('api_key must be a non-empty string, or None for a server without a key')
    key = key.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ArgumentError('api_key contains a control character (a line break or tab inside it?), which no HTTP '
                         'header can carry: choose a key of printable characters')
    return key


def key_matches(settings, presented, from_header=True):
    """True when no key is set, or `presented` is the key (compared in constant time).

    presented: the key a client sent, already stripped like the configured one. From a header
    (decoded as Latin-1, as ASGI servers give headers) it is compared as the bytes it came in,
    with the key's UTF-8 bytes (what browsers and most clients send) and its Latin-1 bytes;
    from JSON (the stream's "api_key") as text.
    """
    if settings.api_key is None:
        return True
    if not presented or not isinstance(presented, str):
        return False
    if not from_header:
        return hmac.compare_digest(presented.encode('utf-8'), settings.api_key.encode('utf-8'))
    try:
        sent = presented.encode('latin-1')
    except UnicodeEncodeError:   # not the Latin-1 decoding of header bytes
        sent = presented.encode('utf-8')
    candidates = [settings.api_key.encode('utf-8')]
    try:
        candidates.append(settings.api_key.encode('latin-1'))
    except UnicodeEncodeError:
        pass
    # Every candidate is compared, so the time does not tell which one matched.
    return sum(hmac.compare_digest(sent, candidate) for candidate in candidates) > 0


def key_from_headers(headers):
    """The key a client presents: `X-API-Key: KEY` or `Authorization: Bearer KEY`, whitespace stripped.

    headers: a mapping with lower-case names (Starlette's Headers, or a dict).
    """
    key = headers.get('x-api-key')
    if key:
        return key.strip()
    scheme, _, value = (headers.get('authorization') or '').partition(' ')
    return value.strip() if scheme.lower() == 'bearer' else None


def origin_allowed(settings, headers):
    """The CORS rule for a WebSocket handshake, which browsers do not apply themselves: no Origin
    (not a browser), the server's own origin (its page), or one of --cors-origin."""
    origin = headers.get('origin')
    if origin is None:
        return True
    if origin in settings.cors_origins:
        return True
    _, sep, netloc = origin.partition('://')
    host = (headers.get('host') or '').strip().lower()
    return bool(sep) and bool(host) and netloc.strip().lower().rstrip('/') == host


LOOPBACK_HOSTS = ('localhost', '127.0.0.1', '[::1]')


def host_allowed(allowed, host):
    """True when `allowed` is empty or holds the name of the Host header `host` (its port
    dropped, case ignored); '*' in `allowed` lets every name through."""
    if not allowed or '*' in allowed:
        return True
    host = host.strip().lower()
    name = host.rpartition(':')[0] if host.rpartition(':')[2].isdigit() and not host.endswith(']') else host
    return name in allowed


@dataclass(frozen=True)
class WindowLimits:
    """What windows of one served model may be, in seconds: min_window, the network's shortest
    input; min_hop, the time between two of the network's frames; max_window and max_overlap
    (window / hop), the server's limits; default_window, the window when a request names none
    (detection's default, the training clip length or 10 s, within max_window)."""
    min_window: float
    min_hop: float
    max_window: float
    max_overlap: float
    default_window: float


def window_and_hop(window, hop, limits):
    """A request's (window, hop), each None for its default (limits.default_window and half of
    it), checked by check_window_hop."""
    window = limits.default_window if window is None else window
    return check_window_hop(window, window / 2 if hop is None and _seconds(window) else hop, limits)


def _seconds(value):
    return isinstance(value, (int, float)) and validate.is_finite_number(value) and value > 0


def check_window_hop(window, hop, limits):
    """The one rule for windows of /v1/events and of streams: (window, hop) as floats, or
    ApiError(400) naming the field. A window shorter than the network's input would be padded
    and a hop finer than its frames would repeat work, multiplying what each second of audio
    costs; so would a large window / hop."""
    for name, value in (('window', window), ('hop', hop)):
        if not _seconds(value):
            raise ApiError(400, 'invalid_parameter', f'{name} must be a positive number of seconds, got {value!r}',
                           name)
    window, hop = float(window), float(hop)
    tolerance = 1 + 1e-9   # seconds written in decimal
    if window * tolerance < limits.min_window:
        raise ApiError(400, 'invalid_parameter', f'window is {window:g} s, shorter than the {limits.min_window:g} s '
                                                 f'the model takes at least (a shorter window would be padded to it, '
                                                 f'multiplying the work): use window >= {limits.min_window:g}',
                       'window')
    if window > limits.max_window * tolerance:
        raise ApiError(400, 'invalid_parameter', f'window is {window:g} s; this server scores windows of at most '
                                                 f'{limits.max_window:g} s (--max-window-seconds)', 'window')
    if hop * tolerance < limits.min_hop:
        raise ApiError(400, 'invalid_parameter', f'hop is {hop:g} s, finer than the {limits.min_hop:g} s between two '
                                                 f'frames of the network: use hop >= {limits.min_hop:g}', 'hop')
    if hop > window * tolerance:
        raise ApiError(400, 'invalid_parameter', f'hop ({hop:g} s) must not be longer than window ({window:g} s): '
                                                 f'audio between windows would never be scored', 'hop')
    if window > hop * limits.max_overlap * tolerance:
        raise ApiError(400, 'invalid_parameter', f'window / hop is {window / hop:.3g}: each second of audio would be '
                                                 f'scored that many times; this server scores it at most '
                                                 f'{limits.max_overlap:g} times (--max-overlap): use hop >= '
                                                 f'{window / limits.max_overlap:.4g}', 'hop')
    return window, hop


class ApiError(Exception):
    """A request that cannot be answered: HTTP status, a short code, and a message that names
    the problem and says what to do."""

    def __init__(self, status, code, message, field=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_body(path, status, code, message, field=None):
    """The JSON of an error on `path`: our shape, or PaddleSpeech's under /paddlespeech/ so
    that its clients can read every answer."""
    if path.startswith(PADDLESPEECH_PREFIX):
        return {'success': False, 'code': status, 'message': {'description': message}}
    error = {'code': code, 'message': message}
    if field is not None:
        error['field'] = field
    return {'error': error}
