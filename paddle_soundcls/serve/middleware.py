"""Plain ASGI middleware that guards every HTTP request before an endpoint runs.

RequireApiKey: refuses /v1/* and /paddlespeech/* without the key, before any body is read.
RequestLimits: refuses oversized headers (431), then reads the whole body first, within the
size limit and the request timeout, so a slow or oversized upload is answered (408 / 413)
without reaching an endpoint, and endpoints (including form parsing) only ever see a complete
body.
"""
import asyncio
import json
import time

from .settings import PROTECTED_PREFIXES, error_body, key_from_headers, key_matches

DEADLINE_KEY = 'paddle_soundcls.deadline'   # scope key: time.monotonic() by which to answer
# uvicorn's parser limits only headers that arrive in pieces; headers that arrive at once are
# not limited there. 32 KiB is more than any browser or HTTP client sends.
MAX_HEADER_BYTES = 32 * 1024


def header_map(scope):
    return {name.decode('latin-1').lower(): value.decode('latin-1') for name, value in scope.get('headers', [])}


async def send_json(send, status, body, headers=None, close=False):
    payload = json.dumps(body).encode('utf-8')
    raw = [(b'content-type', b'application/json'), (b'content-length', str(len(payload)).encode())]
    raw += [(name.lower().encode('latin-1'), str(value).encode('latin-1')) for name, value in (headers or {}).items()]
    if close:  # the rest of the body is not read, so the connection cannot serve another request
        raw.append((b'connection', b'close'))
    await send({'type': 'http.response.start', 'status': status, 'headers': raw})
    await send({'type': 'http.response.body', 'body': payload})


class RequireApiKey:
    def __init__(self, app, settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if (scope['type'] != 'http' or self.settings.api_key is None or scope.get('method') == 'OPTIONS'
                or not scope['path'].startswith(PROTECTED_PREFIXES)):
            return await self.app(scope, receive, send)
        presented = key_from_headers(header_map(scope))
        if key_matches(self.settings, presented):
            return await self.app(scope, receive, send)
        what = 'a wrong API key' if presented else 'no API key'
        body = error_body(scope['path'], 401, 'unauthorized',
                          f'this server needs an API key and the request has {what}: send the header '
                          f'`Authorization: Bearer KEY` or `X-API-Key: KEY`')
        await send_json(send, 401, body, {'WWW-Authenticate': 'Bearer'}, close=True)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class RequestLimits:
    def __init__(self, app, settings):
        self.app = app
        self.max_bytes = settings.max_body_bytes
        self.timeout = settings.timeout

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        scope[DEADLINE_KEY] = time.monotonic() + self.timeout
        path = scope['path']
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope.get('headers', []))
        if header_bytes > MAX_HEADER_BYTES:
            body = error_body(path, 431, 'headers_too_large',
                              f'the request headers take {header_bytes} bytes; this server accepts at most '
                              f'{MAX_HEADER_BYTES}: send fewer or shorter headers')
            return await send_json(send, 431, body, close=True)
        declared = header_map(scope).get('content-length')
        if declared is not None:
            if not declared.strip().isdigit():
                body = error_body(path, 400, 'bad_content_length',
                                  f'Content-Length is {declared!r}, not a number of bytes')
                return await send_json(send, 400, body, close=True)
            if int(declared) > self.max_bytes:
                return await send_json(send, 413, self._too_large(path, int(declared)), close=True)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except BodyTooLarge:
            return await send_json(send, 413, self._too_large(path), close=True)
        except asyncio.TimeoutError:
            body = error_body(path, 408, 'body_timeout',
                              f'the request body did not arrive within {self.timeout:g} s (--timeout): send the '
                              f'whole body at once, or check the connection')
            return await send_json(send, 408, body, close=True)
        except ClientGone:
            return  # nobody to answer

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {'type': 'http.request', 'body': body, 'more_body': False}
            return await receive()  # after the body: only the disconnect remains

        await self.app(scope, replay, send)

    async def _read(self, receive):
        chunks, size = [], 0
        while True:
            message = await receive()
            if message['type'] == 'http.disconnect':
                raise ClientGone()
            chunk = message.get('body', b'')
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get('more_body', False):
                return b''.join(chunks)

    def _too_large(self, path, declared=None):
        size = f' ({declared} bytes)' if declared is not None else ''
        return error_body(path, 413, 'body_too_large',
                          f'the request body{size} is larger than the {self.max_bytes} bytes this server accepts '
                          f'(--max-body-mb): send a shorter clip, or a compressed one (FLAC, OGG)')
