"""Part of a network exported to ONNX once per set of weights and kept in the cache.

`Module.predict` runs its scores graph with onnxruntime, and frozen-backbone training runs
the backbone's embedding graph: both come from here, as
`<cache_dir()>/onnx/<model>-<part>-<key>.onnx`, where the key hashes the weights, the part,
its settings and the Paddle / paddle2onnx versions. A network trained further gets a new key,
so an export never outlives the weights it was made from; the least recently used files
beyond the last few are removed.

Hashing every weight (320 MB for CNN14) takes a few tenths of a second, so the digest of a
network is kept and recomputed only when a cheap checksum of its weights (CRC-32 over the
tensors' memory, read in place, about 50 ms for CNN14) changes.
"""
import hashlib
import json
import os
import tempfile
import weakref
import zlib

import numpy as np
import paddle

from .. import cache, fileio
from .onnx import convert
from .static import save_static

KEEP = 4  # files kept in the cache (CNN14's graphs are 320 MB each)
_digests = weakref.WeakKeyDictionary()  # layer -> (checksum, digest)


def _tensors(layer):
    """(name, numpy view) of every parameter and buffer, without copying."""
    for name, tensor in sorted(layer.state_dict().items()):
        yield name, np.from_dlpack(tensor.detach()) if tensor.place.is_cpu_place() else tensor.numpy()


def weights_digest(layer):
    """A digest (32 hex digits) of the names, shapes and values of every weight of `layer`."""
    checksum = 0
    for name, array in _tensors(layer):
        checksum = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1), checksum)
    known = _digests.get(layer)
    if known is not None and known[0] == checksum:
        return known[1]
    h = hashlib.blake2b(digest_size=16)
    for name, array in _tensors(layer):
        h.update(f'{name}:{array.dtype}:{array.shape};'.encode())
        h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    _digests[layer] = (checksum, h.hexdigest())
    return h.hexdigest()


def cached_onnx(net, n_mels, name, settings, digest):
    """The path of `net` exported to ONNX, exporting it only when the cache does not hold it.

    net: a Layer taking log-mel features [batch, frames, n_mels].
    name: the file name's start, e.g. 'panns_cnn14-scores'.
    settings: JSON data the graph depends on besides the weights (task, labels, part...).
    digest: weights_digest of the Layer whose weights `net` uses.
    """
    import onnx
    import paddle2onnx

    key = hashlib.sha256(json.dumps([settings, digest, paddle.__version__, paddle2onnx.__version__],
                                    sort_keys=True).encode()).hexdigest()[:32]
    folder = os.path.join(cache.cache_dir(), 'onnx')
    path = os.path.join(folder, f'{name}-{key}.onnx')
    if os.path.isfile(path):
        os.utime(path)  # most recently used: kept by the pruning below
        return path
    with tempfile.TemporaryDirectory() as tmp:
        save_static(net, n_mels, tmp)
        model = convert(tmp)
    fileio.atomic_write(path, lambda tmp_path: onnx.save(model, tmp_path))
    cache.prune_cache(folder, '.onnx', KEEP)
    return path


def module_onnx(module, part='scores'):
    """The path of `module.part(part)` (a Module's scores graph, by default) as ONNX, from the cache:
    what Module.predict runs with onnxruntime. Keyed on everything an export records."""
    settings = {'part': part, **module.export_settings()}
    return cached_onnx(module.part(part), module.frontend_cfg.n_mels, f'{module.name}-{part}', settings,
                       weights_digest(module))


def cached_export(module, opset=13):
    """An export directory of `module` (static graph + ONNX + export.json, see export_static) in
    `<cache_dir()>/exports`, made once per set of weights and settings; returns its path.

    What the server and other export-directory consumers use for a checkpoint or a model name.
    """
    from .static import export_static

    settings = {'part': 'export', 'opset': opset, **module.export_settings()}
    key = hashlib.sha256(json.dumps([settings, weights_digest(module), paddle.__version__],
                                    sort_keys=True).encode()).hexdigest()[:32]
    folder = os.path.join(cache.cache_dir(), 'exports')
    path = os.path.join(folder, f'{module.name}-{key}')
    if not os.path.isfile(os.path.join(path, 'export.json')):
        export_static(module, path, opset=opset)
    return path
