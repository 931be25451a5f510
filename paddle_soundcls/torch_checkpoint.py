"""Read PyTorch checkpoints (`torch.save`, zip format) as numpy arrays, without PyTorch.

A zip-format checkpoint holds `<top>/data.pkl`, a pickle of the saved object whose tensors
point at raw storages kept as `<top>/data/<key>` entries (`<top>` is the file's stem or
`archive`, depending on the PyTorch version). The pickle is read with an unpickler that
knows only the handful of globals needed to rebuild tensors and plain containers, so a
file that tries to call anything else is refused before any of its code can run.
"""
import collections
import pickle
import sys
import zipfile

import numpy as np

from .checkpoint import CheckpointError

# Storage type name (as pickled: `torch.FloatStorage`, ...) -> numpy dtype of one element.
# bfloat16 has no numpy dtype: its 16-bit words are widened to float32 when the tensor is built.
_STORAGE_DTYPES = {
    'FloatStorage': np.dtype('float32'),
    'DoubleStorage': np.dtype('float64'),
    'HalfStorage': np.dtype('float16'),
    'BFloat16Storage': np.dtype('uint16'),
    'LongStorage': np.dtype('int64'),
    'IntStorage': np.dtype('int32'),
    'ShortStorage': np.dtype('int16'),
    'CharStorage': np.dtype('int8'),
    'ByteStorage': np.dtype('uint8'),
    'BoolStorage': np.dtype('bool'),
}

# The first bytes of a legacy (PyTorch < 1.6) checkpoint: pickle protocol 2, then the
# long integer 0x1950a86a20f9469cfc6c that PyTorch writes as a magic number.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'
_ZIP_MAGIC = b'PK\x03\x04'


class TorchCheckpointError(CheckpointError):
    """A file that is not a readable zip-format PyTorch checkpoint."""


class UnsafeCheckpointError(TorchCheckpointError):
    """A checkpoint whose pickle asks for something other than tensors and plain containers."""


class _StorageType:
    """Stands for `torch.<Name>Storage` in the pickle; only its dtype is used."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """One storage of the file: a flat numpy array of its elements."""

    def __init__(self, data, bfloat16):
        self.data = data
        self.bfloat16 = bfloat16


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """`torch._utils._rebuild_tensor_v2`: a tensor's elements from its storage, as a C-ordered array.

    unused: requires_grad, backward hooks and metadata, which mean nothing for a numpy array.
    """
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f'tensor data is a {type(storage).__name__}, not a storage')
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise TorchCheckpointError(f'bad tensor layout: size {size}, stride {stride}, offset {offset}')
    data = storage.data
    if 0 in size:
        out = np.empty(size, dtype=data.dtype)
    else:
        # The last element addressed must lie inside the storage: as_strided does not check.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise TorchCheckpointError(f'tensor of size {size}, stride {stride}, offset {offset} reaches past '
                                       f'the end of its storage ({data.size} elements)')
        itemsize = data.dtype.itemsize
        out = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * itemsize for s in stride])
        # A C-contiguous tensor (the usual case) stays a view of its storage; others get their own copy.
        if not out.flags['C_CONTIGUOUS']:
            out = np.array(out, order='C')
    if storage.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_parameter(data, *unused):
    """`torch._utils._rebuild_parameter[_with_state]`: a Parameter is just its tensor here."""
    return data


# Every global the pickle may name. Anything else is refused: unpickling calls it.
_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}
_SAFE_GLOBALS.update({('torch', name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl`, rebuilding tensors from the zip's storages and nothing else."""

    def __init__(self, file, zf, prefix, byteorder, path):
        super().__init__(file)
        self.zf, self.prefix, self.byteorder, self.path = zf, prefix, byteorder, path
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f'{self.path}: refused. Its pickle asks for {module}.{name}, which is not needed for tensors '
                f'and plain containers; loading the file could run code from it. Only load checkpoints '
                f'from sources you trust, and then through PyTorch itself.') from None

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise TorchCheckpointError(f'{self.path}: unexpected persistent id {pid!r} in data.pkl')
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            name = f'{self.prefix}data/{key}'
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                raise TorchCheckpointError(f'{self.path}: storage {name} is missing; the file is damaged') from None
            dtype = storage_type.dtype
            if info.file_size != numel * dtype.itemsize:
                raise TorchCheckpointError(f'{self.path}: storage {name} holds {info.file_size} bytes, expected '
                                           f'{numel} x {dtype.itemsize}; the file is damaged')
            # Read straight into the array: a checkpoint can be hundreds of MB, so no extra copy.
            data = np.empty(numel, dtype=dtype)
            with self.zf.open(info) as f:
                if f.readinto(memoryview(data.view(np.uint8))) != info.file_size:
                    raise TorchCheckpointError(f'{self.path}: storage {name} is truncated')
            if self.byteorder != sys.byteorder and dtype.itemsize > 1:
                data.byteswap(inplace=True)
            self.storages[key] = _Storage(data, storage_type.name == 'BFloat16Storage')
        return self.storages[key]


def _top_folder(zf, path):
    """The folder inside the zip that holds data.pkl, with a trailing slash."""
    tops = [n[:-len('data.pkl')] for n in zf.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(tops) != 1:
        raise TorchCheckpointError(f'{path} is a zip file but not a PyTorch checkpoint (found '
                                   f'{len(tops)} <folder>/data.pkl entries, expected 1)')
    return tops[0]


def load(path):
    """Read a zip-format PyTorch checkpoint as saved, with every tensor as a numpy array.

    Returns the saved object (typically a dict) with tensors replaced by numpy arrays of the
    same shape and dtype (bfloat16 becomes float32). Raises TorchCheckpointError for a file
    that is not a zip-format checkpoint or is damaged, and UnsafeCheckpointError for one
    whose pickle names anything besides tensors and plain containers.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as exc:
        raise TorchCheckpointError(f'cannot read {path}: {exc}') from None
    if head.startswith(_LEGACY_MAGIC):
        raise TorchCheckpointError(
            f'{path} was saved in the legacy PyTorch format (PyTorch < 1.6), which is not supported. '
            f'Re-save it in the zip format with PyTorch >= 1.6: torch.save(torch.load(old_path), new_path)')
    if not head.startswith(_ZIP_MAGIC):
        raise TorchCheckpointError(f'{path} is not a PyTorch checkpoint in the zip format of PyTorch >= 1.6 '
                                   f'(it is not a zip file)')
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _top_folder(zf, path)
            names = set(zf.namelist())
            byteorder = 'little'
            if prefix + 'byteorder' in names:
                byteorder = zf.read(prefix + 'byteorder').decode('ascii', 'replace').strip()
                if byteorder not in ('little', 'big'):
                    raise TorchCheckpointError(f'{path}: unknown byte order {byteorder!r}')
            with zf.open(prefix + 'data.pkl') as f:
                return _RestrictedUnpickler(f, zf, prefix, byteorder, path).load()
    except TorchCheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise TorchCheckpointError(f'{path} is damaged or incomplete ({exc}); download it again') from None
    except (pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        # A malformed pickle fails in many ways; all of them mean the same to the user.
        raise TorchCheckpointError(f'{path}: cannot read data.pkl ({type(exc).__name__}: {exc}); '
                                   f'the file is damaged') from None


def load_state_dict(path):
    """Read the state dict of a PyTorch checkpoint as {name: numpy array}.

    Accepts a bare state dict or a dict that holds one under 'model' or 'state_dict'
    (the PANNs checkpoints are {'model': state_dict, 'iteration': ...}).
    """
    obj = load(path)
    if isinstance(obj, dict):
        for key in ('model', 'state_dict'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise TorchCheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict')
    not_tensors = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if not_tensors or not obj:
        raise TorchCheckpointError(f'{path} does not hold a state dict of tensors'
                                   + (f'; entries that are not tensors: {not_tensors[:5]}' if not_tensors else ''))
    return dict(obj)
