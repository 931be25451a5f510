"""`Module`: a PANNs backbone and a head built by name, with weights loaded and predict()."""
import logging
import os
import weakref

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import checkpoint, registry, weights
from .device import set_device
from .features.config import FrontendConfig
from .features.logmel import LogMel
from .models import ARCHITECTURES

logger = logging.getLogger(__name__)

TASKS = ('sound-cls', None)
# Shorter clips are zero-padded to this length: the deepest backbone halves the time axis
# five times and needs at least 32 frames.
MIN_SECONDS = 1.0


def _labels_from(num_class, label_map):
    if label_map is None:
        if num_class is None:
            return None
        if isinstance(num_class, bool) or not isinstance(num_class, int) or num_class < 1:
            raise ValueError(f'num_class must be a positive int, got {num_class!r}')
        return [str(i) for i in range(num_class)]
    if isinstance(label_map, dict):  # PaddleHub style {index: label}
        if sorted(label_map) != list(range(len(label_map))):
            raise ValueError(f'label_map keys must be the class indices 0..{len(label_map) - 1}, got {sorted(label_map)}')
        labels = [str(label_map[i]) for i in range(len(label_map))]
    else:
        labels = [str(label) for label in label_map]
    if not labels:
        raise ValueError('label_map is empty')
    if len(set(labels)) != len(labels):
        raise ValueError('label_map has duplicate labels')
    if num_class is not None and num_class != len(labels):
        raise ValueError(f'num_class={num_class} disagrees with label_map, which has {len(labels)} labels')
    return labels


class Module(nn.Layer):
    """A pretrained PANNs network, by name.

    Args:
        name: a registered model (see `list_models()`), e.g. 'panns_cnn14'.
        task: 'sound-cls' for a classification head with `num_class` outputs (softmax scores),
            or None for the 527 AudioSet tags (sigmoid scores).
        num_class: classes of the 'sound-cls' head; or give `label_map`.
        label_map: class names, a list or a {index: name} dict (PaddleHub style).
        load_checkpoint: a checkpoint file or directory to load instead of the official
            weights (official names, ours, PaddleSpeech's or PaddleHub's layouts). A directory
            written by the Trainer also restores the labels and front end.
        pretrained: load the official AudioSet weights (downloaded once to the cache).
            False builds random weights.

    forward(features [batch, frames, n_mels]) -> logits [batch, classes].
    """

    def __init__(self, name, task='sound-cls', num_class=None, label_map=None, load_checkpoint=None,
                 pretrained=True, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f'Module() got unexpected arguments: {sorted(kwargs)}')
        cfg = registry.get_cfg(name)
        if task not in TASKS:
            raise ValueError(f"task must be 'sound-cls' or None (AudioSet tagging), got {task!r}")
        labels = _labels_from(num_class, label_map)
        frontend = cfg.frontend
        state, source = None, None
        if load_checkpoint is None and pretrained:
            # Every task needs the pretrained weights: fetch (or fail offline) first.
            source = weights.fetch(cfg.url, cfg.filename, md5=cfg.md5, sha256=cfg.sha256,
                                   size_range=(cfg.min_file_size, cfg.max_file_size))
            try:
                params = checkpoint.load_params(source)
            except checkpoint.CheckpointError as exc:  # damaged in the cache (the size check passed)
                raise type(exc)(f'{exc} Delete {source} and run again to download it from {cfg.url}.') from None
            state = checkpoint.to_module_layout(params, source)
        elif load_checkpoint is not None:
            params_path, meta = checkpoint.resolve(load_checkpoint)
            source = params_path
            state = checkpoint.to_module_layout(checkpoint.load_params(params_path), params_path)
            if meta is not None:
                if meta['model'] != name:
                    raise checkpoint.CheckpointError(
                        f'{params_path} was trained from {meta["model"]}, not {name}; use name={meta["model"]!r}')
                saved = meta['labels'] or []
                if labels is not None and len(labels) != len(saved):
                    raise checkpoint.CheckpointError(
                        f'{params_path} has {len(saved)} classes, but {len(labels)} were asked for')
                if label_map is not None and labels != saved:
                    raise checkpoint.CheckpointError(
                        f'label_map {labels[:5]}... differs from the labels saved with {params_path} '
                        f'({saved[:5]}...); leave label_map out to use the saved ones')
                task, labels = meta['task'], meta['labels'] if meta['task'] else None
                frontend = FrontendConfig.from_dict(meta['frontend'])
            elif task == 'sound-cls' and labels is None and 'fc.weight' in state:
                labels = _labels_from(int(state['fc.weight'].shape[1]), None)
        if task == 'sound-cls' and labels is None:
            raise ValueError("task='sound-cls' needs num_class or label_map (the classes of your data)")

        self.name, self.task, self.cfg, self.frontend_cfg = name, task, cfg, frontend
        self.labels = labels if task == 'sound-cls' else registry.audioset_labels()
        self.backbone = ARCHITECTURES[cfg.arch](n_mels=frontend.n_mels)
        if task == 'sound-cls':
            self.dropout = nn.Dropout(0.1)
            self.fc = nn.Linear(self.backbone.emb_size, len(self.labels))
        self.frontend = LogMel(frontend)

        if state is not None:
            self._load_state(state, source)
        else:
            logger.info('%s: random weights (pretrained=False)', name)
        self.eval()

    @property
    def num_class(self):
        return len(self.labels)

    def _load_state(self, state, source):
        own = self.state_dict()
        mismatched = [f'{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}'
                      for k, v in state.items() if k in own and list(v.shape) != list(own[k].shape)]
        if mismatched:
            raise checkpoint.CheckpointError(
                f'{source} does not fit {self.name} (task={self.task!r}, {len(self.labels)} classes): '
                + '; '.join(mismatched[:5]) + (f' and {len(mismatched) - 5} more' if len(mismatched) > 5 else ''))
        missing = [k for k in own if k not in state]
        missing_backbone = [k for k in missing if k.startswith('backbone.') and not k.startswith('backbone.fc_audioset.')]
        if missing_backbone:
            raise checkpoint.CheckpointError(f'{source} lacks {len(missing_backbone)} backbone parameters of '
                                             f'{self.name}, e.g. {missing_backbone[:3]}; is it for another model?')
        if self.task is None and any(k.startswith('backbone.fc_audioset.') for k in missing):
            raise checkpoint.CheckpointError(f'{source} has no AudioSet tagging layer (fc_audioset); '
                                             f'it cannot be used with task=None')
        unused = [k for k in state if k not in own]
        if unused:
            logger.warning('%s: skipped %d parameters the %s model does not use: %s', source, len(unused),
                           self.task or 'tagging', ', '.join(unused[:10]))
        if any(k.startswith('fc.') for k in missing):
            logger.info('%s: classification head (%d classes) starts from random weights', self.name,
                        len(self.labels))
        self.set_state_dict({k: v for k, v in state.items() if k in own})

    def forward(self, features):
        """features: [batch, frames, n_mels] log-mel. Returns logits [batch, classes]."""
        embedding = self.backbone(features.unsqueeze(1))
        if self.task is None:
            return self.backbone.fc_audioset(embedding)
        return self.fc(self.dropout(embedding))

    def scores(self, logits):
        """Logits -> scores: softmax for classification, sigmoid for the independent AudioSet tags."""
        return F.sigmoid(logits) if self.task is None else F.softmax(logits, axis=-1)

    def meta(self):
        """What a checkpoint needs to rebuild this Module (saved as meta.json)."""
        return {'format': checkpoint.FORMAT, 'model': self.name, 'task': self.task,
                'labels': self.labels if self.task else None, 'frontend': self.frontend_cfg.to_dict()}

    def save(self, directory):
        """Write model.pdparams + meta.json to `directory`, replacing it only once complete.

        `Module(name, load_checkpoint=directory)` rebuilds this Module with its labels.
        """
        def build(tmp):
            paddle.save(self.state_dict(), os.path.join(tmp, checkpoint.PARAMS_FILE))
            checkpoint.write_json(os.path.join(tmp, checkpoint.META_FILE), self.meta())
        checkpoint.replace_dir(build, directory)
        return directory

    @paddle.no_grad()
    def predict(self, data, sample_rate=None, batch_size=1, feat_type='mel', use_gpu=False, topk=None,
                window=None, hop=None, reduce='mean', engine='auto'):
        """Classify or tag audio.

        data: an audio file path (read at its own rate), a numpy waveform ([samples] or
            [channels, samples] at `sample_rate` Hz), or a list of them.
        batch_size: clips (or windows) per forward pass.
        topk: keep the best k labels of every result.
        window, hop: seconds; slide a `window`-second window every `hop` seconds (default:
            hop = window) over each input, streaming windows in batches, for audio of any length.
        reduce: 'mean' or 'max' over windows for the clip-level scores of windowed calls.
        engine: 'auto' runs onnxruntime (the Module exported once per set of weights and cached)
            for 4 or more inputs or any windowed call, and Paddle dygraph otherwise or with
            use_gpu=True; 'onnxruntime' or 'dygraph' force one. Both give the same scores (~1e-5).
        Returns one OrderedDict(label -> score) per input, best first; for windowed calls one
        {'scores': OrderedDict, 'timeline': [{'start': s, 'end': e, 'scores': OrderedDict}, ...]}
        per input (seconds; see paddle_soundcls.deploy.pipeline).
        """
        from .deploy import pipeline
        if feat_type != 'mel':
            raise ValueError(f"feat_type must be 'mel' (log-mel, what PANNs was trained on), got {feat_type!r}")
        if engine not in _PREDICT_ENGINES:
            raise ValueError(f'engine must be one of {_PREDICT_ENGINES}, got {engine!r}')
        if use_gpu and engine == 'onnxruntime':
            raise ValueError("engine='onnxruntime' runs on the CPU; use engine='dygraph' (or 'auto') with use_gpu=True")
        hop = pipeline.check_args(batch_size, topk, window, hop, reduce)
        sources = pipeline.as_sources(data)
        self.eval()
        score_fn = None
        if engine == 'onnxruntime':
            score_fn = _onnx_scorer(self)
        elif engine == 'auto' and not use_gpu and (window is not None or len(sources) >= _FAST_MIN_INPUTS):
            try:
                score_fn = _onnx_scorer(self)
            except Exception as exc:  # e.g. onnxruntime missing, or an op paddle2onnx cannot convert
                logger.warning('%s: the onnxruntime engine is unavailable (%s); running Paddle dygraph', self.name, exc)
        if score_fn is None:
            set_device(use_gpu)
            score_fn = _dygraph_scorer(self)
        raw = pipeline.run(sources, score_fn, sample_rate, self.frontend_cfg.sample_rate, MIN_SECONDS,
                           batch_size, window, hop)
        return pipeline.format_results(raw, self.labels, topk, reduce)

    def to_dict(self, scores, topk=None):
        """scores [classes] -> OrderedDict(label -> score), best first, the best `topk` only."""
        from .deploy import pipeline
        return pipeline.to_dict(scores, self.labels, topk)


# Module.predict engines. The onnxruntime engine needs a one-off export (about a second for
# CNN6/CNN10, ten for CNN14), which pays off from a few clips on.
_PREDICT_ENGINES = ('auto', 'onnxruntime', 'dygraph')
_FAST_MIN_INPUTS = 4
_ONNX_CACHE_KEEP = 3  # exported models kept in the cache (CNN14 is 320 MB each)
# Module -> (state key, OnnxEngine). Kept beside the Module rather than on it, so copying or
# pickling a Module never meets an onnxruntime session.
_ONNX_ENGINES = weakref.WeakKeyDictionary()


def _dygraph_scorer(module):
    """waveforms [batch, samples] -> scores [batch, classes] with Paddle dygraph (front end on the device)."""
    def score(waves):
        return module.scores(module(module.frontend(paddle.to_tensor(waves)))).numpy()
    return score


def _state_key(module):
    """A digest of everything the exported graph depends on: weights, model, task, labels, versions."""
    import hashlib
    import json

    import paddle2onnx
    h = hashlib.sha256()
    h.update(json.dumps([module.meta(), paddle.__version__, paddle2onnx.__version__], sort_keys=True).encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(value.numpy()).tobytes())
    return h.hexdigest()[:32]


def _onnx_scorer(module):
    """waveforms [batch, samples] -> scores [batch, classes] with onnxruntime and the numpy front end.

    The Module is exported to `<cache>/onnx/<name>-<key>.onnx` once per set of weights (the key
    hashes them, so a Module trained further is exported again) and the session is kept on the
    Module for the next call.
    """
    import tempfile

    from .deploy.engines import OnnxEngine
    from .export.onnx import convert
    from .export.static import save_static
    from .features.mel import logmel

    key = _state_key(module)
    cached = _ONNX_ENGINES.get(module)
    if cached is None or cached[0] != key:
        folder = os.path.join(weights.cache_dir(), 'onnx')
        path = os.path.join(folder, f'{module.name}-{key}.onnx')
        if os.path.isfile(path):
            os.utime(path)  # most recently used: kept by the pruning below
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_static(module, tmp)
                model = convert(tmp)
            checkpoint.atomic_write(path, lambda tmp_path: _save_onnx(model, tmp_path))
            weights.prune_cache(folder, '.onnx', _ONNX_CACHE_KEEP)
        cached = (key, OnnxEngine(path))
        _ONNX_ENGINES[module] = cached
    engine, cfg = cached[1], module.frontend_cfg
    return lambda waves: engine(logmel(waves, cfg))


def _save_onnx(model, path):
    import onnx
    onnx.save(model, path)

