"""Plain ASGI middleware that guards every HTTP request before an endpoint runs.

AllowedHosts: refuses a request (HTTP or WebSocket) whose Host header is not one of the
server's names (421), so a web page of another site cannot reach a server on this machine by
pointing its own name at 127.0.0.1 (DNS rebinding).
RequireApiKey: refuses every path but the open ones (settings.OPEN_PATHS) without the key, before any body is read.
RequestLimits: refuses oversized headers (431), then reads the whole body first, within the
size limit and the request timeout, so a slow or oversized upload is answered (408 / 413)
without reaching an endpoint, and endpoints (including form parsing) only ever see a complete
body. It then watches the connection: a client that hangs up cancels its request, and with it
the request's work still waiting in the engine queue.
"""
import asyncio
import collections
import contextlib
import json
import time

from .settings import error_body, host_allowed, key_from_headers, key_matches, needs_api_key

DEADLINE_KEY = 'paddle_soundcls.deadline'   # scope key: time.monotonic() by which to answer
# uvicorn's parser limits only headers that arrive in pieces; headers that arrive at once are
# not limited there. 32 KiB is more than any browser or HTTP client sends.
MAX_HEADER_BYTES = 32 * 1024
REPLAY_BYTES = 1 << 20


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


class AllowedHosts:
    def __init__(self, app, settings):
        self.app = app
        self.allowed = settings.allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope['type'] not in ('http', 'websocket'):
            return await self.app(scope, receive, send)
        host = header_map(scope).get('host', '')
        if host_allowed(self.allowed, host):
            return await self.app(scope, receive, send)
        if scope['type'] == 'websocket':   # refused before the handshake is answered: HTTP 403
            await receive()
            return await send({'type': 'websocket.close', 'code': 1008, 'reason': 'host not allowed'})
        shown = host if len(host) <= 100 else host[:100] + '...'
        body = error_body(scope['path'], 421, 'host_not_allowed',
                          f'this server answers requests for {", ".join(self.allowed)}, not for Host {shown!r} '
                          f'(--allowed-hosts): use one of those names in the URL')
        await send_json(send, 421, body, close=True)


class RequireApiKey:
    def __init__(self, app, settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if (scope['type'] != 'http' or self.settings.api_key is None or scope.get('method') == 'OPTIONS'
                or not needs_api_key(scope['path'])):
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
            chunks = await asyncio.wait_for(self._read(receive), self.timeout)
        except BodyTooLarge:
            return await send_json(send, 413, self._too_large(path), close=True)
        except asyncio.TimeoutError:
            body = error_body(path, 408, 'body_timeout',
                              f'the request body did not arrive within {self.timeout:g} s (--timeout): send the '
                              f'whole body at once, or check the connection')
            return await send_json(send, 408, body, close=True)
        except ClientGone:
            return  # nobody to answer

        await self._run_until_disconnect(scope, chunks, receive, send)

    async def _run_until_disconnect(self, scope, chunks, receive, send):
        """Runs the app on the complete body while watching the connection: when the client goes
        away first, the request is cancelled, so its queued work is dropped instead of run."""
        gone = asyncio.Event()
        pending = collections.deque(chunks)

        async def replay():
            # The body in pieces of about REPLAY_BYTES: a parser (multipart) then works through it
            # a piece at a time, letting other requests run in between.
            if pending:
                piece = [pending.popleft()]
                size = len(piece[0])
                while pending and size + len(pending[0]) <= REPLAY_BYTES:
                    size += len(pending[0])
                    piece.append(pending.popleft())
                return {'type': 'http.request', 'body': b''.join(piece), 'more_body': bool(pending)}
            await gone.wait()   # after the body: only the disconnect remains
            return {'type': 'http.disconnect'}

        async def watch():
            while (await receive())['type'] != 'http.disconnect':
                pass
            gone.set()

        app = asyncio.ensure_future(self.app(scope, replay, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not app.done():   # the client left (or this request was cancelled): nobody to answer
                app.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(asyncio.CancelledError):
                await app
        if not app.cancelled():
            app.result()   # the app's own exception, for the server's error handler

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
                return chunks

    def _too_large(self, path, declared=None):
        size = f' ({declared} bytes)' if declared is not None else ''
        return error_body(path, 413, 'body_too_large',
                          f'the request body{size} is larger than the {self.max_bytes} bytes this server accepts '
                          f'(--max-body-mb): send a shorter clip, or a compressed one (FLAC, OGG)')
