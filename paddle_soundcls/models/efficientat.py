"""EfficientAT's MobileNetV3 audio taggers (`mn`, Schmid et al., ICASSP 2023) in Paddle.

The networks of github.com/fschmid56/EfficientAT (MIT licence), models/mn/model.py, with their
defaults: channel squeeze-and-excitation, the `mlp` head, no dilation, strides 2-2-2-2.
Sub-layers are numbered as theirs are, so their parameter names carry over one to one
(`features.4.block.2.conc_se_layers.0.fc1.weight`, `classifier.5.bias`, ...); only the
tensor layout differs (Paddle BatchNorm statistics `_mean`/`_variance`, Linear weights
[in, out]), which `checkpoint_filter` converts.

The backbone takes log-mel features [batch, frames, n_mels] from EFFICIENTAT_FRONTEND.
Its embedding is the output of the head's first Linear + Hardswish, the layer EfficientAT
keeps when it fine-tunes on a new task (it replaces only the last Linear, `classifier.5`).
"""
from functools import partial

import numpy as np
import paddle.nn as nn

from ..errors import CheckpointError
from ..features.config import FrontendConfig
from ..features.mel import window
from ..frames import FrameGeometry
from .base import Backbone
from .builder import has_torch_batchnorm, paddle_bn_name
from .layers import SqueezeExcitation, conv_bn_act, make_divisible
from .registry import AUDIOSET_CLASSES, ModelSpec, PretrainedCfg, register_model

FAMILY = 'efficientat'

# --- the network ------------------------------------------------------------------------------

# EfficientAT's front end in evaluation mode (models/preprocess.py there, AugmentMelSTFT).
EFFICIENTAT_FRONTEND = FrontendConfig(
    sample_rate=32000, preemphasis=0.97, n_fft=1024, win_length=800, hop_length=320, window='hann',
    window_periodic=False, center=True, pad_mode='reflect', power=2.0, n_mels=128, f_min=0.0, f_max=15000.0,
    mel_banks='kaldi', mel_norm=None, htk=True, log='ln', log_offset=1e-5, shift=4.5, scale=5.0)

# MobileNetV3-Large's inverted residual blocks at width 1 (the MobileNetV3 paper, table 1):
# (input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride)
MOBILENET_V3_BLOCKS = [
    (16, 3, 16, 16, False, 'relu', 1),
    (16, 3, 64, 24, False, 'relu', 2),
    (24, 3, 72, 24, False, 'relu', 1),
    (24, 5, 72, 40, True, 'relu', 2),
    (40, 5, 120, 40, True, 'relu', 1),
    (40, 5, 120, 40, True, 'relu', 1),
    (40, 3, 240, 80, False, 'hardswish', 2),
    (80, 3, 200, 80, False, 'hardswish', 1),
    (80, 3, 184, 80, False, 'hardswish', 1),
    (80, 3, 184, 80, False, 'hardswish', 1),
    (80, 3, 480, 112, True, 'hardswish', 1),
    (112, 3, 672, 112, True, 'hardswish', 1),
    (112, 5, 672, 160, True, 'hardswish', 2),
    (160, 5, 960, 160, True, 'hardswish', 1),
    (160, 5, 960, 160, True, 'hardswish', 1),
]
LAST_CHANNEL = 1280      # width of the head's hidden layer at width 1
SE_REDUCTION = 4         # squeeze-excitation bottleneck: channels / 4
HEAD_DROPOUT = 0.2       # EfficientAT's dropout before the last Linear

# conv-bn-act with EfficientAT's BatchNorm: PyTorch's BatchNorm2d(eps=0.001, momentum=0.01) (Paddle's
# momentum weighs the old statistics).
_conv_bn_act = partial(conv_bn_act, norm=partial(nn.BatchNorm2D, momentum=0.99, epsilon=1e-3))


class ConcurrentSE(nn.Layer):
    """EfficientAT's container of squeeze-excitation layers over several axes. Its pretrained
    models use the channel axis alone, where aggregating the single output is the identity."""

    def __init__(self, channels):
        super().__init__()
        self.conc_se_layers = nn.LayerList([SqueezeExcitation(channels, make_divisible(channels // SE_REDUCTION))])

    def forward(self, x):
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Layer):
    """[1x1 expand] -> depthwise conv -> [squeeze-excitation] -> 1x1 project, + input when shapes allow."""

    def __init__(self, in_channels, kernel, expanded, out_channels, use_se, activation, stride):
        super().__init__()
        layers = []
        if expanded != in_channels:
            layers.append(_conv_bn_act(in_channels, expanded, 1, activation=activation))
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride=stride, groups=expanded, activation=activation))
        if use_se:
            layers.append(ConcurrentSE(expanded))
        layers.append(_conv_bn_act(expanded, out_channels, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_residual else out


def mlp_head(in_channels, emb_size, audioset_head, num_classes, dropout):
    """EfficientAT's `mlp` head, numbered as theirs: pool, flatten, Linear (2), Hardswish, Dropout,
    and with the AudioSet head Linear (5)."""
    head = [nn.AdaptiveAvgPool2D(1), nn.Flatten(1), nn.Linear(in_channels, emb_size), nn.Hardswish(),
            nn.Dropout(dropout)]
    if audioset_head:
        head.append(nn.Linear(emb_size, num_classes))
    return nn.Sequential(*head)


class MobileNetV3(Backbone):
    """EfficientAT's MN backbone: log-mel [batch, frames, n_mels] -> embedding -> AudioSet logits."""

    def __init__(self, width_mult=1.0, audioset_head=True, num_classes=AUDIOSET_CLASSES, dropout=HEAD_DROPOUT):
        super().__init__()
        blocks = [(make_divisible(i * width_mult), k, make_divisible(e * width_mult),
                   make_divisible(o * width_mult), se, act, s) for i, k, e, o, se, act, s in MOBILENET_V3_BLOCKS]
        last_in = blocks[-1][3]
        layers = [_conv_bn_act(1, blocks[0][0], 3, stride=2, activation='hardswish')]
        layers += [InvertedResidual(*block) for block in blocks]
        layers.append(_conv_bn_act(last_in, 6 * last_in, 1, activation='hardswish'))
        self.features = nn.Sequential(*layers)
        self.emb_size = make_divisible(LAST_CHANNEL * width_mult)
        self.classifier = mlp_head(6 * last_in, self.emb_size, audioset_head, num_classes, dropout)
        self.has_audioset_head = audioset_head

    def pooled_features(self, features):
        """The last feature map averaged over frequency and time [batch, 6 * last block channels]:
        what EfficientAT's model returns beside its logits."""
        x = features.unsqueeze(1).transpose([0, 1, 3, 2])   # -> [batch, 1, n_mels, frames]
        return self.features(x).mean(axis=[2, 3])

    def forward_features(self, features):
        """Log-mel [batch, frames, n_mels] -> embedding [batch, emb_size]."""
        return self.classifier[3](self.classifier[2](self.pooled_features(features)))

    def forward_frames(self, features):
        """Time-resolved embeddings [batch, frames', emb_size], frames' = frames / 32: the last
        feature map averaged over frequency only, through the head's first Linear + Hardswish
        frame by frame."""
        x = features.unsqueeze(1).transpose([0, 1, 3, 2])   # -> [batch, 1, n_mels, frames]
        x = self.features(x).mean(axis=2).transpose([0, 2, 1])  # [batch, frames', channels]
        return self.classifier[3](self.classifier[2](x))

    def audioset_logits(self, embedding):
        """Embedding -> AudioSet logits [batch, 527] (or [..., 527] for frame embeddings)."""
        return self.classifier[5](self.classifier[4](embedding))


def build(arch, audioset_head=False):
    """An EfficientAT MobileNetV3 (`mn`) of width multiplier `arch` (0.4 for mn04, ..., 4.0 for mn40)."""
    return MobileNetV3(arch, audioset_head)


# --- checkpoints ------------------------------------------------------------------------------

def _is_linear_weight(name):
    return name.endswith(('.fc1.weight', '.fc2.weight')) or name in ('classifier.2.weight', 'classifier.5.weight')


def _check_frontend_buffer(name, value, source):
    """EfficientAT's front-end buffers carry no learnt weights; they must match our front end."""
    expected = {'mel.preemphasis_coefficient': [-EFFICIENTAT_FRONTEND.preemphasis, 1.0],
                'mel.window': window('hann', EFFICIENTAT_FRONTEND.win_length, periodic=False)}.get(name)
    if expected is None:
        raise CheckpointError(f'{source}: unknown front-end tensor {name!r} in an EfficientAT checkpoint')
    if not np.allclose(np.ravel(value), expected, atol=1e-6):
        raise CheckpointError(f'{source}: its front-end tensor {name!r} differs from EfficientAT\'s front end '
                              f'({EFFICIENTAT_FRONTEND.win_length}-sample symmetric Hann, pre-emphasis '
                              f'{EFFICIENTAT_FRONTEND.preemphasis}); these weights were trained on other features')


def checkpoint_filter(state, source):
    """An EfficientAT `mn` state dict in PyTorch's layout (or already in ours) -> our names and shapes.

    PyTorch's BatchNorm statistics are renamed (`running_mean` -> `_mean`, `running_var` ->
    `_variance`), `num_batches_tracked` is dropped, Linear weights are transposed to [in, out],
    and front-end buffers (`mel.*`) are checked against EFFICIENTAT_FRONTEND and dropped. Whether
    Linear weights need transposing is told by the BatchNorm names, so a file must not mix layouts.
    """
    torch_layout = has_torch_batchnorm(state)
    paddle_layout = any(n.endswith(('._mean', '._variance')) for n in state)
    if torch_layout and paddle_layout:
        raise CheckpointError(f'{source}: mixes PyTorch BatchNorm names (running_mean) with Paddle ones (_mean); '
                              f'save it again from one framework')
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        if name.startswith('mel.'):
            _check_frontend_buffer(name, value, source)
            continue
        if not name.startswith(('features.', 'classifier.')):
            raise CheckpointError(f'{source}: {name!r} is not a parameter of an EfficientAT MobileNetV3 '
                                  f'(whose names start with features. or classifier.); is it a checkpoint of '
                                  f'another model family?')
        key = paddle_bn_name(name)
        if key is None:   # PyTorch's BatchNorm step counter
            continue
        if torch_layout and _is_linear_weight(name) and value.ndim == 2:
            value = value.T
        out[key] = value
    return out


# --- registered models ------------------------------------------------------------------------

RELEASE_URL = 'https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/'

# The stem and four blocks stride by 2 with odd kernels padded symmetrically: output j of each is
# centred on input 2j, so network frame j is centred on front-end frame 32 j.
FRAME_GEOMETRY = FrameGeometry(stride=2 * 2 ** sum(1 for *_, stride in MOBILENET_V3_BLOCKS if stride == 2), offset=0)


def _release(width, filename, params, gmacs, audioset_map):
    """A row of MODELS for one of EfficientAT's release files: a torch.save'd state dict of float32
    tensors, 4 bytes per parameter, plus the BatchNorm statistics (under 400 KB even for mn40) and the
    framing of ~300 named tensors."""
    weights = PretrainedCfg(url=RELEASE_URL + filename, filename=filename, file_format='torch',
                            size_range=(4 * params, 4 * params + (1 << 20)), license='MIT',
                            frontend=EFFICIENTAT_FRONTEND, frame_geometry=FRAME_GEOMETRY, labels='audioset',
                            classifier='classifier.5', description='AudioSet tagger (EfficientAT, PyTorch release)')
    return width, weights, {'params': params, 'macs_10s': gmacs * 1e9, 'audioset_map': audioset_map}


# name: (width multiplier, release file, parameters with the AudioSet head, GMACs per 10-s clip, AudioSet
# mAP). The parameter counts are our builders' (they agree with EfficientAT's README: mn04 0.983 M,
# mn05 1.43 M, mn10 4.88 M, mn20 17.91 M, mn30 39.09 M, mn40 68.43 M); MACs and mAP are as published there.
MODELS = {
    'efficientat_mn04': _release(0.4, 'mn04_as_mAP_432.pt', 983599, 0.11, 0.432),
    'efficientat_mn05': _release(0.5, 'mn05_as_mAP_443.pt', 1431239, 0.16, 0.443),
    'efficientat_mn10': _release(1.0, 'mn10_as_mAP_471.pt', 4876831, 0.54, 0.471),
    'efficientat_mn20': _release(2.0, 'mn20_as_mAP_478.pt', 17909287, 2.06, 0.478),
    'efficientat_mn30': _release(3.0, 'mn30_as_mAP_482.pt', 39086367, 4.55, 0.482),
    'efficientat_mn40': _release(4.0, 'mn40_as_mAP_484.pt', 68427303, 8.03, 0.484),
    'efficientat_mn40_ext': _release(4.0, 'mn40_as_ext_mAP_487.pt', 68427303, 8.03, 0.487),
}


def _register_all():
    for name, (width, weights, published) in MODELS.items():
        register_model(ModelSpec(
            name=name, family=FAMILY, build=partial(build, width), emb_size=make_divisible(LAST_CHANNEL * width),
            checkpoint_filter=checkpoint_filter, weights=weights,
            # The front end's reflect padding needs more than n_fft / 2 samples; every convolution is
            # padded, so the network itself takes any clip of one frame or more.
            min_seconds=0.1, audioset_head='classifier.5', head_dropout=HEAD_DROPOUT, published=published))


_register_all()
