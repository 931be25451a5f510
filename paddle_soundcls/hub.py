"""`Module`: a PANNs backbone and a head built by name, with weights loaded and predict()."""
import logging
import os
from collections import OrderedDict

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import audio, checkpoint, registry, weights
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
        if load_checkpoint is not None:
            params_path, meta = checkpoint.resolve(load_checkpoint)
            source = params_path
            state = checkpoint.to_module_layout(checkpoint.load_params(params_path), params_path)
            if meta is not None:
                if meta['model'] != name:
                    raise checkpoint.CheckpointError(
                        f'{params_path} was trained from {meta["model"]}, not {name}; use name={meta["model"]!r}')
                if labels is not None and labels != meta['labels'] and len(labels) != len(meta['labels']):
                    raise checkpoint.CheckpointError(
                        f'{params_path} has {len(meta["labels"])} classes, but {len(labels)} were asked for')
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
        elif pretrained:
            path = weights.fetch(cfg.url, cfg.filename, md5=cfg.md5, sha256=cfg.sha256,
                                 size_range=(cfg.min_file_size, cfg.max_file_size))
            self._load_state(checkpoint.to_module_layout(checkpoint.load_params(path), path), path)
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

    def load_inputs(self, data, sample_rate):
        """Paths / arrays -> list of mono float32 waveforms at the model's rate (at least MIN_SECONDS)."""
        if isinstance(data, (str, os.PathLike, np.ndarray)):
            data = [data]
        if not isinstance(data, (list, tuple)) or not data:
            raise ValueError('data must be a non-empty list of audio file paths or numpy waveforms')
        sr = self.frontend_cfg.sample_rate
        min_len = int(MIN_SECONDS * sr)
        waves = []
        for i, item in enumerate(data):
            name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f'data[{i}]'
            wave = audio.load(item, sample_rate, sr, name=name)
            waves.append(wave if len(wave) >= min_len else np.pad(wave, (0, min_len - len(wave))))
        return waves

    @paddle.no_grad()
    def predict(self, data, sample_rate=None, batch_size=1, feat_type='mel', use_gpu=False, topk=None):
        """Classify or tag audio.

        data: a list of audio file paths (read at their own rate) and/or numpy waveforms
            ([samples] or [channels, samples]) at `sample_rate` Hz.
        Returns one OrderedDict(label -> score) per input, best first (`topk` keeps the best k).
        """
        if feat_type != 'mel':
            raise ValueError(f"feat_type must be 'mel' (log-mel, what PANNs was trained on), got {feat_type!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
        set_device(use_gpu)
        waves = self.load_inputs(data, sample_rate)
        self.eval()
        scores = [None] * len(waves)
        # Clips of equal length share a batch, so no clip is padded beyond its own length.
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            groups = {}
            for i in idx:
                groups.setdefault(len(waves[i]), []).append(i)
            for members in groups.values():
                batch = paddle.to_tensor(np.stack([waves[i] for i in members]))
                probs = self.scores(self(self.frontend(batch))).numpy()
                for i, p in zip(members, probs):
                    scores[i] = p
        return [self.to_dict(s, topk) for s in scores]

    def to_dict(self, scores, topk=None):
        order = np.argsort(-scores, kind='stable')[:topk]
        return OrderedDict((self.labels[j], float(scores[j])) for j in order)
