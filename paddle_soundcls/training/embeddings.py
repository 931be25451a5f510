"""Backbone embeddings of a dataset's clips, computed once and cached on disk.

Fine-tuning with a frozen backbone only trains the head (dropout + fc), whose input, the
backbone's embedding of each clip, never changes. So every clip is embedded once, with the
fastest engine at hand (the backbone exported to ONNX and run by onnxruntime on numpy log-mel
features; Paddle dygraph if that fails), and the head then trains on the stored embeddings.

Layout of the cache (`<cache_dir()>/embeddings` by default):

    onnx/<model>-<key>.onnx        the exported backbone, once per set of backbone weights
    <settings key>/settings.json   what the embeddings below depend on (for people reading the cache)
    <settings key>/<sha256>.npy    the embedding (float32 [emb_size]) of the file with that content

The settings key hashes the model name, a digest of the backbone weights, the front-end
settings, the sample rate, the clip length and the crop. Each clip is found by the sha256 of
its file's bytes, hashed on every run: reading a file is cheap next to embedding it, and unlike
size + mtime it cannot miss an edit, so a changed file never gets a stale embedding (and the
same audio under two names is embedded once). Changing a file, a setting or the weights
recomputes only what they affect; entries nobody uses any more stay until the folder is deleted.

Clips are embedded with a centre crop (or zero-padded) to the dataset's clip length, also for
training data: random training crops would need a new embedding every epoch.

Every embedding is written as soon as it is computed, atomically, so an interrupted pass
resumes where it stopped.
"""
import copy
import hashlib
import json
import logging
import os
import tempfile

import numpy as np
import paddle
import paddle.nn as nn
from tqdm import tqdm

from .. import checkpoint, weights
from ..deploy import exportdir
from ..features.mel import logmel

logger = logging.getLogger(__name__)

FORMAT = 1          # bump when the way embeddings are computed changes: old entries are then ignored
BATCH_SIZE = 16     # clips per engine call
CROP = 'center'
_ONNX_KEEP = 3      # exported backbones kept in the cache (CNN14's is 320 MB)


def cache_root():
    """The default cache folder: `<cache_dir()>/embeddings` ($PADDLE_SOUNDCLS_HOME/embeddings)."""
    return os.path.join(weights.cache_dir(), 'embeddings')


def backbone_digest(module):
    """sha256 of the backbone weights the embedding depends on (the AudioSet layer is not used)."""
    h = hashlib.sha256()
    for key, value in sorted(module.backbone.state_dict().items()):
        if key.startswith('fc_audioset.'):
            continue
        h.update(key.encode())
        h.update(np.ascontiguousarray(value.numpy()).tobytes())
    return h.hexdigest()


def settings(module, dataset, digest):
    """Everything an embedding depends on besides the audio file itself."""
    return {'format': FORMAT, 'model': module.name, 'backbone_sha256': digest,
            'frontend': module.frontend_cfg.to_dict(), 'sample_rate': dataset.sample_rate,
            'num_samples': dataset.num_samples, 'crop': CROP}


class _EmbeddingNet(nn.Layer):
    """features [batch, frames, n_mels] -> embedding [batch, emb_size]: the backbone alone."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, features):
        return self.backbone(features.unsqueeze(1))


class DygraphEngine:
    """The backbone in Paddle dygraph: features [batch, frames, n_mels] -> embeddings [batch, emb_size]."""
    name = 'dygraph'

    def __init__(self, module):
        self.net = _EmbeddingNet(module.backbone)

    @paddle.no_grad()
    def __call__(self, features):
        return self.net(paddle.to_tensor(features)).numpy()


def export_backbone(module, root=None):
    """The backbone of `module` as an ONNX embedding graph, exported once per set of weights.

    Returns the path of `<root>/onnx/<model>-<key>.onnx` (input 'features' [batch, frames,
    n_mels], output the embedding [batch, emb_size]); the key hashes the weights and the
    Paddle and paddle2onnx versions.
    """
    import onnx
    import paddle2onnx

    from ..export.onnx import convert

    folder = os.path.join(root or cache_root(), 'onnx')
    versions = f'{paddle.__version__} {paddle2onnx.__version__} {FORMAT}'
    key = hashlib.sha256((backbone_digest(module) + versions).encode()).hexdigest()[:32]
    path = os.path.join(folder, f'{module.name}-{key}.onnx')
    if os.path.isfile(path):
        os.utime(path)  # most recently used: kept by the pruning below
        return path
    net = _EmbeddingNet(module.backbone)
    spec = paddle.static.InputSpec([None, None, module.frontend_cfg.n_mels], 'float32', name=exportdir.INPUT_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        paddle.jit.save(net, os.path.join(tmp, exportdir.STATIC_PREFIX), input_spec=[spec])
        model = convert(tmp)
    checkpoint.atomic_write(path, lambda tmp_path: onnx.save(model, tmp_path))
    weights.prune_cache(folder, '.onnx', _ONNX_KEEP)
    return path


def build_engine(module, root=None):
    """The fastest available embedding engine: features [batch, frames, n_mels] float32 ->
    embeddings [batch, emb_size] float32 numpy. onnxruntime on the exported backbone, or
    Paddle dygraph when the export or onnxruntime fails."""
    from ..deploy.engines import OnnxEngine
    try:
        return OnnxEngine(export_backbone(module, root))
    except Exception as exc:  # e.g. onnxruntime missing, or an op paddle2onnx cannot convert
        logger.warning('%s: cannot run the backbone with onnxruntime (%s); embedding with Paddle dygraph',
                       module.name, exc)
        return DygraphEngine(module)


class EmbeddingDataset(paddle.io.Dataset):
    """Cached embeddings and targets: item i -> (embedding float32 [emb_size], target), where the
    target is what the audio dataset gives (an int64 class index, or float32 multi-hot)."""

    def __init__(self, embeddings, targets):
        super().__init__()
        self.embeddings = embeddings
        self.targets = targets

    def __len__(self):
        return len(self.embeddings)

    def __getitem__(self, index):
        return self.embeddings[index], self.targets[index]


def _target(dataset, target):
    if getattr(dataset, 'multi_label', False):
        hot = np.zeros(len(dataset.labels), dtype=np.float32)
        hot[list(target)] = 1.0
        return hot
    return np.int64(target)


def _save(path, embedding):
    def write(tmp):
        with open(tmp, 'wb') as f:  # a file object: np.save would append '.npy' to a name
            np.save(f, embedding)
    checkpoint.atomic_write(path, write)


def embed_dataset(module, dataset, batch_size=BATCH_SIZE, root=None, rank=0, world_size=1):
    """The backbone embedding of every clip of `dataset`, from the cache, computing what is missing.

    Args:
        module: a Module; its backbone (in eval mode: no dropout, BatchNorm running statistics),
            front-end settings and name are used, not its head.
        dataset: an AudioDataset (items of (path, target), sample_rate, num_samples). Each clip
            is centre-cropped or padded to num_samples, whatever the dataset's mode.
        batch_size: clips per engine call.
        root: the cache folder (default `<cache_dir()>/embeddings`).
        rank, world_size: in a data-parallel run every process computes its share of the
            missing clips, then waits for the others.
    Returns an EmbeddingDataset in dataset order.
    """
    items = getattr(dataset, 'items', None)
    if items is None or not hasattr(dataset, 'num_samples'):
        raise TypeError(f'freeze_backbone=True caches one embedding per audio file, so it needs a paddle_soundcls '
                        f'AudioDataset (items of (path, label)); got {type(dataset).__name__}')
    root = root or cache_root()
    was_training = module.backbone.training
    module.backbone.eval()
    try:
        info = settings(module, dataset, backbone_digest(module))
        folder = os.path.join(root, hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:24])
        if not os.path.isfile(os.path.join(folder, 'settings.json')):
            checkpoint.write_json(os.path.join(folder, 'settings.json'), info)
        paths = [path for path, _ in items]
        hashes = [weights.file_digest(path, 'sha256')
                  for path in tqdm(paths, desc='Hashing audio files', unit='file', leave=False,
                                   disable=len(paths) < 500)]
        files = [os.path.join(folder, f'{h}.npy') for h in hashes]
        missing = {}  # one clip per missing content, in dataset order
        for index, file in enumerate(files):
            if not os.path.isfile(file):
                missing.setdefault(file, index)
        todo = sorted(missing.values())[rank::world_size]
        if todo:
            _compute(module, dataset, todo, files, batch_size, root)
        if world_size > 1:
            paddle.distributed.barrier()
    finally:
        if was_training:
            module.backbone.train()
    embeddings = np.stack([np.load(file) for file in files])
    return EmbeddingDataset(embeddings, [_target(dataset, target) for _, target in items])


def _compute(module, dataset, indices, files, batch_size, root):
    """Embed the clips `indices` of `dataset` and save each to files[index]."""
    engine = build_engine(module, root)
    centre = copy.copy(dataset)
    centre.mode = 'dev'  # any mode but 'train' gives centre crops
    with tqdm(total=len(indices), desc=f'Embedding clips ({engine.name})', unit='clip') as bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            features = logmel(np.stack([centre[i][0] for i in batch]), module.frontend_cfg)
            for i, embedding in zip(batch, engine(features)):
                _save(files[i], np.asarray(embedding, dtype=np.float32))
            bar.update(len(batch))
