"""Deprecated: `paddle_soundcls.hub` is now `paddle_soundcls.module`.

Import Module and load_module from `paddle_soundcls` (or `paddle_soundcls.module`). This name is
that module itself, not a copy of its names, so code that reads or patches hub's attributes
keeps working until it moves.
"""
import sys
import warnings

from . import module

warnings.warn('paddle_soundcls.hub is deprecated; import Module and load_module from paddle_soundcls '
              '(paddle_soundcls.module)', DeprecationWarning, stacklevel=2)
sys.modules[__name__] = module
