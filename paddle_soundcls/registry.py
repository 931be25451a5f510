"""Registered models by name. A pretrained model is data: where its weights live, how to
check them, and the front end they were trained with, so features always match weights."""
import csv
import os
from dataclasses import dataclass, field
from typing import Optional

from .features.config import FrontendConfig

_LABELS_CSV = os.path.join(os.path.dirname(__file__), 'data', 'audioset_class_labels_indices.csv')


@dataclass(frozen=True)
class PretrainedCfg:
    name: str                  # registry name, e.g. 'panns_cnn14'
    arch: str                  # key of models.ARCHITECTURES
    url: str                   # official Paddle checkpoint (PaddleSpeech / PaddleHub)
    filename: str              # file name in the cache; an official file placed there by hand is used as is
    num_params: int            # parameter count; the file is checked against it (no checksum is published)
    emb_size: int
    md5: Optional[str] = None
    sha256: Optional[str] = None
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    @property
    def sample_rate(self):
        return self.frontend.sample_rate

    @property
    def min_file_size(self):
        # A .pdparams file stores every parameter as float32 plus a little pickle framing.
        return 4 * self.num_params

    @property
    def max_file_size(self):
        return 4 * self.num_params + (1 << 20)


_BASE_URL = 'https://bj.bcebos.com/paddleaudio/models/'

_MODELS = {
    cfg.name: cfg for cfg in [
        PretrainedCfg('panns_cnn14', 'cnn14', _BASE_URL + 'panns_cnn14.pdparams', 'panns_cnn14.pdparams',
                      num_params=80769871, emb_size=2048),
        PretrainedCfg('panns_cnn10', 'cnn10', _BASE_URL + 'panns_cnn10.pdparams', 'panns_cnn10.pdparams',
                      num_params=5223247, emb_size=512),
        PretrainedCfg('panns_cnn6', 'cnn6', _BASE_URL + 'panns_cnn6.pdparams', 'panns_cnn6.pdparams',
                      num_params=4839503, emb_size=512),
    ]
}


def list_models():
    """Names accepted by `Module(name=...)`."""
    return sorted(_MODELS)


def get_cfg(name) -> PretrainedCfg:
    if name not in _MODELS:
        raise ValueError(f'unknown model name {name!r}; known models: {", ".join(list_models())}')
    return _MODELS[name]


def audioset_labels():
    """The 527 AudioSet display names, in class-index order."""
    with open(_LABELS_CSV, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    return [row['display_name'] for row in sorted(rows, key=lambda r: int(r['index']))]
