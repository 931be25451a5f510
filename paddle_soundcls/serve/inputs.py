"""Reading one request that carries audio, in every form the audio endpoints take, with its
parameters checked by the one rule of params.gather:

    raw bytes        Content-Type audio/*; or application/octet-stream or none at all, when the
                     bytes start as an audio file does (decode.sniff_format)
    multipart        a field "file", and parameters as other fields
    JSON             {"inputs": base64, "parameters": {...}} (Hugging Face's inference convention)

plus parameters in the query string, whatever the form.
"""
import json
import time

from starlette.datastructures import UploadFile

from . import params
from .decode import FORMATS, base64_steps, sniff_format
from .settings import ApiError

# A JSON body holds one base64 string and a few parameters: more items than this (commas, [ and {)
# is not a request of ours, and parsing it would cost memory out of proportion to its bytes.
MAX_JSON_ITEMS = 1000
RAW_TYPES = ('application/octet-stream', '')   # besides audio/*: the bytes tell what they are
JSON_FIELDS = ('inputs', 'parameters')
SEND_HINT = ('send the audio file as raw bytes (`Content-Type: audio/wav`, audio/flac, ... or '
             'application/octet-stream), as multipart/form-data with a field "file", or as application/json '
             '{"inputs": base64, "parameters": {...}}')


def check_json_size(body):
    """ApiError(400) for a body with more JSON items than a request of ours has, before it is parsed."""
    items = body.count(b',') + body.count(b'[') + body.count(b'{')
    if items > MAX_JSON_ITEMS:
        raise ApiError(400, 'invalid_json', f'the JSON body holds {items} items (commas, arrays, objects); a request '
                                            f'holds one base64 string and a few parameters, at most {MAX_JSON_ITEMS}',
                       None)


async def parse_json(work, body, flow, deadline):
    """The JSON of a body, parsed in the engine thread (a large body takes a while); ValueError
    when it is not JSON (too deeply nested, too many items, numbers of too many digits included)."""
    check_json_size(body)

    def parse():
        try:
            return json.loads(body, object_pairs_hook=params.object_without_duplicates)
        except params.DuplicateKey as exc:
            raise ApiError(400, 'duplicate_parameter', str(exc), exc.key) from None
        except RecursionError:
            raise ValueError('nested too deeply') from None
    return await work.step(parse, flow, max(0.0, deadline - time.monotonic()))


async def read_audio_request(request, work, accepted, flow, deadline):
    """(audio bytes, the field they came in, {parameter: (value, field)}) of one request.

    accepted: the names of the parameters the endpoint takes.
    """
    query = list(request.query_params.multi_items())
    params.gather([('the query string', '', query)], accepted)   # before the body is looked at
    content_type = request.headers.get('content-type', '')
    media = content_type.split(';')[0].strip().lower()
    if media == 'multipart/form-data':   # parsed as it is streamed, not joined first
        data, field, fields = await read_multipart(request)
        sources = [('the form fields', '', fields)]
    elif media == 'application/json' or media.endswith('+json'):
        text, parameters = await read_json(request, work, flow, deadline)
        sources = [('"parameters"', params.JSON_PREFIX, parameters)]
        found = params.gather([('the query string', '', query)] + sources, accepted)
        data = await work.steps(base64_steps(text, 'inputs'), flow, deadline)
        return data, 'inputs', found
    elif media.startswith('audio/'):
        data, field, sources = await request.body(), 'body', []
    elif media in RAW_TYPES:
        data, field, sources = await request.body(), 'body', []
        if data and sniff_format(data) is None:
            raise ApiError(415, 'unsupported_media_type',
                           f'the body was sent {"as " + media if media else "without a Content-Type"} and does not '
                           f'start as a {FORMATS} file does: {SEND_HINT}')
    else:
        raise ApiError(415, 'unsupported_media_type', f'Content-Type {content_type!r} is not accepted: {SEND_HINT}')
    return data, field, params.gather([('the query string', '', query)] + sources, accepted)


async def read_multipart(request):
    """(bytes of the "file" field, 'file', [(name, value)] of the other fields)."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # Starlette's parser raises its own types for malformed bodies
        detail = getattr(exc, 'detail', None) or str(exc) or type(exc).__name__
        raise ApiError(400, 'bad_multipart', f'the multipart body could not be parsed ({detail}): send one '
                                             f'file in a field named "file", e.g. curl -F file=@clip.wav')
    try:
        upload = form.get('file')
        if not isinstance(upload, UploadFile):
            raise ApiError(400, 'missing_field', 'the multipart body has no file in a field named "file": send '
                                                 'e.g. curl -F file=@clip.wav', 'file')
        fields = [(name, value) for name, value in form.multi_items() if name != 'file']
        for name, value in fields:
            if isinstance(value, UploadFile):
                raise ApiError(400, 'unknown_parameter', f'the multipart body holds a file in field {name!r}; '
                                                         f'send the audio in the field "file"', name)
        return await upload.read(), 'file', fields
    finally:
        await form.close()


async def read_json(request, work, flow, deadline):
    """(the base64 text of "inputs", [(name, value)] of "parameters") of a JSON body."""
    try:
        payload = await parse_json(work, await request.body(), flow, deadline)
    except ValueError as exc:
        raise ApiError(400, 'invalid_json', f'the body is not valid JSON ({exc}): send '
                                            f'{{"inputs": base64, "parameters": {{"top_k": 5}}}}')
    if not isinstance(payload, dict) or 'inputs' not in payload:
        raise ApiError(400, 'missing_field', 'the JSON body needs "inputs": the base64 of an audio file', 'inputs')
    unknown = sorted(set(payload) - set(JSON_FIELDS))
    if unknown:
        raise ApiError(400, 'unknown_parameter', f'unknown field {unknown[0]!r} in the JSON body; it takes '
                                                 f'{list(JSON_FIELDS)} (parameters go in "parameters")', unknown[0])
    parameters = payload.get('parameters')
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise ApiError(400, 'invalid_parameter', f'parameters must be a JSON object such as {{"top_k": 5}}, got '
                                                 f'{json.dumps(parameters)[:100]}', 'parameters')
    return payload['inputs'], list(parameters.items())
