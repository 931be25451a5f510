"""The argument checks every module uses: ints, numbers of seconds, scores, flags, choices.

Each check returns the value as the plain Python type (int, float, bool) or raises an
ArgumentError (or the error class a caller passes: a dataset's arguments give DatasetError)
that names the argument, says what is allowed and shows what was given. Booleans are refused
where a number is wanted (True is not 1), and so are NaN and infinities.

Plain Python and numpy only: the Paddle-free runtime, the server and the command line use it.
"""
import math
import numbers
import warnings

import numpy as np

from .errors import ArgumentError

# Sample rates outside this range are not audio: in practice a damaged header. Resampling from
# them would also cost time and memory out of all proportion (1 Hz -> 32 kHz is 32000x).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


def is_finite_number(value):
    """A real number that is not a bool, NaN or infinite (an int too large for a float counts as infinite)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _refuse(name, wanted, value, allow_none, hint, error):
    wanted += ' or None' if allow_none else ''
    wanted += f' ({hint})' if hint else ''
    raise error(f'{name} must be {wanted}, got {shown(value)}')


def shown(value, limit=60):
    """repr(value), cut to `limit` characters: a message quotes what it was given, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def _int_words(low, high):
    if low is not None and high is not None:
        return f'an int from {low} to {high}'
    if low == 1:
        return 'a positive int'
    if low is not None:
        return f'an int >= {low}'
    return 'an int' if high is None else f'an int <= {high}'


def integer(name, value, low=None, high=None, *, allow_none=False, hint=None, error=ArgumentError):
    """`value` as an int in [low, high] (either bound may be None); None passes when allow_none."""
    if value is None and allow_none:
        return None
    if (_is_bool(value) or not isinstance(value, numbers.Integral)
            or (low is not None and value < low) or (high is not None and value > high)):
        _refuse(name, _int_words(low, high), value, allow_none, hint, error)
    return int(value)


def positive_int(name, value, *, allow_none=False, hint=None, error=ArgumentError):
    return integer(name, value, 1, allow_none=allow_none, hint=hint, error=error)


def non_negative_int(name, value, *, allow_none=False, hint=None, error=ArgumentError):
    return integer(name, value, 0, allow_none=allow_none, hint=hint, error=error)


def _number_words(low, high, low_open, high_open, unit, noun):
    noun = f'{noun} of {unit}' if unit else noun
    if low is not None and high is not None:
        return f'a {noun} in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    if low == 0:
        return f'a positive {noun}' if low_open else f'a {noun} >= 0'
    if low is not None:
        return f'a {noun} {">" if low_open else ">="} {low:g}'
    if high is not None:
        return f'a {noun} {"<" if high_open else "<="} {high:g}'
    return f'a finite {noun}'


def number(name, value, low=None, high=None, *, low_open=False, high_open=False, unit=None, noun='number',
           allow_none=False, hint=None, error=ArgumentError):
    """`value` as a finite float between the bounds (each may be None; open bounds are excluded);
    `noun` and `unit` name it in the message: 'a score in (0, 1]', 'a number of seconds >= 0'."""
    if value is None and allow_none:
        return None
    ok = is_finite_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        _refuse(name, _number_words(low, high, low_open, high_open, unit, noun), value, allow_none, hint, error)
    return float(value)


def positive_number(name, value, *, unit=None, allow_none=False, hint=None, error=ArgumentError):
    """A finite number > 0, e.g. a window length in seconds."""
    return number(name, value, 0, low_open=True, unit=unit, allow_none=allow_none, hint=hint, error=error)


def non_negative_number(name, value, *, unit=None, allow_none=False, hint=None, error=ArgumentError):
    """A finite number >= 0, e.g. a collar in seconds."""
    return number(name, value, 0, unit=unit, allow_none=allow_none, hint=hint, error=error)


def number_in(name, value, low, high, *, low_open=False, high_open=False, unit=None, noun='number',
              allow_none=False, hint=None, error=ArgumentError):
    """A finite number between low and high (inclusive unless low_open / high_open)."""
    return number(name, value, low, high, low_open=low_open, high_open=high_open, unit=unit, noun=noun,
                  allow_none=allow_none, hint=hint, error=error)


def probability(name, value, *, allow_none=False, hint=None, error=ArgumentError):
    """A score or fraction in [0, 1]."""
    return number(name, value, 0, 1, allow_none=allow_none, hint=hint, error=error)


def flag(name, value, *, allow_none=False, error=ArgumentError):
    """True or False (not 0, 1 or 'yes'); None passes when allow_none."""
    if value is None and allow_none:
        return None
    if not _is_bool(value):
        raise error(f'{name} must be True{", False or None" if allow_none else " or False"}, got {value!r}')
    return bool(value)


def one_of(name, value, choices, *, hint=None, error=ArgumentError):
    """`value` if it is one of `choices` (a bool does not stand for 0 or 1)."""
    choices = tuple(choices)
    try:
        ok = bool(value in choices)
    except (TypeError, ValueError):  # unhashable, or an array (whose == is element-wise): not a choice
        ok = False
    if ok and _is_bool(value):
        ok = any(c is value for c in choices)
    if not ok:
        if len(choices) == 2:
            wanted = f'{choices[0]!r} or {choices[1]!r}'
        else:
            wanted = 'one of ' + ', '.join(repr(c) for c in choices)
        raise error(f'{name} must be {wanted}{f" ({hint})" if hint else ""}, got {value!r}')
    return value


def sample_rate(name, value, *, hint='Hz', error=ArgumentError):
    """A plausible audio sample rate in Hz, as an int."""
    rate = positive_int(name, value, hint=hint, error=error)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise error(f'{name} is {rate} Hz, outside the {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz of audio')
    return rate


def renamed(old_name, old_value, new_name, new_value, stacklevel=3):
    """The value of an argument given under its new name, or under its old one (None: not given)
    with a DeprecationWarning pointing at the caller's caller (the one who wrote the old name;
    a function behind a decorator passes a larger stacklevel to reach past the decorator)."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ArgumentError(f'{old_name} is the old name of {new_name}: give {new_name} only')
    warnings.warn(f'{old_name} is deprecated: use {new_name}', DeprecationWarning, stacklevel=stacklevel)
    return old_value
