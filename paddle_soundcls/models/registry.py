"""Registered models by name: architectures (`ModelSpec`) and their pretrained weights (`PretrainedCfg`).

A model family lives in one module under `models/` (they all follow models/panns.py's template)
and registers there, in one table, everything specific to each of its models: how to build
the network (`build(audioset_head)` -> a models.base.Backbone), its pretrained weight file
(where it is published, how to check and read it, the front end, labels and classifier it was
trained with, where its frames sit in time), the checkpoint layouts it accepts (its
`checkpoint_filter`), its AudioSet head, embedding size, shortest usable input and published
figures. Everything else (Module, Trainer, export, Predictor, command line, benchmarks, tests
generated from `list_models()`) works from the spec alone, through models/builder.py for weights.

This module is Paddle-free; the families (which import Paddle) are registered on first use.
"""
import csv
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import ArgumentError
from ..features.config import FrontendConfig
from ..frames import FrameGeometry

_LABELS_CSV = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'data', 'audioset_class_labels_indices.csv')
AUDIOSET_CLASSES = 527
# The modules under models/ that are not families; every other one registers a family, and all are
# imported on first use of the registry (a new family is a new file there, nothing else).
SHARED_MODULES = ('registry', 'base', 'layers', 'builder', 'domain')
FILE_FORMATS = ('pdparams', 'torch')
# What the classifier of a pretrained file predicts: the 527 AudioSet tags (kept as the AudioSet
# head for task='tagging') or another task's classes (dropped: the backbone alone is pretrained).
LABEL_SETS = ('audioset', 'imagenet-1k')
# The figures `published` may hold, the same in every family (absent where nothing is published):
PUBLISHED_KEYS = {
    'params': 'learnt parameters, with the AudioSet head where the model has one',
    'macs_10s': 'multiply-accumulates of the network (front end excluded) for a 10-s clip',
    'audioset_map': 'AudioSet mAP of the pretrained tagger',
    'esc50_acc': 'ESC-50 accuracy after fine-tuning',
}


@dataclass(frozen=True)
class PretrainedCfg:
    """A pretrained checkpoint file: where it is published, how to check and read it, and what the
    weights were trained with (timm's PretrainedCfg)."""
    url: str
    filename: str                        # its name in the cache; an official file placed there by hand is used
    file_format: str = 'pdparams'        # 'pdparams' (a Paddle state dict) or 'torch' (read without PyTorch)
    size_range: Optional[tuple] = None   # (min, max) bytes, where no checksum is published
    sha256: Optional[str] = None
    md5: Optional[str] = None
    license: str = ''
    frontend: Optional[FrontendConfig] = None        # the features the weights were trained on
    frame_geometry: Optional[FrameGeometry] = None   # where the network's frames sit, in front-end frames
    labels: Optional[str] = None         # what the file's classifier predicts: one of LABEL_SETS, or None
    # Parameter prefix of that classifier in the file (e.g. 'fc_audioset', 'classifier.5', or 'fc'
    # for paddle.vision's ImageNet head); None: the file holds no classifier.
    classifier: Optional[str] = None
    # Name of the first convolution's weight where the file's has several input channels (an RGB
    # network): the builder sums them into the one channel of a log-mel spectrogram.
    first_conv: Optional[str] = None
    description: str = ''                # what is pretrained, on what, for the model tables

    def __post_init__(self):
        if self.file_format not in FILE_FORMATS:
            raise ArgumentError(f'file_format must be one of {FILE_FORMATS}, got {self.file_format!r}')
        if self.labels is not None and self.labels not in LABEL_SETS:
            raise ArgumentError(f'labels must be one of {LABEL_SETS} or None, got {self.labels!r}')
        if (self.labels is None) != (self.classifier is None):
            raise ArgumentError(f'{self.filename}: a classifier needs its labels, and labels a classifier '
                             f'(got classifier={self.classifier!r}, labels={self.labels!r})')


@dataclass(frozen=True)
class ModelSpec:
    """Everything specific to one registered model."""
    name: str                            # registry name, e.g. 'panns_cnn14'
    family: str                          # e.g. 'panns'
    build: Callable                      # build(audioset_head: bool) -> models.base.Backbone
    emb_size: int
    checkpoint_filter: Callable          # (state {name: array}, source) -> state in the backbone's own names
    weights: Optional[PretrainedCfg] = None   # None: no pretrained weights
    # The features and frame geometry of the network: those of its pretrained weights, unless it has none.
    frontend: Optional[FrontendConfig] = None
    frame_geometry: Optional[FrameGeometry] = None
    min_seconds: float = 1.0             # shorter clips are zero-padded to this length
    audioset_head: Optional[str] = None  # parameter prefix of the backbone's AudioSet head; None: no such head
    head_dropout: float = 0.1            # dropout before a new classification head
    published: dict = field(default_factory=dict)  # figures for the README and tests (PUBLISHED_KEYS)

    def __post_init__(self):
        for key in ('frontend', 'frame_geometry'):
            own, pretrained = getattr(self, key), getattr(self.weights, key, None)
            if own is None:
                object.__setattr__(self, key, pretrained)   # frozen: set once, here
            elif pretrained is not None and own != pretrained:
                raise ArgumentError(f'{self.name}: {key} {own!r} differs from that of its pretrained weights '
                                 f'{pretrained!r}; give it once, in the PretrainedCfg')

    @property
    def sample_rate(self):
        return self.frontend.sample_rate


_MODELS = {}
_loaded = False


def _check(spec):
    """Refuse a spec whose parts disagree: what every family must state, and state consistently."""
    if not isinstance(spec, ModelSpec):
        raise ArgumentError(f'register_model takes a ModelSpec, got {type(spec).__name__}')
    if not isinstance(spec.frontend, FrontendConfig):
        raise ArgumentError(f'{spec.name}: frontend must be a FrontendConfig (on the spec or its weights), '
                        f'got {spec.frontend!r}')
    if not isinstance(spec.frame_geometry, FrameGeometry):
        raise ArgumentError(f'{spec.name}: frame_geometry must be a FrameGeometry (on the spec or its weights), '
                        f'got {spec.frame_geometry!r}')
    unknown = sorted(set(spec.published) - set(PUBLISHED_KEYS))
    if unknown:
        raise ArgumentError(f'{spec.name}: published figures {unknown} are not among {sorted(PUBLISHED_KEYS)}')
    w = spec.weights
    if w is not None and (w.labels == 'audioset') != (w.classifier is not None and w.classifier == spec.audioset_head):
        raise ArgumentError(f'{spec.name}: the AudioSet classifier of {w.filename} ({w.classifier!r}, labels '
                         f'{w.labels!r}) must be the backbone\'s AudioSet head ({spec.audioset_head!r})')


def register_model(spec):
    """Add a model to the registry (called by the family modules at import)."""
    _check(spec)
    if spec.name in _MODELS and _MODELS[spec.name] is not spec:
        raise ArgumentError(f'a model named {spec.name!r} is registered already (family {_MODELS[spec.name].family})')
    _MODELS[spec.name] = spec
    return spec


def family_modules():
    """The names of the family modules under models/, sorted."""
    folder = os.path.dirname(__file__)
    return sorted(m.name for m in pkgutil.iter_modules([folder]) if m.name not in SHARED_MODULES and not m.ispkg)


def _load_families():
    global _loaded
    if not _loaded:
        _loaded = True
        for module in family_modules():
            importlib.import_module(f'{__package__}.{module}')


def list_models(family=None):
    """Names accepted by `Module(name=...)`, optionally of one family."""
    _load_families()
    return sorted(name for name, spec in _MODELS.items() if family is None or spec.family == family)


def get_spec(name) -> ModelSpec:
    _load_families()
    if name not in _MODELS:
        raise ArgumentError(f'unknown model name {name!r}; registered models: {", ".join(list_models())}')
    return _MODELS[name]


def audioset_labels():
    """The 527 AudioSet display names, in class-index order."""
    with open(_LABELS_CSV, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    return [row['display_name'] for row in sorted(rows, key=lambda r: int(r['index']))]
