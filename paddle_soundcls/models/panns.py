"""PANNs CNN14 / CNN10 / CNN6 (Kong et al., 2020) in Paddle.

Parameter names and shapes are those of the official Paddle checkpoints
(`panns_cnn14.pdparams` from PaddleSpeech / PaddleHub), so they load unchanged; the
PyTorch checkpoints of the original project load through the same filter (see
`checkpoint_filter`). The embedding is the output of fc1 (after its ReLU) and the AudioSet
head `fc_audioset` reads it without dropout, as in the original code; a new classification
head sees it through dropout (the original's 0.5, then the classifier's 0.1).

Every family module follows this file's template, in three sections:
    the network      a models.base.Backbone built from models.layers, by `build(arch, audioset_head)`
    checkpoints      `checkpoint_filter(state, source, ...)`: each layout the family accepts -> the
                     network's own names (the builder does the rest: classifier, first conv, report)
    registered models  one table, MODELS = {registered name: (architecture, PretrainedCfg or None,
                     published figures)}, and `_register_all()`, one ModelSpec per row
"""
import math
from collections import OrderedDict
from contextlib import nullcontext
from functools import partial
from typing import NamedTuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..checkpoints.torchfile import strip_module_prefix
from ..errors import ArgumentError, CheckpointError
from ..features.config import FrontendConfig
from ..features.mel import mel_filterbank
from ..frames import FrameGeometry
from .base import Backbone
from .builder import has_torch_batchnorm, paddle_bn_name, torch_bn_name
from .layers import same_conv
from .registry import AUDIOSET_CLASSES, ModelSpec, PretrainedCfg, register_model

FAMILY = 'panns'

# --- the network ------------------------------------------------------------------------------


class Arch(NamedTuple):
    """A PANNs CNN: channels of its conv blocks, their kernel and convolutions per block, the last
    block's pooling, and the embedding size (fc1's outputs)."""
    channels: tuple
    kernel: int
    num_convs: int
    last_pool: int
    emb_size: int


class ConvBlock(nn.Layer):
    """conv-bn-relu (twice for the 3x3 blocks, once for the 5x5 ones), then 2-D average pooling."""

    def __init__(self, in_channels, out_channels, kernel=3, num_convs=2):
        super().__init__()
        self.num_convs = num_convs
        self.conv1 = same_conv(in_channels, out_channels, kernel)
        self.bn1 = nn.BatchNorm2D(out_channels)
        if num_convs == 2:
            self.conv2 = same_conv(out_channels, out_channels, kernel)
            self.bn2 = nn.BatchNorm2D(out_channels)

    def forward(self, x, pool_size=2):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.num_convs == 2:
            x = F.relu(self.bn2(self.conv2(x)))
        if pool_size != 1:
            x = F.avg_pool2d(x, kernel_size=pool_size)
        return x


class MelBatchNorm(nn.BatchNorm2D):
    """bn0: a batch norm of each mel bin of log-mel [batch, frames, n_mels] (the parameters and
    statistics of PANNs' BatchNorm2d over mel bins). In training, the BatchNorm2D itself, mel
    bins moved to its channel axis and back; otherwise its inference arithmetic written out on the
    features' last axis: the same numbers, in a graph that converters to channels-last runtimes
    keep right (onnx2tf, for TFLite, broadcasts a batch norm between those transposes over the
    wrong axis)."""

    def forward(self, features):
        if self.training:
            x = features.unsqueeze(1).transpose([0, 3, 2, 1])   # [batch, n_mels, frames, 1]
            return super().forward(x).transpose([0, 3, 2, 1])[:, 0]
        return (features - self._mean) / paddle.sqrt(self._variance + self._epsilon) * self.weight + self.bias


class PANNsBackbone(Backbone):
    """The shared CNN trunk: bn0 over mel bins, conv blocks, global pooling, fc1 (+ fc_audioset)."""

    def __init__(self, channels, kernel, num_convs, last_pool, emb_size, n_mels=64, audioset_head=True):
        super().__init__()
        self.emb_size = emb_size
        self.num_blocks = len(channels)
        self.bn0 = MelBatchNorm(n_mels)
        in_channels = 1
        for i, out_channels in enumerate(channels, start=1):
            self.add_sublayer(f'conv_block{i}', ConvBlock(in_channels, out_channels, kernel, num_convs))
            in_channels = out_channels
        self.pool_sizes = [2] * (len(channels) - 1) + [last_pool]
        self.fc1 = nn.Linear(in_channels, emb_size)
        self.has_audioset_head = audioset_head
        if audioset_head:
            self.fc_audioset = nn.Linear(emb_size, AUDIOSET_CLASSES)

    def blocks(self):
        return [getattr(self, f'conv_block{i}') for i in range(1, self.num_blocks + 1)]

    def _feature_map(self, features, keepdim=False):
        """log-mel [batch, frames, n_mels] -> the last conv block's output averaged over mel, [batch, C, frames']
        ([batch, C, frames', 1] with keepdim)."""
        x = self.bn0(features).unsqueeze(1)   # [batch, 1, frames, n_mels]
        for block, pool in zip(self.blocks(), self.pool_sizes):
            x = F.dropout(block(x, pool), p=0.2, training=self.training)
        return x.mean(axis=3, keepdim=keepdim)

    def forward_features(self, features):
        """features: [batch, frames, n_mels] log-mel. Returns the embedding [batch, emb_size]."""
        x = self._feature_map(features)
        x = x.max(axis=2) + x.mean(axis=2)       # over time
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))

    def forward_frames(self, features):
        """Time-resolved embeddings [batch, frames', emb_size], frames' = frames / 2**(pooling
        steps): the feature map before pooling over time, smoothed over three frames by max +
        mean (the clip-level pooling, made local) and passed through fc1 frame by frame, as
        PANNs' decision-level models do."""
        x = self._feature_map(features, keepdim=True)   # [batch, channels, frames, 1]
        # 2-D pooling over (frames, 1), then a mean over the axis of one, rather than 1-D pooling
        # (an unsqueeze, a 2-D pooling and a squeeze in ONNX): the same numbers, in a graph whose
        # axes a converter to channels-last layouts (onnx2tf, for TFLite) keeps track of.
        x = (F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0)) +
             F.avg_pool2d(x, (3, 1), stride=1, padding=(1, 0), exclusive=False)).mean(axis=3)
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x.transpose([0, 2, 1])))

    def audioset_logits(self, embedding):
        return self.fc_audioset(embedding)


def build(arch, audioset_head=False):
    """A PANNs backbone of `arch` (an Arch, or the name of one of ARCHS: 'cnn14', 'cnn10', 'cnn6')."""
    arch = ARCHS[arch] if isinstance(arch, str) else arch
    return PANNsBackbone(list(arch.channels), arch.kernel, arch.num_convs, arch.last_pool, arch.emb_size,
                         audioset_head=audioset_head)


def build_backbone(arch, channels=None, emb_size=None, n_mels=64, lazy=False):
    """A PANNs backbone with its AudioSet head, by architecture name ('cnn14', 'cnn10', 'cnn6').

    channels / emb_size: give both to build a smaller network of the same kind (kernel size,
        convolutions per block and last pooling taken from `arch`), e.g. for tests.
    lazy: build under paddle.LazyGuard, which allocates no weights: enough to read names and shapes.
    """
    if arch not in ARCHS:
        raise ArgumentError(f'unknown architecture {arch!r}; known: {", ".join(sorted(ARCHS))}')
    if (channels is None) != (emb_size is None):
        raise ArgumentError('give both channels and emb_size, or neither')
    full = ARCHS[arch]
    with paddle.LazyGuard() if lazy else nullcontext():
        return PANNsBackbone(list(full.channels if channels is None else channels), full.kernel, full.num_convs,
                             full.last_pool, full.emb_size if emb_size is None else emb_size, n_mels)


def frame_geometry(arch):
    """Every block but the last halves time with a 2x2 average pooling (the last with `last_pool`):
    output j of one averages inputs 2j and 2j + 1, so after k of them network frame j is centred
    on front-end frame stride * j + (stride - 1) / 2, stride = 2**k. The convolutions are padded
    symmetrically, and forward_frames' 3-frame smoothing is centred, so neither moves it.
    context: the receptive field over time from the layer stack (each conv adds kernel - 1 input
    steps, each pooling pool - 1, the smoothing 2), half of it around the centre, rounded up: 54
    front-end frames for CNN6 and CNN10, 174 for CNN14; the same as measured with random weights
    in eval mode (tests/test_overlap.py: changing any input frame farther than that from a frame's
    centre leaves it bit for bit unchanged, one nearer changes it)."""
    stride = 2 ** (len(arch.channels) - 1) * arch.last_pool
    size, step = 1, 1
    for pool in [2] * (len(arch.channels) - 1) + [arch.last_pool]:
        size += arch.num_convs * (arch.kernel - 1) * step + (pool - 1) * step
        step *= pool
    size += 2 * step   # forward_frames' 3-frame max + mean
    return FrameGeometry(stride=stride, offset=(stride - 1) / 2, context=math.ceil((size - 1) / 2))


# --- checkpoints ------------------------------------------------------------------------------

_HUB_PREFIXES = ('cnn14.', 'cnn10.', 'cnn6.')   # PaddleHub's fine-tuned modules


def checkpoint_filter(state, source, arch):
    """A PANNs state dict in any layout we accept -> our backbone's names.

    - official Paddle (PaddleSpeech, PaddleHub) backbone + tagger: bn0.*, conv_block*, fc1.*, fc_audioset.*
    - PaddleHub's fine-tuned modules: cnn14.* (cnn10 / cnn6)
    - the original PyTorch checkpoints (BatchNorm running_mean / running_var, Linear [out, in],
      front-end buffers): converted by convert_panns_state, which also checks their mel filters
    (Our own and PaddleSpeech's `backbone.*` prefix is removed by the builder before this.)
    """
    if has_torch_batchnorm(state) or MEL_KEY in state:
        return convert_panns_state(state, arch, source=source)
    out = {}
    for key, value in state.items():
        if key.startswith(_HUB_PREFIXES):
            key = key.split('.', 1)[1]
        if not key.startswith(('bn0.', 'conv_block', 'fc1.', 'fc_audioset.')):
            raise CheckpointError(f'{source}: unrecognised parameter {key!r}; expected the official PANNs names '
                                  f'(bn0.*, conv_block*, fc1.*, fc_audioset.*), backbone.* / fc.* or cnn14.* / fc.*')
        out[key] = np.asarray(value)
    return out


# The original PyTorch checkpoints (qiuqiangkong/audioset_tagging_cnn).
# They differ from the official Paddle ones in three ways: BatchNorm statistics are
# `running_mean` / `running_var` with a `num_batches_tracked` counter; Linear weights are
# [out, in]; the front end is part of the network (STFT kernels and `logmel_extractor.melW`,
# the mel filters [n_freq, n_mels]). Our front end computes those, so they are dropped, after
# checking that melW matches our filters. Every other key must fit a parameter of ours.

MEL_KEY = 'logmel_extractor.melW'
STFT_KEYS = ('spectrogram_extractor.stft.conv_real.weight', 'spectrogram_extractor.stft.conv_imag.weight')


class ConversionError(CheckpointError):
    """A PyTorch state dict that does not fit the asked architecture or front end."""


def paddle_name(torch_key):
    """The Paddle name of a PyTorch PANNs key, or None for keys that are dropped on purpose."""
    if torch_key in STFT_KEYS or torch_key == MEL_KEY:
        return None
    return paddle_bn_name(torch_key)


def _some(items, limit=8):
    return items if len(items) <= limit else items[:limit] + [f'... {len(items) - limit} more']


def check_mel_filters(melw, frontend=FrontendConfig(), source='checkpoint'):
    """Fail unless `melw` ([n_freq, n_mels], torchlibrosa's layout) equals our mel filters for `frontend`."""
    expected = mel_filterbank(frontend.sample_rate, frontend.n_fft, frontend.n_mels, frontend.f_min,
                              frontend.f_max, frontend.htk, frontend.mel_norm).T
    ours = (f'{frontend.sample_rate} Hz, n_fft {frontend.n_fft}, {frontend.n_mels} mel bins from '
            f'{frontend.f_min} to {frontend.f_max} Hz')
    melw = np.asarray(melw)
    if melw.shape != expected.shape:
        found = (f'n_fft {2 * (melw.shape[0] - 1)} and {melw.shape[1]} mel bins' if melw.ndim == 2
                 else f'shape {list(melw.shape)}')
        raise ConversionError(
            f'{source}: its mel filters ({MEL_KEY}, {list(melw.shape)}) are for {found}, but our models use '
            f'{ours}. The checkpoint was made for other front-end settings (such as the 16 kHz or 8 kHz PANNs '
            f'variants) and would give wrong results with our features.')
    err = float(np.abs(melw.astype(np.float64) - expected).max())
    # The file keeps float32 copies of filters whose peaks are ~1e-2: allow float32 rounding only.
    if err > 1e-4 * float(np.abs(expected).max()):
        raise ConversionError(
            f'{source}: its mel filters ({MEL_KEY}) differ from ours ({ours}, slaney) by up to {err:.3g}. '
            f'The checkpoint was made for other front-end settings (sample rate, f_min or f_max) and would '
            f'give wrong results with our features.')


def convert_panns_state(torch_state, arch, frontend=None, source='checkpoint'):
    """Map a PyTorch PANNs state dict onto our backbone's parameter names and layouts.

    torch_state: {name: numpy array} as in the PyTorch checkpoint (see checkpoints.torchfile.load_state_dict).
    arch: 'cnn14' / 'cnn10' / 'cnn6', or a PANNsBackbone whose names and shapes are the target.
    frontend: the FrontendConfig melW is checked against (default: the registered model's, or
        for a backbone object the PANNs settings with its number of mel bins).
    Returns an OrderedDict {paddle name: float32 array} in the backbone's parameter order.
    Raises ConversionError naming the keys that are unknown, missing or of the wrong shape.
    """
    layer = build_backbone(arch, lazy=True) if isinstance(arch, str) else arch
    target = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    linear = {f'{name}.weight' for name, sub in layer.named_sublayers() if isinstance(sub, nn.Linear)}
    if frontend is None:
        # The front end the registered pretrained model of this architecture is used with.
        frontend = (FrontendConfig() if isinstance(arch, str)
                    else FrontendConfig(n_mels=target['bn0.weight'][0]))

    state = strip_module_prefix(torch_state)
    if MEL_KEY in state:
        check_mel_filters(state[MEL_KEY], frontend, source)

    out, unknown, bad = {}, [], {}
    for key, value in state.items():
        name = paddle_name(key)
        if name is None:
            # A step counter is dropped only where our network has a BatchNorm to go with it.
            if key.endswith('.num_batches_tracked') and key.rpartition('.')[0] + '._mean' not in target:
                unknown.append(key)
            continue
        if name not in target:
            unknown.append(key)
            continue
        if name in out or name in bad:
            bad[name] = f'{key} and another key both give {name}'
            continue
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            bad[name] = f'{key} is {value.dtype}, not floating point'
            continue
        # Shapes are compared in PyTorch's layout, the one the user's file has.
        want = target[name][::-1] if name in linear else target[name]
        if tuple(value.shape) != want:
            bad[name] = f'{key} is {list(value.shape)}, expected {list(want)}'
            continue
        out[name] = np.ascontiguousarray(value.T if name in linear else value, dtype=np.float32)
    missing = [torch_bn_name(k) for k in target if k not in out and k not in bad]
    problems = []
    if unknown:
        problems.append(f'{len(unknown)} unknown keys {_some(unknown)}')
    if missing:
        problems.append(f'{len(missing)} missing keys {_some(missing)}')
    if bad:
        problems.append('wrong tensors: ' + '; '.join(_some(list(bad.values()))))
    if problems:
        what = arch if isinstance(arch, str) else 'the given backbone'
        raise ConversionError(f'{source} does not fit {what}: ' + '. '.join(problems)
                              + '. Is it a checkpoint of another model? Give the name of the model it was made '
                                'for (Module(name=...), or paddle-soundcls convert --model NAME).')
    return OrderedDict((k, out[k]) for k in target)


# --- registered models ------------------------------------------------------------------------

_BASE_URL = 'https://bj.bcebos.com/paddleaudio/models/'


def _official(name, arch, params, **figures):
    """A row of MODELS for an official PaddleSpeech checkpoint: a .pdparams file storing every
    parameter as float32 plus a little pickle framing (no checksum is published for these files)."""
    weights = PretrainedCfg(url=_BASE_URL + f'{name}.pdparams', filename=f'{name}.pdparams', file_format='pdparams',
                            size_range=(4 * params, 4 * params + (1 << 20)), license='MIT', frontend=FrontendConfig(),
                            frame_geometry=frame_geometry(arch), labels='audioset', classifier='fc_audioset',
                            description='AudioSet tagger (PANNs, converted by PaddleSpeech)')
    return arch, weights, {'params': params, **figures}


# name: (architecture, pretrained weights, published figures: parameters with the AudioSet head (our
# builder's count), AudioSet mAP from the PANNs paper, ESC-50 accuracy after fine-tuning from PaddleSpeech).
MODELS = {
    'panns_cnn14': _official('panns_cnn14', Arch((64, 128, 256, 512, 1024, 2048), kernel=3, num_convs=2,
                                                 last_pool=1, emb_size=2048),
                             80769871, audioset_map=0.431, esc50_acc=0.95),
    'panns_cnn10': _official('panns_cnn10', Arch((64, 128, 256, 512), kernel=3, num_convs=2, last_pool=2,
                                                 emb_size=512),
                             5223247, esc50_acc=0.8975),
    'panns_cnn6': _official('panns_cnn6', Arch((64, 128, 256, 512), kernel=5, num_convs=1, last_pool=2,
                                               emb_size=512),
                            4839503, esc50_acc=0.8825),
}
# The architectures by short name ('cnn14', ...), and builders of each with its AudioSet head: the
# official files' layout, from which tests and tools build reference networks.
ARCHS = {name[len('panns_'):]: arch for name, (arch, _, _) in MODELS.items()}
ARCHITECTURES = {short: partial(build, arch, audioset_head=True) for short, arch in ARCHS.items()}


def _register_all():
    for name, (arch, weights, published) in MODELS.items():
        register_model(ModelSpec(
            name=name, family=FAMILY, build=partial(build, arch), emb_size=arch.emb_size,
            checkpoint_filter=partial(checkpoint_filter, arch=name[len('panns_'):]), weights=weights,
            # The deepest network halves the time axis five times and needs at least 32 frames.
            min_seconds=1.0, audioset_head='fc_audioset',
            head_dropout=1 - 0.5 * 0.9,  # the original's dropout(0.5) then the classifier's dropout(0.1)
            published=published))


_register_all()
