"""Registered models by name: the backbone contract.

A model family lives in one module under `models/` and registers, there, everything that is
specific to it (see `ModelSpec`): how to build the network, its pretrained weights (where
they live, how to check them, their format), the front end they were trained with (so
features always match the weights), the checkpoint layouts it accepts, its AudioSet head,
its embedding size and its shortest usable input. Everything else (Module, Trainer, export,
Predictor, command line, benchmarks, tests) works from the spec alone.

The backbone a spec builds is a paddle Layer with:
    emb_size                     int
    forward_features(features)   log-mel [batch, frames, n_mels] -> embedding [batch, emb_size]
    forward_frames(features)     -> time-resolved embeddings [batch, frames', emb_size] (the
                                 feature map before pooling over time; event detection)
    forward_head(embedding)      -> AudioSet logits [batch, 527] (also on [..., emb_size]); only
                                 when built with audioset_head=True (parameters start with spec.audioset_head)
The spec's `frame_geometry` says where forward_frames' frames sit in time (frames.FrameGeometry).

This module is Paddle-free; the families (which import Paddle) are registered on first use.
"""
import csv
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from .features.config import FrontendConfig
from .frames import FrameGeometry

_LABELS_CSV = os.path.join(os.path.dirname(__file__), 'data', 'audioset_class_labels_indices.csv')
AUDIOSET_CLASSES = 527
# The modules under models/ that register families, imported on first use of the registry.
FAMILY_MODULES = ('panns', 'efficientat', 'resnet', 'cpmobile')
FILE_FORMATS = ('pdparams', 'torch')


@dataclass(frozen=True)
class Weights:
    """A pretrained checkpoint file: where it is published and how to check it."""
    url: str
    filename: str                        # its name in the cache; an official file placed there by hand is used
    file_format: str = 'pdparams'        # 'pdparams' (a Paddle state dict) or 'torch' (read without PyTorch)
    size_range: Optional[tuple] = None   # (min, max) bytes, where no checksum is published
    sha256: Optional[str] = None
    md5: Optional[str] = None
    license: str = ''

    def __post_init__(self):
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f'file_format must be one of {FILE_FORMATS}, got {self.file_format!r}')


@dataclass(frozen=True)
class ModelSpec:
    """Everything specific to one registered model."""
    name: str                            # registry name, e.g. 'panns_cnn14'
    family: str                          # e.g. 'panns'
    build: Callable                      # build(audioset_head: bool) -> backbone Layer (see the module docstring)
    frontend: FrontendConfig             # the features the weights were trained on
    emb_size: int
    checkpoint_filter: Callable          # (state {name: array}, source) -> state in the backbone's own names
    frame_geometry: FrameGeometry        # where forward_frames' frames are centred, in front-end frames
    weights: Optional[Weights] = None    # None: no pretrained weights
    min_seconds: float = 1.0             # shorter clips are zero-padded to this length
    audioset_head: Optional[str] = 'fc_audioset'  # parameter prefix of the AudioSet head; None: no such head
    head_dropout: float = 0.1            # dropout before a new classification head
    # The family's own checkpoints hold a classifier of their pretraining task named `fc`, like the
    # Module's head (paddle.vision's ImageNet ResNets): in a checkpoint without `backbone.*` keys,
    # `fc.*` then goes to checkpoint_filter (which drops it) instead of being read as the Module's head.
    native_fc: bool = False
    published: dict = field(default_factory=dict)  # figures for the README and tests: params, macs_10s, audioset_map

    @property
    def sample_rate(self):
        return self.frontend.sample_rate


_MODELS = {}
_loaded = False


def register_model(spec):
    """Add a model to the registry (called by the family modules at import)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f'register_model takes a ModelSpec, got {type(spec).__name__}')
    if not isinstance(spec.frame_geometry, FrameGeometry):
        raise TypeError(f'{spec.name}: frame_geometry must be a FrameGeometry, got {spec.frame_geometry!r}')
    if spec.name in _MODELS and _MODELS[spec.name] is not spec:
        raise ValueError(f'a model named {spec.name!r} is registered already (family {_MODELS[spec.name].family})')
    _MODELS[spec.name] = spec
    return spec


def _load_families():
    global _loaded
    if not _loaded:
        _loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(f'{__package__}.models.{module}')


def list_models(family=None):
    """Names accepted by `Module(name=...)`, optionally of one family."""
    _load_families()
    return sorted(name for name, spec in _MODELS.items() if family is None or spec.family == family)


def get_spec(name) -> ModelSpec:
    _load_families()
    if name not in _MODELS:
        raise ValueError(f'unknown model name {name!r}; registered models: {", ".join(list_models())}')
    return _MODELS[name]


def audioset_labels():
    """The 527 AudioSet display names, in class-index order."""
    with open(_LABELS_CSV, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    return [row['display_name'] for row in sorted(rows, key=lambda r: int(r['index']))]
