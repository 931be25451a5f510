"""paddle.save files (.pdparams parameters, .pdopt optimizer state) read without running code in them."""
import os
import pickle

import numpy as np

from ..errors import CheckpointError, UnsafeCheckpointError

# Every global a .pdparams pickle may name: numpy arrays in plain dicts. paddle.load would
# unpickle anything, and unpickling can call any function the file names (a downloaded
# "checkpoint" could run a command); these can only build arrays.
_SAFE_GLOBALS = {(module, name) for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
                 for name in ('_reconstruct', 'scalar')}
_SAFE_GLOBALS |= {('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
                  ('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict'),
                  ('_codecs', 'encode')}  # how protocol 2 stores bytes
# Keys paddle.save adds beside the parameters.
_NAME_TABLE = 'StructuredToParameterName@@'
_BIG_PARAMS = 'UnpackBigParamInfor@@'  # parameters over 1 GB, saved in slices


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding='latin1')  # latin1: numpy arrays pickled by Python 2
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafeCheckpointError(
                f'{self.path}: refused. Its pickle asks for {module}.{name}, which a file of parameters does not '
                f'need; loading it could run code from it. Only use checkpoints from sources you trust.')
        return super().find_class(module, name)


def load_state(path):
    """Read a file written by paddle.save (parameters, optimizer state) without running any code in it.

    Returns the saved dict, numpy arrays in place of tensors, paddle.save's name table
    left out. Only arrays, numbers, strings and plain containers are rebuilt: a file that
    names anything else is refused (UnsafeCheckpointError) before any of it runs.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint file not found: {path}')
    try:
        with open(path, 'rb') as f:
            state = _ArrayUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways; all mean the same to the user
        raise CheckpointError(f'cannot read checkpoint {path}: {type(exc).__name__}: {exc}. The file is damaged, '
                              f'or not a checkpoint (a Paddle .pdparams or a PyTorch .pt/.pth file).') from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} does not hold a state dict (found {type(state).__name__})')
    state = dict(state)
    state.pop(_NAME_TABLE, None)
    big = state.pop(_BIG_PARAMS, None) or {}
    try:
        for key, info in big.items():
            state[key] = np.concatenate([state.pop(part) for part in info['slices']]).reshape(info['OriginShape'])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f'{path}: a parameter saved in slices cannot be rebuilt ({exc}); the file is '
                              f'damaged') from None
    return state


def load_params(path):
    """Read a .pdparams file (a pickle of numpy arrays, as paddle.save writes) as {name: numpy array}.

    Read safely, as by load_state.
    """
    state = load_state(path)
    not_arrays = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        raise CheckpointError(f'{path} does not hold a state dict of arrays; entries that are not arrays: '
                              f'{not_arrays[:5]}')
    return state
