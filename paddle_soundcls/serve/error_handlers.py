"""The answers of requests that fail: ApiError (our JSON error, or PaddleSpeech's shape under
/paddlespeech/), Starlette's 404 / 405, and anything unexpected (500, logged)."""
import json
import logging

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .settings import PADDLESPEECH_PREFIX, ApiError, error_body

log = logging.getLogger(__name__)


async def api_error(request, exc):
    if request.url.path.startswith(PADDLESPEECH_PREFIX) and exc.status in (400, 422):
        # PaddleSpeech answers unusable input with HTTP 200, "success": false and its code 400
        # ("Input parameters are not valid"); kept for its clients.
        body = error_body(request.url.path, 400, exc.code, exc.message)
        return JSONResponse(body, status_code=200, headers=exc.headers)
    body = error_body(request.url.path, exc.status, exc.code, exc.message, exc.field)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def http_error(request, exc):
    code = {404: 'not_found', 405: 'method_not_allowed'}.get(exc.status_code, f'http_{exc.status_code}')
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f'no endpoint {request.method} {request.url.path}; the endpoints are listed at /docs'
    body = error_body(request.url.path, exc.status_code, code, message)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, 'headers', None))


async def internal_error(request, exc):
    log.exception('request %s %s failed', request.method, request.url.path)
    # This answer leaves from outside the CORS middleware: its headers are added here.
    origin = request.headers.get('origin')
    allowed = request.app.state.server.settings.cors_origins
    headers = {'Access-Control-Allow-Origin': origin, 'Vary': 'Origin'} if origin in allowed else {}
    body = error_body(request.url.path, 500, 'internal_error',
                      f'the server failed on this request ({type(exc).__name__}); the server log has the details')
    if request.url.path.startswith(PADDLESPEECH_PREFIX):  # PaddleSpeech's own answer to an unknown error
        body = {'success': False, 'code': 509, 'message': {'description': 'Unknown error occurred.'}}
        return JSONResponse(body, status_code=200, headers=headers)
    return JSONResponse(body, status_code=500, headers=headers)


def add_error_handlers(app):
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
