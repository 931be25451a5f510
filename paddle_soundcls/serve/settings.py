"""The server's settings and its JSON errors. No web framework imported here, so the command
line can build its parser without the `serve` extra installed."""
import hmac
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

MiB = 1 << 20
API_KEY_ENV = 'PADDLE_SOUNDCLS_API_KEY'
# Paths that need the API key when one is set. The page, its files, /healthz (probed by load
# balancers) and the OpenAPI docs stay open: they reveal nothing and run no model.
PROTECTED_PREFIXES = ('/v1/', '/paddlespeech/')
PADDLESPEECH_PREFIX = '/paddlespeech/'
# One WebSocket message of PCM; 1 MiB is 16 s of 16-kHz int16, far more than a chunk needs.
MAX_STREAM_MESSAGE_BYTES = MiB


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of one server process; each value checked on creation.

    max_batch: most clips per engine call; max_wait_ms: how long the first clip of a batch
    waits for others; max_queue: clips waiting for the engine before new requests get 503;
    max_body_bytes / max_audio_seconds: per request; timeout: seconds for a request from its
    first byte to its answer (and for a stream between two messages); default_top_k: labels
    answered when a request names no top_k; api_key: None for an open server; cors_origins:
    origins allowed to call from a browser page of another site (none by default).
    """
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_bytes: int = 25 * MiB
    max_audio_seconds: float = 60.0
    timeout: float = 30.0
    default_top_k: int = 5
    api_key: Optional[str] = field(default=None, repr=False)
    cors_origins: Tuple[str, ...] = ()

    def __post_init__(self):
        for name in ('max_batch', 'max_queue', 'max_body_bytes', 'default_top_k'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        for name, low in (('max_wait_ms', 0.0), ('max_audio_seconds', None), ('timeout', None)):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            if bad or (value < low if low is not None else value <= 0):
                kind = 'a number >= 0' if low is not None else 'a positive number'
                raise ValueError(f'{name} must be {kind}, got {value!r}')
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError('api_key must be a non-empty string, or None for a server without a key')
        object.__setattr__(self, 'cors_origins', tuple(self.cors_origins))

    def to_dict(self):
        return asdict(self)


def key_matches(settings, presented):
    """True when no key is set, or `presented` is the key (compared in constant time)."""
    if settings.api_key is None:
        return True
    if not presented:
        return False
    return hmac.compare_digest(presented.encode('utf-8'), settings.api_key.encode('utf-8'))


def key_from_headers(headers):
    """The key a client presents: `X-API-Key: KEY` or `Authorization: Bearer KEY`.

    headers: a mapping with lower-case names (Starlette's Headers, or a dict).
    """
    key = headers.get('x-api-key')
    if key:
        return key.strip()
    scheme, _, value = (headers.get('authorization') or '').partition(' ')
    return value.strip() if scheme.lower() == 'bearer' else None


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
