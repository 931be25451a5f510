"""The argument checks: booleans, NaN and infinities refused, bounds kept, every message naming
the argument, what is allowed and what was given."""
import math
import warnings

import numpy as np
import pytest

from paddle_soundcls import validate
from paddle_soundcls.errors import ArgumentError, DatasetError, SoundClsError


@pytest.mark.parametrize('check', [validate.positive_int, validate.non_negative_int, validate.positive_number,
                                   validate.non_negative_number, validate.probability])
@pytest.mark.parametrize('value', [True, False, np.bool_(True)])
def test_booleans_are_not_numbers(check, value):
    with pytest.raises(ArgumentError, match=r"^my_arg must be .*, got (np\.)?(True|False)"):
        check('my_arg', value)


@pytest.mark.parametrize('check', [validate.positive_number, validate.non_negative_number, validate.probability])
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf, np.float32('nan')])
def test_nan_and_infinity_are_refused(check, value):
    with pytest.raises(ArgumentError, match='my_arg must be'):
        check('my_arg', value)
    with pytest.raises(ArgumentError, match='offset must be a finite number of seconds'):
        validate.number('offset', value, unit='seconds')


def test_ints():
    assert validate.positive_int('n', np.int64(3)) == 3 and type(validate.positive_int('n', np.int64(3))) is int
    assert validate.non_negative_int('n', 0) == 0
    assert validate.integer('opset', 23, 7, 23) == 23
    for value, words in ((0, 'a positive int'), (2.0, 'a positive int'), ('3', 'a positive int')):
        with pytest.raises(ArgumentError, match=f'^batch_size must be {words}, got {value!r}$'):
            validate.positive_int('batch_size', value)
    with pytest.raises(ArgumentError, match='^opset must be an int from 7 to 23, got 24$'):
        validate.integer('opset', 24, 7, 23)
    with pytest.raises(ArgumentError, match=r'^n must be an int >= 0, got -1$'):
        validate.non_negative_int('n', -1)


def test_none_hint_and_error_class():
    assert validate.positive_int('keep_last', None, allow_none=True) is None
    with pytest.raises(ArgumentError, match=r'^keep_last must be a positive int or None \(kept epochs\), got 0$'):
        validate.positive_int('keep_last', 0, allow_none=True, hint='kept epochs')
    with pytest.raises(ArgumentError, match='got None'):
        validate.positive_int('keep_last', None)
    with pytest.raises(DatasetError, match='seed') as info:
        validate.integer('seed', -1, 0, error=DatasetError)
    assert isinstance(info.value, SoundClsError) and isinstance(info.value, ValueError)


def test_numbers_and_bounds():
    assert validate.positive_number('window', 2) == 2.0 and type(validate.positive_number('window', 2)) is float
    assert validate.non_negative_number('collar', 0) == 0.0
    assert validate.probability('p', 1) == 1.0 and validate.probability('p', 0.0) == 0.0
    with pytest.raises(ArgumentError, match=r'^window must be a positive number of seconds, got 0$'):
        validate.positive_number('window', 0, unit='seconds')
    with pytest.raises(ArgumentError, match=r'^collar must be a number >= 0, got -0.1$'):
        validate.non_negative_number('collar', -0.1)
    with pytest.raises(ArgumentError, match=r'^p must be a number in \[0, 1\], got 1.5$'):
        validate.probability('p', 1.5)
    # Open bounds exclude their end.
    with pytest.raises(ArgumentError, match=r'^t must be a number in \(0, 1\], got 0$'):
        validate.number_in('t', 0, 0, 1, low_open=True)
    assert validate.number_in('t', 1, 0, 1, low_open=True) == 1.0
    with pytest.raises(ArgumentError, match=r'\[0, 4\)'):
        validate.number_in('offset', 4, 0, 4, high_open=True)
    with pytest.raises(ArgumentError, match='got \'1\''):
        validate.number('x', '1')


def test_flag_and_one_of():
    assert validate.flag('cache', np.bool_(False)) is False
    assert validate.flag('multi_label', None, allow_none=True) is None
    for value in (1, 0, 'yes', None):
        with pytest.raises(ArgumentError, match=f'^cache must be True or False, got {value!r}$'):
            validate.flag('cache', value)
    with pytest.raises(ArgumentError, match='multi_label must be True, False or None, got 1'):
        validate.flag('multi_label', 1, allow_none=True)
    assert validate.one_of('reduce', 'max', ('mean', 'max')) == 'max'
    with pytest.raises(ArgumentError, match=r"^reduce must be 'mean' or 'max', got 'median'$"):
        validate.one_of('reduce', 'median', ('mean', 'max'))
    with pytest.raises(ArgumentError, match=r"^engine must be one of 'a', 'b', 'c', got \['a'\]$"):
        validate.one_of('engine', ['a'], ('a', 'b', 'c'))
    with pytest.raises(ArgumentError, match='fold'):   # True == 1, but True is not fold 1
        validate.one_of('split', True, [1, 2, 3], hint='the dev fold')
    with pytest.raises(ArgumentError, match='got {}'):   # unhashable against a set of choices
        validate.one_of('engine', {}, {'a', 'b', 'c'})


def test_sample_rate():
    assert validate.sample_rate('sample_rate', np.int32(16000)) == 16000
    with pytest.raises(ArgumentError, match=r'^sample_rate must be a positive int \(Hz\), got 16000.0$'):
        validate.sample_rate('sample_rate', 16000.0)
    with pytest.raises(ArgumentError, match=r'^sample_rate is 10 Hz, outside the 1000-768000 Hz of audio$'):
        validate.sample_rate('sample_rate', 10)
    with pytest.raises(ArgumentError, match='got True'):
        validate.sample_rate('sample_rate', True)


def test_renamed_warns_once_and_refuses_both():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert validate.renamed('topk', None, 'top_k', 3) == 3   # the new name: no warning
    with pytest.warns(DeprecationWarning, match='topk is deprecated: use top_k'):
        assert validate.renamed('topk', 2, 'top_k', None) == 2
    with pytest.raises(ArgumentError, match='give top_k only'):
        validate.renamed('topk', 2, 'top_k', 3)


def test_validate_needs_no_paddle():
    import subprocess
    import sys
    code = 'import sys, paddle_soundcls.validate; assert "paddle" not in sys.modules, "paddle imported"'
    subprocess.run([sys.executable, '-c', code], check=True)
