"""Backbone embeddings of a dataset's clips, computed once and cached on disk.

Fine-tuning with a frozen backbone only trains the head (dropout + fc), whose input, the
backbone's embedding of each clip, never changes. So every clip is embedded once, with the
fastest engine at hand (the backbone's 'features' graph from the ONNX cache, run by
onnxruntime on numpy log-mel features; Paddle dygraph if that fails), and the head then
trains on the stored embeddings.

Layout of the cache (`<cache_dir()>/embeddings` by default):

    <settings key>/settings.json   what the embeddings below depend on (for people reading the cache)
    <settings key>/<sha256>.npy    the embeddings (float32 [segments, emb_size]) of the file with that content

The settings key hashes the model name, a digest of the backbone weights, the front-end
settings, the sample rate, the clip length, the way clips are cut, and the versions of the
resampler and of libsndfile's decoders (cache.decoding_settings). Each clip is found by
the sha256 of its file's bytes, hashed on every run: reading a file is cheap next to
embedding it, and unlike size + mtime it cannot miss an edit, so a changed file never gets a
stale embedding (and the same audio under two names is embedded once). Changing a file, a
setting or the weights recomputes only what they affect; entries nobody uses any more stay
until the folder is deleted.

How clips are cut: training clips are centre-cropped (or zero-padded) to the dataset's clip
length, one segment each (random training crops would need a new embedding every epoch);
evaluation clips are cut as predict cuts them (deploy.segments.clip_segments: padded to the
clip length, or consecutive windows of it), so frozen-backbone evaluation scores what
predict scores.

Every embedding is written as soon as it is computed, atomically, so an interrupted pass
resumes where it stopped.
"""
import logging
import os

import numpy as np
import paddle

from .. import audio, cache, fileio
from ..device import place_of
from ..deploy.segments import clip_segments
from ..progress import progress_bar
from ..features.mel import logmel
from ..errors import ArgumentError

logger = logging.getLogger(__name__)

FORMAT = 2          # bump when the way embeddings are computed changes: old entries are then ignored
BATCH_SIZE = 16     # segments per engine call
CUTS = ('center', 'segments')


def cache_root():
    """The default cache folder: `<cache_dir()>/embeddings` ($PADDLE_SOUNDCLS_HOME/embeddings)."""
    return os.path.join(cache.cache_dir(), 'embeddings')


def settings(module, dataset, digest, cut):
    """Everything an embedding depends on besides the audio file itself. The head (task, labels,
    pooling) is not part of it: the embedding is the backbone's, before any of them."""
    return {'format': FORMAT, 'model': module.name, 'backbone_digest': digest,
            'frontend': module.frontend_cfg.to_dict(), 'sample_rate': dataset.sample_rate,
            'num_samples': dataset.num_samples, 'min_seconds': module.min_seconds, 'cut': cut,
            **cache.decoding_settings()}


class DygraphEngine:
    """The backbone in Paddle dygraph: features [batch, frames, n_mels] -> embeddings [batch, emb_size]."""
    name = 'dygraph'

    def __init__(self, module):
        self.net = module.part('features')

    @paddle.no_grad()
    def __call__(self, features):
        return self.net(paddle.to_tensor(features, place=place_of(self.net))).numpy()


def build_engine(module):
    """The fastest available embedding engine: features [batch, frames, n_mels] float32 ->
    embeddings [batch, emb_size] float32 numpy. onnxruntime on the backbone's graph from the
    ONNX cache, or Paddle dygraph when the export or onnxruntime fails."""
    from ..deploy.engines import OnnxEngine
    from ..export.onnx_cache import cached_onnx, weights_digest
    try:
        path = cached_onnx(module.part('features'), module.frontend_cfg.n_mels, f'{module.name}-features',
                           {'part': 'features', 'model': module.name, 'format': FORMAT},
                           weights_digest(module.backbone))
        return OnnxEngine(path)
    except Exception as exc:  # e.g. onnxruntime missing, or an op paddle2onnx cannot convert
        logger.warning('%s: cannot run the backbone with onnxruntime (%s); embedding with Paddle dygraph',
                       module.name, exc)
        return DygraphEngine(module)


class EmbeddingDataset(paddle.io.Dataset):
    """Cached embeddings and targets of a dataset's clips.

    embeddings: per clip float32 [segments, emb_size]. Item i -> (the embedding of its first
    segment [emb_size], target), what training on centre crops reads; evaluation reads every
    segment (Trainer.evaluate). Targets are what the audio dataset gives (an int64 class
    index, or float32 multi-hot).
    """

    def __init__(self, embeddings, targets):
        super().__init__()
        self.embeddings = embeddings
        self.targets = targets

    def __len__(self):
        return len(self.embeddings)

    def __getitem__(self, index):
        return self.embeddings[index][0], self.targets[index]

    def target(self, index):
        return self.targets[index]


def clip_inputs(module, dataset, index, cut, clip_samples):
    """The waveform segments [segments, samples] of clip `index`, cut as `cut` says (see module docstring)."""
    wave = dataset.waveform(index)
    if cut == 'center':
        return audio.fix_length(wave, dataset.num_samples)[None]
    min_samples = int(round(module.min_seconds * dataset.sample_rate))
    return np.stack([seg for _, _, seg in clip_segments(wave, clip_samples, min_samples)])


def embed_dataset(module, dataset, cut='center', clip_samples=None, batch_size=BATCH_SIZE, root=None, rank=0,
                  world_size=1):
    """The backbone embeddings of every clip of `dataset`, from the cache, computing what is missing.

    Args:
        module: a Module; its backbone (in eval mode: no dropout, BatchNorm running statistics),
            front-end settings and name are used, not its head.
        dataset: an AudioDataset (items of (path, target), sample_rate, num_samples, waveform()).
        cut: 'center' (training clips: one centre crop or zero-padding to num_samples) or
            'segments' (evaluation: the segments predict scores, of `clip_samples` samples).
        batch_size: segments per engine call.
        root: the cache folder (default `<cache_dir()>/embeddings`).
        rank, world_size: in a data-parallel run every process computes its share of the
            missing clips, then waits for the others.
    Returns an EmbeddingDataset in dataset order.
    """
    from ..export.onnx_cache import weights_digest
    if cut not in CUTS:
        raise ArgumentError(f'cut must be one of {CUTS}, got {cut!r}')
    items = getattr(dataset, 'items', None)
    if items is None or not hasattr(dataset, 'waveform'):
        raise ArgumentError(f'freeze_backbone=True caches embeddings per audio file, so it needs a paddle_soundcls '
                        f'AudioDataset (items of (path, label)); got {type(dataset).__name__}')
    root = root or cache_root()
    clip_samples = dataset.num_samples if clip_samples is None else clip_samples
    was_training = module.backbone.training
    module.backbone.eval()
    try:
        info = settings(module, dataset, weights_digest(module.backbone), cut)
        info['clip_samples'] = clip_samples if cut == 'segments' else None
        files, missing = cache.content_cache(root, info, [path for path, _ in items])
        todo = missing[rank::world_size]
        if todo:
            _compute(module, dataset, todo, files, batch_size, cut, clip_samples)
        if world_size > 1:
            paddle.distributed.barrier()
    finally:
        if was_training:
            module.backbone.train()
    embeddings = [np.load(file) for file in files]
    return EmbeddingDataset(embeddings, [dataset.target(i) for i in range(len(items))])


def _compute(module, dataset, indices, files, batch_size, cut, clip_samples):
    """Embed the clips `indices` of `dataset` and save each to files[index] ([segments, emb_size])."""
    engine = build_engine(module)
    with progress_bar(total=len(indices), desc=f'Embedding clips ({engine.name})', unit='clip') as bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            segments = [clip_inputs(module, dataset, i, cut, clip_samples) for i in batch]
            # Every segment has the same length (the clip length, or min_seconds if longer).
            rows = engine(logmel(np.concatenate(segments), module.frontend_cfg))
            offset = 0
            for i, s in zip(batch, segments):
                fileio.write_npy(files[i], np.asarray(rows[offset:offset + len(s)], dtype=np.float32))
                offset += len(s)
            bar.update(len(batch))
