"""Checkpoint files: reading the layouts users bring, writing ours atomically.

Our layout (also PaddleSpeech's `SoundClassifier`): `backbone.*` for the PANNs trunk and
`fc.*` for the classification head, in `model.pdparams`, with `meta.json` beside it
holding what is needed to rebuild the Module (model name, task, labels, front end).
"""
import ctypes
import errno
import json
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile

import numpy as np

META_FILE = 'meta.json'
PARAMS_FILE = 'model.pdparams'
FORMAT = 'paddle_soundcls/1'


def _default_mode(base):
    """`base` less the process umask: what open()/mkdir() would have given (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


def temp_prefix(name):
    """Prefix of the temporary file or folder that becomes `name`: `.name~pid@host~`.

    It says which process made it, so one left behind by a killed process can be told from
    one that another process is still writing (see remove_stale).
    """
    return f'.{name}~{os.getpid()}@{socket.gethostname()}~'


_OWNER = re.compile(r'^\..+~(\d+)@([^~]+)~[^~]*$')  # what temp_prefix + mkstemp/mkdtemp make
_cleaned = set()  # folders this process has cleaned


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, under another user
        return True
    return True


def remove_stale(parent, once=False):
    """Delete the temporary files and folders in `parent` left by processes of this host that have died.

    A process killed while writing (SIGKILL, power loss) cannot clean up after itself, and a
    weights file or checkpoint can be hundreds of MB; the next writer into the folder does it.
    once: only the first time this process writes there (for writers of many small files).
    """
    parent = os.path.abspath(parent)
    if once and parent in _cleaned:
        return
    _cleaned.add(parent)
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        match = _OWNER.match(entry)
        if not match or match.group(2) != host or _alive(int(match.group(1))):
            continue
        path = os.path.join(parent, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:  # another process removed it first
                pass


def atomic_write(path, write):
    """Call write(tmp_path), then move tmp_path over `path` in one step."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale(directory, once=True)  # atomic_write may write thousands of files to one folder
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(os.path.basename(path)), suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode(0o666))
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, data):
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
    atomic_write(path, write)


def _exchange(a, b):
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not supported."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such libc function (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), b)


def replace_dir(build, target):
    """Build a directory with build(tmp_dir), then swap it in for `target`.

    On Linux the two are exchanged in one step, so `target` is at every moment the complete
    old or the complete new directory. Elsewhere the old directory is kept as `target.old`
    until the new one is in place, so a crash at any moment leaves a complete directory at
    `target` or at `target.old` (see recover_dir).
    """
    target = os.fspath(target)
    parent = os.path.dirname(os.path.abspath(target)) or '.'
    name = os.path.basename(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent)
    recover_dir(target)  # a crash left only target.old: it is the current copy, never to be deleted first
    tmp = tempfile.mkdtemp(dir=parent, prefix=temp_prefix(name), suffix='.tmp')
    try:
        os.chmod(tmp, _default_mode(0o777))
        build(tmp)
        if os.path.isdir(target) and not os.path.islink(target) and _exchange(tmp, target):
            return  # tmp now holds the old directory: removed below
        old = target + '.old'
        if os.path.exists(old):
            shutil.rmtree(old)
        if os.path.exists(target):
            os.replace(target, old)
        os.replace(tmp, target)
        if os.path.exists(old):
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def recover_dir(target):
    """Put back `target.old` if a crash left it without `target`; return whether `target` exists."""
    old = target + '.old'
    if not os.path.exists(target) and os.path.exists(old):
        os.replace(old, target)
    return os.path.exists(target)


def read_meta(directory):
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f'cannot read {path}: {exc}. The checkpoint directory is damaged; use another one '
                              f'(an earlier epoch_N) or save the model again') from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        found = meta.get('format') if isinstance(meta, dict) else None
        raise CheckpointError(f'{path} is not a paddle_soundcls checkpoint (format {found!r})')
    missing = [key for key in ('model', 'task', 'labels', 'frontend') if key not in meta]
    if missing:
        raise CheckpointError(f'{path} lacks {missing}; the checkpoint directory is damaged: use another one '
                              f'or save the model again')
    return meta


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


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for something other than arrays and plain containers."""


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
        raise CheckpointError(f'cannot read checkpoint {path}: {type(exc).__name__}: {exc}. The file is damaged '
                              f'or not a Paddle .pdparams file.') from None
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


def resolve(load_checkpoint):
    """A file or a directory -> (params path, meta or None)."""
    path = os.fspath(load_checkpoint)
    if not os.path.exists(path) and os.path.isdir(path + '.old'):
        # Left by a crash between the two renames of replace_dir (where there is no atomic exchange).
        path += '.old'
    if os.path.isdir(path):
        params = os.path.join(path, PARAMS_FILE)
        if not os.path.isfile(params):
            raise CheckpointError(f'{path} holds no {PARAMS_FILE}; pass a checkpoint directory written by the '
                                  f'Trainer (e.g. ckpt/best_model) or a .pdparams file')
        return params, read_meta(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'load_checkpoint: no such file or directory: {path}')
    return path, read_meta(os.path.dirname(path))


_HUB_PREFIXES = ('cnn14.', 'cnn10.', 'cnn6.')


def to_module_layout(state, source):
    """Rename the keys of any supported layout to ours (`backbone.*`, `fc.*`).

    - official backbone + tagging checkpoints: `bn0.*`, `conv_block*`, `fc1.*`, `fc_audioset.*`
    - ours and PaddleSpeech's SoundClassifier: `backbone.*`, `fc.*`
    - PaddleHub's fine-tuned modules: `cnn14.*` (or cnn10/cnn6), `fc.*`
    """
    out = {}
    for key, value in state.items():
        if key.startswith('backbone.') or key.startswith('fc.'):
            new = key
        elif key.startswith(_HUB_PREFIXES):
            new = 'backbone.' + key.split('.', 1)[1]
        elif key.startswith(('bn0.', 'conv_block', 'fc1.', 'fc_audioset.')):
            new = 'backbone.' + key
        else:
            raise CheckpointError(f'{source}: unrecognised parameter {key!r}; expected the official PANNs names '
                                  f'(bn0.*, conv_block*, fc1.*, fc_audioset.*) or backbone.*/fc.* or cnn14.*/fc.*')
        out[new] = value
    return out
