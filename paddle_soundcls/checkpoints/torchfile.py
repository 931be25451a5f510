"""Read PyTorch checkpoints (`torch.save`) as numpy arrays, without PyTorch.

Both of torch.save's formats are read:
- the zip format (PyTorch >= 1.6): `<top>/data.pkl`, a pickle of the saved object whose
  tensors point at raw storages kept as `<top>/data/<key>` entries (`<top>` is the file's
  stem or `archive`, depending on the PyTorch version);
- the legacy format (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`), which older
  published checkpoints may be in: one stream of pickles (a magic number, the format
  version, a dict describing the saving machine, the saved object, the list of storage
  keys), then each listed storage as an 8-byte little-endian element count followed by its
  elements, also little-endian.
Every pickle is read with an unpickler that knows only the handful of globals needed to
rebuild tensors and plain containers, so a file that tries to call anything else is
refused before any of its code can run.
"""
import collections
import io
import os
import pickle
import pickletools
import sys
import zipfile

import numpy as np

from ..errors import CheckpointError, UnsafeCheckpointError

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

# A legacy checkpoint is a stream of pickles: this number, then this format version, first.
_LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL_VERSION = 1001
_PICKLE_PROTO = b'\x80'  # the first byte of a pickle of protocol 2 or later
_ZIP_MAGIC = b'PK\x03\x04'


class TorchCheckpointError(CheckpointError):
    """A file that is not a readable PyTorch checkpoint."""


class _StorageType:
    """Stands for `torch.<Name>Storage` in the pickle; only its dtype is used."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """One storage of the file: a flat numpy array of its elements.

    pending: None when `data` already holds the file's values. A legacy file stores its
    storages after the pickle that builds the tensors, so until they are read this is a
    list, shared by all storages of the file, of the tensor copies to make afterwards.
    """

    def __init__(self, data, bfloat16, pending=None):
        self.data = data
        self.bfloat16 = bfloat16
        self.pending = pending

    def copy_into(self, out, src):
        """Fill `out` from `src` (a view of this storage) now, or once the storage holds its values."""
        if self.pending is None:
            _copy_values(out, src)
        else:
            self.pending.append((out, src))


def _copy_values(out, src):
    if src.dtype == np.uint16 and out.dtype == np.float32:
        # bfloat16 is the upper half of a float32: shift its 16 bits into place.
        np.left_shift(src, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        out[...] = src


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """`torch._utils._rebuild_tensor[_v2]`: a tensor's elements from its storage, as a C-ordered array.

    unused: requires_grad, backward hooks and metadata (v2 only), which mean nothing for a numpy array.
    """
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f'tensor data is a {type(storage).__name__}, not a storage')
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise TorchCheckpointError(f'bad tensor layout: size {size}, stride {stride}, offset {offset}')
    data = storage.data
    dtype = np.dtype(np.float32) if storage.bfloat16 else data.dtype
    if 0 in size:
        return np.empty(size, dtype=dtype)
    # The last element addressed must lie inside the storage: as_strided does not check.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise TorchCheckpointError(f'tensor of size {size}, stride {stride}, offset {offset} reaches past '
                                   f'the end of its storage ({data.size} elements)')
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * itemsize for s in stride])
    # A C-contiguous tensor (the usual case) stays a view of its storage: no copy, and it shows
    # a legacy file's values as soon as they are read into the storage.
    if view.flags['C_CONTIGUOUS'] and not storage.bfloat16:
        return view
    out = np.empty(size, dtype=dtype)
    storage.copy_into(out, view)
    return out


def _rebuild_parameter(data, *unused):
    """`torch._utils._rebuild_parameter[_with_state]`: a Parameter is just its tensor here."""
    return data


# Every global the pickle may name. Anything else is refused: unpickling calls it.
_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}
_SAFE_GLOBALS.update({('torch', name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles one pickle of a checkpoint, building nothing but tensors and plain containers.

    storage_for: called with a persistent id ('storage', storage type, key, location, number
        of elements[, legacy view]) whose first five items are checked; gives the _Storage.
        None for the pickles that must not refer to storages.
    """

    def __init__(self, file, path, storage_for=None):
        super().__init__(file)
        self.path, self.storage_for = path, storage_for

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f'{self.path}: refused. Its pickle asks for {module}.{name}, which is not needed for tensors '
                f'and plain containers; loading the file could run code from it. Only load checkpoints '
                f'from sources you trust, and then through PyTorch itself (a whole model saved with '
                f'torch.save(model) needs PyTorch: save its state_dict() instead).') from None

    def persistent_load(self, pid):
        if not (self.storage_for is not None and isinstance(pid, tuple) and len(pid) >= 5
                and pid[0] == 'storage' and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise TorchCheckpointError(f'{self.path}: unexpected persistent id {pid!r} in its pickle')
        return self.storage_for(pid)


def _top_folder(zf, path):
    """The folder inside the zip that holds data.pkl, with a trailing slash."""
    tops = [n[:-len('data.pkl')] for n in zf.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(tops) != 1:
        raise TorchCheckpointError(f'{path} is a zip file but not a PyTorch checkpoint (found '
                                   f'{len(tops)} <folder>/data.pkl entries, expected 1)')
    return tops[0]


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        prefix = _top_folder(zf, path)
        byteorder = 'little'
        if prefix + 'byteorder' in zf.namelist():
            byteorder = zf.read(prefix + 'byteorder').decode('ascii', 'replace').strip()
            if byteorder not in ('little', 'big'):
                raise TorchCheckpointError(f'{path}: unknown byte order {byteorder!r}')
        storages = {}

        def storage_for(pid):
            if len(pid) != 5:
                raise TorchCheckpointError(f'{path}: unexpected persistent id {pid!r} in data.pkl')
            _, storage_type, key, _, numel = pid
            if key not in storages:
                name = f'{prefix}data/{key}'
                try:
                    info = zf.getinfo(name)
                except KeyError:
                    raise TorchCheckpointError(f'{path}: storage {name} is missing; the file is damaged') from None
                dtype = storage_type.dtype
                if info.compress_type != zipfile.ZIP_STORED:
                    # torch.save stores every storage uncompressed; a compressed one could claim
                    # gigabytes from a small file before any shape is checked.
                    raise TorchCheckpointError(f'{path}: storage {name} is compressed, which torch.save never does; '
                                               f'the file was repacked or crafted. Save it again with torch.save')
                if info.file_size != numel * dtype.itemsize:
                    raise TorchCheckpointError(f'{path}: storage {name} holds {info.file_size} bytes, expected '
                                               f'{numel} x {dtype.itemsize}; the file is damaged')
                # Read straight into the array: a checkpoint can be hundreds of MB, so no extra copy.
                data = np.empty(numel, dtype=dtype)
                with zf.open(info) as f:
                    if f.readinto(memoryview(data.view(np.uint8))) != info.file_size:
                        raise TorchCheckpointError(f'{path}: storage {name} is truncated')
                if byteorder != sys.byteorder and dtype.itemsize > 1:
                    data.byteswap(inplace=True)
                storages[key] = _Storage(data, storage_type.name == 'BFloat16Storage')
            return storages[key]

        with zf.open(prefix + 'data.pkl') as f:
            return _RestrictedUnpickler(f, path, storage_for).load()


def _load_legacy(f, path):
    """The saved object of a legacy-format checkpoint, open as `f` at its start."""
    try:
        magic = _RestrictedUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except Exception:
        # Any pickle error here just means the file is something else.
        magic = None
    if type(magic) is not int or magic != _LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError(f'{path} is not a PyTorch checkpoint (neither a zip file nor the legacy format)')
    version = _RestrictedUnpickler(f, path).load()
    if version != _LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(f'{path}: legacy PyTorch checkpoint of unknown version {version!r} '
                                   f'(expected {_LEGACY_PROTOCOL_VERSION})')
    # Facts about the saving machine. Storages are little-endian whatever it was (PyTorch converts
    # when writing), and element sizes follow from the storage types, so nothing in it is needed.
    _RestrictedUnpickler(f, path).load()

    file_size = os.fstat(f.fileno()).st_size
    pending = []  # tensor copies to make once the storages hold their values
    roots, views = {}, {}

    def storage_for(pid):
        if len(pid) != 6:
            raise TorchCheckpointError(f'{path}: unexpected persistent id {pid!r} in its pickle')
        _, storage_type, key, _, numel, view = pid
        dtype = storage_type.dtype
        if key not in roots:
            # The storage cannot be larger than the file: checked before allocating its memory.
            if numel * dtype.itemsize > file_size:
                raise TorchCheckpointError(f'{path} is damaged or incomplete (storage {key} needs {numel} x '
                                           f'{dtype.itemsize} bytes, more than the whole file); download it again')
            roots[key] = _Storage(np.empty(numel, dtype=dtype), storage_type.name == 'BFloat16Storage', pending)
        root = roots[key]
        if root.data.dtype != dtype or root.data.size != numel:
            raise TorchCheckpointError(f'{path}: storage {key} is named as {root.data.size} x {root.data.dtype} '
                                       f'and as {numel} x {dtype}; the file is damaged')
        if view is None:
            return root
        # Very old files may point at part of a storage: (view key, offset, number of elements).
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and all(type(v) is int and v >= 0 for v in view[1:]) and view[1] + view[2] <= numel):
            raise TorchCheckpointError(f'{path}: bad storage view {view!r} of storage {key} ({numel} elements)')
        view_key, offset, view_size = view
        if view_key not in views:
            views[view_key] = _Storage(root.data[offset:offset + view_size], root.bfloat16, pending)
        return views[view_key]

    obj = _RestrictedUnpickler(f, path, storage_for).load()
    keys = _RestrictedUnpickler(f, path).load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise TorchCheckpointError(f'{path}: the list of storages is a {type(keys).__name__}; the file is damaged')
    if len(set(keys)) != len(keys) or set(keys) != set(roots):
        details = [f'{what}: {sorted(found)[:5]}' for what, found in (
            ('used but not listed', set(roots) - set(keys)), ('listed but not used', set(keys) - set(roots)),
            ('listed twice', {k for k, n in collections.Counter(keys).items() if n > 1})) if found]
        raise TorchCheckpointError(f'{path}: storage count mismatch: the file lists {len(keys)} storages, its '
                                   f'tensors use {len(roots)} ({"; ".join(details)}); the file is damaged')
    _read_legacy_storages(f, path, [roots[key].data for key in keys], keys)
    for out, src in pending:
        _copy_values(out, src)
    return obj


def _read_legacy_storages(f, path, arrays, keys):
    """Fill `arrays` (the storages listed as `keys`, in order) from the end of a legacy file: each an
    8-byte little-endian element count, then its elements."""
    for key, data in zip(keys, arrays):
        count = f.read(8)
        if len(count) != 8:
            raise TorchCheckpointError(f'{path} is damaged or incomplete (it ends before storage {key}); '
                                       f'download it again')
        count = int.from_bytes(count, 'little', signed=True)
        if count != data.size:
            raise TorchCheckpointError(f'{path}: storage {key} holds {count} elements, but its tensors '
                                       f'expect {data.size}; the file is damaged')
        # Read straight into the array: a checkpoint can be hundreds of MB, so no extra copy.
        got = f.readinto(memoryview(data.view(np.uint8)))
        if got != data.nbytes:
            raise TorchCheckpointError(f'{path} is damaged or incomplete (storage {key} has {got} of its '
                                       f'{data.nbytes} bytes); download it again')
        if sys.byteorder != 'little' and data.dtype.itemsize > 1:
            data.byteswap(inplace=True)


def sniff(head):
    """'zip', 'legacy' or None: whether `head`, a file's first bytes, opens a torch.save file.

    The legacy format's first pickle is PyTorch's magic number, which is looked for among the
    opcodes without unpickling anything."""
    if head.startswith(_ZIP_MAGIC):
        return 'zip'
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name not in ('PROTO', 'FRAME'):
                return 'legacy' if type(arg) is int and arg == _LEGACY_MAGIC_NUMBER else None
    except Exception:  # not a pickle, or cut short: not this format either way
        return None
    return None


def load(path):
    """Read a PyTorch checkpoint (zip or legacy format) as saved, with every tensor as a numpy array.

    Returns the saved object (typically a dict) with tensors replaced by numpy arrays of the
    same shape and dtype (bfloat16 becomes float32). Raises TorchCheckpointError for a file
    that is not a PyTorch checkpoint or is damaged, and errors.UnsafeCheckpointError (the one
    every reader raises) for one whose pickle names anything besides tensors and plain containers.
    """
    try:
        f = open(path, 'rb')
    except OSError as exc:
        raise TorchCheckpointError(f'cannot read {path}: {exc}') from None
    try:
        with f:
            head = f.read(len(_ZIP_MAGIC))
            if head.startswith(_ZIP_MAGIC):
                return _load_zip(path)
            if not head.startswith(_PICKLE_PROTO):
                raise TorchCheckpointError(f'{path} is not a PyTorch checkpoint '
                                           f'(neither a zip file nor the legacy format)')
            f.seek(0)
            return _load_legacy(f, path)
    except CheckpointError:  # TorchCheckpointError, or UnsafeCheckpointError (also a ValueError)
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise TorchCheckpointError(f'{path} is damaged or incomplete ({exc}); download it again') from None
    except (pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        # A malformed pickle fails in many ways; all of them mean the same to the user.
        raise TorchCheckpointError(f'{path} is damaged or incomplete (cannot read its pickle: '
                                   f'{type(exc).__name__}: {exc}); download it again') from None


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


def strip_module_prefix(state):
    """The state dict without the 'module.' prefix a model saved from inside nn.DataParallel has."""
    if state and all(k.startswith('module.') for k in state):
        return {k[len('module.'):]: v for k, v in state.items()}
    return dict(state)
