"""The one rule for the parameters of a request, whatever form they come in.

An endpoint names the parameters it takes (`top_k`; `window` and `hop`); a request may give
each of them once: in the query string, as a field of a multipart form, or in the "parameters"
object of a JSON body. The WebSocket's start message follows the same rule for its fields. A
name the endpoint does not take is refused (400 `unknown_parameter`, naming it and listing the
accepted ones) rather than ignored, so a misspelt `topk` or `windw` does not silently give the
defaults. PaddleSpeech's `topk` is its own spelling, on /paddlespeech/cls only.
"""
import re
from dataclasses import dataclass

from .. import validate
from ..errors import ArgumentError
from .settings import ApiError


@dataclass(frozen=True)
class Parameter:
    kind: str    # its OpenAPI type
    text: str    # what it means, for the docs


PARAMETERS = {
    'top_k': Parameter('integer', 'labels to answer, best first (default: the server\'s --top-k), at most the '
                                  'number of labels'),
    'window': Parameter('number', "seconds per window (default: the model's clip length, else 10, at most "
                                  "--max-window-seconds); at least the model's shortest input"),
    'hop': Parameter('number', "seconds between windows (default: half the window); at least the network's frame "
                               'hop, at most the window, window / hop at most --max-overlap'),
}

# What a name that is not taken most likely meant.
HINTS = {
    'topk': 'top_k is the name here; topk is PaddleSpeech\'s spelling, taken on /paddlespeech/cls',
    'k': 'did you mean top_k?',
    'api_key': 'the API key goes in a header (`X-API-Key: KEY` or `Authorization: Bearer KEY`), never in the '
               'request',
}


def unknown_message(name, accepted, where):
    hint = HINTS.get(name) if isinstance(name, str) else None
    if name in ('topk', 'k') and 'top_k' not in accepted:
        hint = "topk is PaddleSpeech's spelling, taken on /paddlespeech/cls" if name == 'topk' else None
    shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:60] + '...'
    return (f'unknown parameter {shown} in {where}; this endpoint takes {sorted(accepted) or "none"}'
            + (f' ({hint})' if hint else ''))


def refuse_unknown(names, accepted, where, prefix=''):
    """ApiError(400 unknown_parameter) for the first of `names` that is not in `accepted`."""
    for name in names:
        if name not in accepted:
            raise ApiError(400, 'unknown_parameter', unknown_message(name, accepted, where), f'{prefix}{name}')


def gather(sources, accepted):
    """{name: (value, field)} of the parameters of one request.

    sources: (where, prefix, [(name, value), ...]) for each form the request used, e.g.
    ('the query string', '', query_params.multi_items()); `prefix` makes the field named in
    errors (`parameters.top_k`). A name not accepted, or given twice, is refused.
    """
    found = {}
    for where, prefix, items in sources:
        for name, value in items:
            refuse_unknown([name], accepted, where, prefix)
            if name in found:
                raise ApiError(400, 'duplicate_parameter', f'{name} is given twice ({found[name][1]} and '
                                                           f'{prefix}{name}): give it once', f'{prefix}{name}')
            found[name] = (value, f'{prefix}{name}')
    return found


class DuplicateKey(ValueError):
    """A JSON object that names one key twice (json.loads would keep the last, silently)."""

    def __init__(self, key):
        super().__init__(f'{key!r} is given twice in one JSON object: give it once')
        self.key = key


def object_without_duplicates(pairs):
    """json.loads' object_pairs_hook: the object, or DuplicateKey for a key given twice."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


JSON_PREFIX = 'parameters.'   # the fields of a JSON body's "parameters" (inputs.read_audio_request)
TEXT_INT = re.compile(r'\+?[0-9]{1,9}')   # ASCII digits only: str.isdigit() is true for '²'
TEXT_NUMBER = re.compile(r'[+]?([0-9]{1,9}(\.[0-9]{0,9})?|\.[0-9]{1,9})')   # decimal seconds, no exponent


def _from_text(field, value):
    """A string from the query string or a form field, where every value is text; in JSON a
    number is a number ("2" is refused there, as in the stream's start message)."""
    return isinstance(value, str) and not field.startswith(JSON_PREFIX)


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + '...'


def top_k(found, default, num_labels):
    """The request's top_k (a positive int; an int-valued string from a query or a form is fine),
    capped at the number of labels; `default` when it gives none."""
    if 'top_k' not in found:
        return min(default, num_labels)
    value, field = found['top_k']
    if _from_text(field, value) and TEXT_INT.fullmatch(value.strip()):
        value = int(value.strip())
    try:
        return min(validate.positive_int(field, value), num_labels)
    except (ArgumentError, TypeError):
        raise ApiError(400, 'invalid_parameter', f'{field} must be a positive int, got {_shown(value)}',
                       field) from None


def seconds(found, name):
    """A number of seconds (None when not given) as a float; strings (query, form) in decimal
    notation. Its range is checked by settings.check_window_hop."""
    if name not in found:
        return None
    value, field = found[name]
    if _from_text(field, value) and TEXT_NUMBER.fullmatch(value.strip()):
        value = float(value.strip())
    try:
        return validate.positive_number(field, value, unit='seconds')
    except (ArgumentError, TypeError, OverflowError):   # OverflowError: an int too large for a float
        raise ApiError(400, 'invalid_parameter', f'{field} must be a positive number of seconds, got '
                                                 f'{_shown(value)}', field) from None
