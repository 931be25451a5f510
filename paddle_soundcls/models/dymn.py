"""EfficientAT's dynamic MobileNets (`dymn`, Schmid et al., "Dynamic Convolutional Neural Networks
as Efficient Pre-trained Audio Models", IEEE/ACM TASLP 2024) in Paddle.

The networks of github.com/fschmid56/EfficientAT (MIT licence), models/dymn/ there, with their
defaults: MobileNetV3-Large's blocks, each made dynamic in three ways from one context vector
computed from the block's input (so it differs from clip to clip):
- dynamic convolution: the expansion, depthwise and projection convolutions each hold K = 4
  kernels, mixed with weights softmax(Linear(context) / temperature);
- dynamic ReLU (DyReLU-B): per channel, the maximum of M = 2 linear maps whose slopes and
  intercepts come from the context;
- coordinate attention: the output is gated by a sigmoid over frequency and one over time.
The `mlp` head, no dilation, strides 2-2-2-2. Sub-layers are named and numbered as theirs are,
so their parameter names carry over one to one (`layers.4.depth_conv.residuals.0.weight`,
`layers.4.context_gen.conv_f.bias`, `classifier.5.weight`, ...); checkpoint_filter converts the
tensor layouts (see there).

Export: upstream computes each clip's convolution with its own mixed kernel by folding the
batch into the convolution's groups, which makes the graph depend on the batch size. Here no
shape depends on it, so the network exports to a static graph and ONNX with a dynamic batch:
- a 1x1 dynamic convolution mixes its K kernels per clip ([batch, K] x [K, out * in] ->
  [batch, out, in]) and applies them with a batched matrix product on [batch, in, F * T];
- a depthwise dynamic convolution runs one ordinary depthwise convolution with the K kernels of
  every channel side by side (C * K outputs), then weighs the K outputs of each channel by the
  clip's mixing weights and sums them: by linearity, the convolution with the mixed kernel. It
  computes K times the depthwise multiply-adds, which are small: for dymn10 on a 10-s clip, 47 M
  of the 577 M that upstream (and the complexity report) count, so 142 M more in all.
Only the frequency size (from n_mels) is read from a shape, and it is fixed in any export.

Temperature: upstream divides the kernel-mixing logits by a temperature that its training
anneals (from 30 to 1 on AudioSet). The models are used as their training left them: 1 for the
AudioSet taggers (`get_model(pretrained_name=...)`'s pretrain_final_temp default), 30 for the
ImageNet-pretrained backbones (the value EfficientAT starts AudioSet training from, its
`--pretrain_final_temp=30`). The Trainer keeps it fixed; `DyMN.set_temperature` changes it.

The backbone takes log-mel features [batch, frames, n_mels] from EFFICIENTAT_FRONTEND (the MNs'
front end). Its embedding is the output of the head's first Linear + Hardswish, as for the MNs
(upstream's forward returns (logits, the last feature map averaged); that average is
`pooled_features` here).
"""
import math
import re
from functools import partial

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ArgumentError, CheckpointError
from .base import Backbone
from .builder import has_torch_batchnorm, paddle_bn_name
from .efficientat import (EFFICIENTAT_FRONTEND, FRAME_GEOMETRY, HEAD_DROPOUT, LAST_CHANNEL, MOBILENET_V3_BLOCKS,
                          RELEASE_URL, _check_frontend_buffer, mlp_head)
from .layers import ACTIVATIONS, conv_bn_act, make_divisible
from .registry import AUDIOSET_CLASSES, ModelSpec, PretrainedCfg, register_model

FAMILY = 'dymn'

# --- the network ------------------------------------------------------------------------------

KERNELS = 4                # K: kernels per dynamic convolution (upstream's dyconv_k)
RELU_MAPS = 2              # M: linear maps per channel of DyReLU-B (upstream's dyrelu_k)
# Context size H: the expanded channels / 4, kept within [32, 128] x width (upstream's context_ratio,
# min_context_size, max_context_size).
CONTEXT_RATIO, MIN_CONTEXT, MAX_CONTEXT = 4, 32, 128
AUDIOSET_TEMPERATURE = 1.0     # the kernel-mixing temperature of the AudioSet taggers
IMAGENET_TEMPERATURE = 30.0    # ... and of the ImageNet-pretrained backbones (see the module docstring)


def relu_constants(m=RELU_MAPS):
    """DyReLU-B's fixed scales and offsets of its 2M coefficients (M slopes: the first in [0, 2]
    around 1, the others in [-1, 1] around 0; M intercepts in [-0.5, 0.5]): upstream keeps them
    as buffers `lambdas` and `init_v` in its state dicts."""
    return [1.0] * m + [0.5] * m, [1.0] + [0.0] * (2 * m - 1)


# PyTorch's BatchNorm2d(eps=0.001, momentum=0.01), as everywhere in EfficientAT.
_norm = partial(nn.BatchNorm2D, momentum=0.99, epsilon=1e-3)


class DynamicConv(nn.Conv2D):
    """A convolution with K kernels mixed per clip by attention over a context vector: a 1x1
    convolution (groups=1) or a depthwise one (groups = in = out channels), no bias.

    It is a Conv2D holding the K kernels stacked along the output axis, weight
    [K * out, in / groups, k, k] (kernel i at rows i * out ... (i + 1) * out - 1: upstream's
    [1, 1, K, out * in / groups * k * k] reshaped), so the tools that read Conv2D layers (the
    complexity count: the multiply-adds of one mixed kernel, as upstream counts them) see it as
    a convolution. It is called as layer(x, context), never through Conv2D's forward.
    """

    def __init__(self, in_channels, out_channels, context_dim, kernel, stride=1, groups=1, k=KERNELS,
                 temperature=AUDIOSET_TEMPERATURE):
        if not (groups == 1 and kernel == 1 and stride == 1) and not (groups == in_channels == out_channels):
            raise ArgumentError(f'DynamicConv is 1x1 (groups=1, stride 1) or depthwise (groups = channels); got '
                                f'{in_channels} -> {out_channels}, kernel {kernel}, stride {stride}, groups {groups}')
        # Upstream's initialisation: He normal (fan out) of each of the K kernels.
        std = math.sqrt(2.0 / (out_channels * kernel * kernel))
        super().__init__(in_channels, k * out_channels, kernel, stride=stride, padding=(kernel - 1) // 2,
                         groups=groups, bias_attr=False,
                         weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, std)))
        self.k, self.kernel, self.conv_stride, self.depthwise = k, kernel, stride, groups > 1
        self.in_ch, self.out_ch = in_channels, out_channels
        self.temperature = float(temperature)
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))   # the K mixing logits (upstream's name)

    def kernel_attention(self, context):
        """The clip's weights over the K kernels [batch, K] for context [batch, H]."""
        return F.softmax(self.residuals(context) / self.temperature, axis=-1)

    def forward(self, x, context):
        attention = self.kernel_attention(context)                           # [batch, K]
        if self.depthwise:
            return self._depthwise(x, attention)
        # 1x1: each clip's mixed kernel [batch, out, in], then one batched matrix product.
        mixed = paddle.matmul(attention, self.weight.reshape([self.k, -1])).reshape([-1, self.out_ch, self.in_ch])
        out = paddle.matmul(mixed, x.flatten(2))                            # [batch, out, F * T]
        return out.reshape([0, self.out_ch, x.shape[2], -1])   # batch copied, frames inferred

    def _depthwise(self, x, attention):
        # One depthwise convolution with channel c's K kernels at outputs c * K ... c * K + K - 1
        # (groups = C gives each channel K outputs), then the K outputs of each channel mixed.
        c, k, size = self.out_ch, self.k, self.kernel
        stacked = self.weight.reshape([k, c, size, size]).transpose([1, 0, 2, 3]).reshape([c * k, 1, size, size])
        out = F.conv2d(x, stacked, stride=self.conv_stride, padding=(size - 1) // 2, groups=c)
        freq = out.shape[2]
        out = out.reshape([0, c, k, -1]) * attention.reshape([-1, 1, k, 1])
        return out.sum(axis=2).reshape([0, c, freq, -1])


class DyReLUB(nn.Layer):
    """Dynamic ReLU, variant B: per channel max_m(a_m x + b_m), with the M slopes and intercepts of
    every channel from the context (2 sigmoid - 1, scaled and offset by relu_constants)."""

    def __init__(self, channels, context_dim, m=RELU_MAPS):
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        self.lambdas, self.init = relu_constants(m)   # plain numbers: constants of the exported graph

    def forward(self, x, context):
        theta = (2 * F.sigmoid(self.coef_net(context)) - 1).reshape([-1, self.channels, 2 * self.m])
        coef = [(theta[:, :, i] * self.lambdas[i] + self.init[i]).unsqueeze([2, 3]) for i in range(2 * self.m)]
        out = x * coef[0] + coef[self.m]
        for i in range(1, self.m):
            out = paddle.maximum(out, x * coef[i] + coef[self.m + i])
        return out


class ContextGen(nn.Layer):
    """The block's context from its input x [batch, C, F, T]: the means over time (one per
    frequency) and over frequency (one per frame) go through a shared 1x1 conv + BatchNorm +
    Hardswish; their overall mean is the context vector [batch, H] of the dynamic convolutions and
    ReLU, and a 1x1 conv of each sequence (pooled to the block's stride) gives the coordinate
    attention over frequency [batch, C', F', 1] and time [batch, C', 1, T']."""

    def __init__(self, context_dim, in_channels, expanded, stride):
        super().__init__()
        self.joint_conv = nn.Conv2D(in_channels, context_dim, 1, bias_attr=False)
        self.joint_norm = _norm(context_dim)
        self.joint_act = nn.Hardswish()
        self.conv_f = nn.Conv2D(context_dim, expanded, 1)
        self.conv_t = nn.Conv2D(context_dim, expanded, 1)
        self.stride = stride

    def _joint(self, x):
        return self.joint_act(self.joint_norm(self.joint_conv(x)))

    def forward(self, x):
        # The shared transform acts on each position alone, so applying it to the two sequences
        # apart equals upstream's transform of their concatenation.
        h_f = self._joint(x.mean(axis=3, keepdim=True))                             # [batch, H, F, 1]
        h_t = self._joint(x.mean(axis=2, keepdim=True).transpose([0, 1, 3, 2]))     # [batch, H, T, 1]
        context = paddle.concat([h_f, h_t], axis=2).mean(axis=[2, 3])               # [batch, H]
        h_t = h_t.transpose([0, 1, 3, 2])                                           # [batch, H, 1, T]
        if self.stride > 1:
            # Upstream's AvgPool2d(3, stride, padding 1), whose padding counts in the mean.
            h_f = F.avg_pool2d(h_f, [3, 1], stride=[self.stride, 1], padding=[1, 0], exclusive=False)
            h_t = F.avg_pool2d(h_t, [1, 3], stride=[1, self.stride], padding=[0, 1], exclusive=False)
        return context, self.conv_f(h_f), self.conv_t(h_t)


class DynamicBlock(nn.Layer):
    """Upstream's DY_Block: [dynamic 1x1 expand, BN, ReLU/Hardswish] -> dynamic depthwise conv, BN,
    DyReLU-B -> coordinate attention -> dynamic 1x1 project, BN, + input when shapes allow."""

    def __init__(self, in_channels, kernel, expanded, out_channels, activation, stride, width_mult, temperature):
        super().__init__()
        context_dim = min(max(make_divisible(expanded // CONTEXT_RATIO), make_divisible(MIN_CONTEXT * width_mult)),
                          make_divisible(MAX_CONTEXT * width_mult))
        dynamic = partial(DynamicConv, context_dim=context_dim, temperature=temperature)
        # Created in upstream's order, so the state dicts list the same names in the same order.
        if expanded != in_channels:
            self.exp_conv = dynamic(in_channels, expanded, kernel=1)
            self.exp_norm = _norm(expanded)
            self.exp_act = ACTIVATIONS[activation]()
        else:
            self.exp_conv = None
        self.depth_conv = dynamic(expanded, expanded, kernel=kernel, stride=stride, groups=expanded)
        self.depth_norm = _norm(expanded)
        self.depth_act = DyReLUB(expanded, context_dim)
        self.proj_conv = dynamic(expanded, out_channels, kernel=1)
        self.proj_norm = _norm(out_channels)
        self.context_gen = ContextGen(context_dim, in_channels, expanded, stride)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        context, att_f, att_t = self.context_gen(x)
        out = x
        if self.exp_conv is not None:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, context)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, context)), context)
        out = out * F.sigmoid(att_f) * F.sigmoid(att_t)                 # coordinate attention
        out = self.proj_norm(self.proj_conv(out, context))
        return out + x if self.use_residual else out


class DyMN(Backbone):
    """EfficientAT's DyMN backbone: log-mel [batch, frames, n_mels] -> embedding -> AudioSet logits."""

    def __init__(self, width_mult=1.0, audioset_head=True, num_classes=AUDIOSET_CLASSES, dropout=HEAD_DROPOUT,
                 temperature=AUDIOSET_TEMPERATURE):
        super().__init__()
        # MobileNetV3-Large's table (the MNs'); every block is dynamic and none has squeeze-excitation.
        blocks = [(make_divisible(i * width_mult), k, make_divisible(e * width_mult), make_divisible(o * width_mult),
                   act, s) for i, k, e, o, _se, act, s in MOBILENET_V3_BLOCKS]
        last_in = blocks[-1][3]
        self.layers = nn.LayerList()   # before in_c, as upstream's, so the state dicts list the same order
        self.in_c = conv_bn_act(1, blocks[0][0], 3, stride=2, activation='hardswish', norm=_norm)
        for block in blocks:
            self.layers.append(DynamicBlock(*block, width_mult, temperature))
        self.out_c = conv_bn_act(last_in, 6 * last_in, 1, activation='hardswish', norm=_norm)
        self.emb_size = make_divisible(LAST_CHANNEL * width_mult)
        self.classifier = mlp_head(6 * last_in, self.emb_size, audioset_head, num_classes, dropout)
        self.has_audioset_head = audioset_head

    def set_temperature(self, temperature):
        """Set the kernel-mixing temperature of every dynamic convolution (a training schedule's step)."""
        for layer in self.sublayers():
            if isinstance(layer, DynamicConv):
                layer.temperature = float(temperature)

    def feature_map(self, features):
        """Log-mel [batch, frames, n_mels] -> the last feature map [batch, channels, n_mels / 32, frames / 32]."""
        x = self.in_c(features.unsqueeze(1).transpose([0, 1, 3, 2]))   # [batch, 1, n_mels, frames] in
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def pooled_features(self, features):
        """The last feature map averaged over frequency and time [batch, 6 * last block channels]:
        what EfficientAT's model returns beside its logits."""
        return self.feature_map(features).mean(axis=[2, 3])

    def forward_features(self, features):
        """Log-mel [batch, frames, n_mels] -> embedding [batch, emb_size]."""
        return self.classifier[3](self.classifier[2](self.pooled_features(features)))

    def forward_frames(self, features):
        """Time-resolved embeddings [batch, frames', emb_size], frames' = frames / 32: the last
        feature map averaged over frequency only, through the head's first Linear + Hardswish
        frame by frame. (Each block's context and coordinate attention still see the whole clip.)"""
        x = self.feature_map(features).mean(axis=2).transpose([0, 2, 1])   # [batch, frames', channels]
        return self.classifier[3](self.classifier[2](x))

    def audioset_logits(self, embedding):
        """Embedding -> AudioSet logits [batch, 527] (or [..., 527] for frame embeddings)."""
        return self.classifier[5](self.classifier[4](embedding))


def build(arch, temperature=AUDIOSET_TEMPERATURE, audioset_head=False):
    """An EfficientAT DyMN of width multiplier `arch` (0.4 for dymn04, 1.0 for dymn10, 2.0 for dymn20)."""
    return DyMN(arch, audioset_head, temperature=temperature)


# --- checkpoints ------------------------------------------------------------------------------

_BN = r'(weight|bias|_mean|_variance|running_mean|running_var|num_batches_tracked)'
# Every tensor name of a DyMN state dict, upstream's or ours, at any width.
_NAME = re.compile('|'.join([
    rf'in_c\.0\.weight', rf'in_c\.1\.{_BN}', rf'out_c\.0\.weight', rf'out_c\.1\.{_BN}',
    r'classifier\.[25]\.(weight|bias)',
    r'layers\.\d+\.(exp|depth|proj)_conv\.(weight|residuals\.0\.weight|residuals\.0\.bias)',
    rf'layers\.\d+\.((exp|depth|proj)_norm|context_gen\.joint_norm)\.{_BN}',
    r'layers\.\d+\.depth_act\.(coef_net\.0\.weight|coef_net\.0\.bias|lambdas|init_v)',
    r'layers\.\d+\.context_gen\.(joint_conv\.weight|conv_[ft]\.(weight|bias))',
]))
_RELU_CONSTANTS = dict(zip(('lambdas', 'init_v'), relu_constants()))


def _is_linear_weight(name):
    return name.endswith(('.residuals.0.weight', '.coef_net.0.weight')) or name in ('classifier.2.weight',
                                                                                     'classifier.5.weight')


def _reshape_dynamic(state, source):
    """The dynamic kernels of upstream's layout, [1, 1, K, out * in/groups * k * k], -> ours,
    [K * out, in/groups, k, k]. `out` is the channel count of the BatchNorm that follows the conv;
    the depthwise conv has one input per group and a square kernel, the 1x1 convs a 1x1 kernel."""
    for name in [n for n in state if re.fullmatch(r'layers\.\d+\.(exp|depth|proj)_conv\.weight', n)]:
        value = state[name]
        if value.ndim == 4 and value.shape[:2] == (1, 1):
            norm = name.replace('_conv.weight', '_norm.weight')
            if norm not in state:
                raise CheckpointError(f'{source}: {name!r} has no {norm!r} beside it to give its output channels')
            k, out, per_kernel = value.shape[2], state[norm].shape[0], value.shape[3]
            if name.endswith('.depth_conv.weight'):
                inner, size = 1, int(round(math.sqrt(per_kernel / out)))
            else:
                inner, size = per_kernel // out, 1
            if out * inner * size * size != per_kernel:
                raise CheckpointError(f'{source}: {name!r} holds {per_kernel} values per kernel, not {out} outputs x '
                                      f'{"a square kernel" if inner == 1 else f"{inner} inputs"}')
            state[name] = value.reshape(k * out, inner, size, size)
    return state


def checkpoint_filter(state, source):
    """An EfficientAT DyMN state dict in PyTorch's layout (or already in ours) -> our names and shapes.

    PyTorch's BatchNorm statistics are renamed (`running_mean` -> `_mean`, `running_var` ->
    `_variance`), `num_batches_tracked` is dropped, Linear weights are transposed to [in, out],
    each dynamic convolution's K kernels [1, 1, K, out * in/groups * k * k] become
    [K * out, in/groups, k, k], DyReLU's constant buffers (`lambdas`, `init_v`) and the front-end
    buffers (`mel.*`) are checked and dropped. Whether Linear weights need transposing is told by
    the BatchNorm names, so a file must not mix layouts.
    """
    torch_layout = has_torch_batchnorm(state)
    if torch_layout and any(n.endswith(('._mean', '._variance')) for n in state):
        raise CheckpointError(f'{source}: mixes PyTorch BatchNorm names (running_mean) with Paddle ones (_mean); '
                              f'save it again from one framework')
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        if name.startswith('mel.'):
            _check_frontend_buffer(name, value, source)
            continue
        if not _NAME.fullmatch(name):
            hint = (' (an EfficientAT MobileNetV3, `mn`: use an efficientat_mn model)' if name.startswith('features.')
                    else '; is it a checkpoint of another model family?')
            raise CheckpointError(f'{source}: {name!r} is not a parameter of an EfficientAT DyMN{hint}')
        constant = _RELU_CONSTANTS.get(name.rpartition('.')[2])
        if constant is not None:
            if not np.allclose(np.ravel(value), constant):
                raise CheckpointError(f'{source}: {name!r} is {np.ravel(value).tolist()}, not DyReLU-B\'s '
                                      f'constants {constant}; these weights are of another variant')
            continue
        key = paddle_bn_name(name)
        if key is None:   # PyTorch's BatchNorm step counter
            continue
        if torch_layout and _is_linear_weight(name) and value.ndim == 2:
            value = value.T
        out[key] = value
    return _reshape_dynamic(out, source)


# --- registered models ------------------------------------------------------------------------

def _release(width, filename, params, published=None, imagenet=False):
    """A row of MODELS for one of EfficientAT's DyMN release files: a torch.save'd state dict of
    float32 tensors, 4 bytes per parameter, plus the BatchNorm statistics and the framing of ~900
    named tensors (under 1 MB for dymn20)."""
    weights = PretrainedCfg(url=RELEASE_URL + filename, filename=filename, file_format='torch',
                            size_range=(4 * params, 4 * params + (1 << 21)), license='MIT',
                            frontend=EFFICIENTAT_FRONTEND, frame_geometry=FRAME_GEOMETRY,
                            labels='imagenet-1k' if imagenet else 'audioset', classifier='classifier.5',
                            description=('ImageNet-pretrained backbone' if imagenet else 'AudioSet tagger')
                            + ' (EfficientAT DyMN, PyTorch release)')
    return width, weights, {'params': params, **(published or {})}


def _audioset(width, filename, params, gmacs, audioset_map):
    return _release(width, filename, params, {'macs_10s': gmacs * 1e9, 'audioset_map': audioset_map})


def _imagenet(width, filename, params):
    # The file's classifier.5 predicts the 1000 ImageNet classes (upstream drops it when it loads
    # the file for audio); the backbone alone is pretrained, so these models have no AudioSet head.
    return _release(width, filename, params, imagenet=True)


# name: (width multiplier, release file, published figures). The parameter counts are our builders'
# with the AudioSet head (they equal upstream's `sum(p.numel() for p in model.parameters())`;
# EfficientAT's README rounds the count with the BatchNorm statistics: 1.97 M, 10.57 M, 40.02 M)
# and without it for the ImageNet backbones. MACs and mAP are as EfficientAT's README publishes them.
MODELS = {
    'efficientat_dymn04': _audioset(0.4, 'dymn04_as.pt', 1961239, 0.12, 0.450),
    'efficientat_dymn10': _audioset(1.0, 'dymn10_as.pt', 10548479, 0.58, 0.477),
    'efficientat_dymn20': _audioset(2.0, 'dymn20_as_mAP_493.pt', 39966143, 2.2, 0.491),
    'efficientat_dymn04_im': _imagenet(0.4, 'dymn04_im.pt', 1690888),
    'efficientat_dymn10_im': _imagenet(1.0, 'dymn10_im.pt', 9873392),
    'efficientat_dymn20_im': _imagenet(2.0, 'dymn20_im.pt', 38616496),
}


def _register_all():
    for name, (width, weights, published) in MODELS.items():
        imagenet = weights.labels == 'imagenet-1k'
        temperature = IMAGENET_TEMPERATURE if imagenet else AUDIOSET_TEMPERATURE
        register_model(ModelSpec(
            name=name, family=FAMILY, build=partial(build, width, temperature),
            emb_size=make_divisible(LAST_CHANNEL * width), checkpoint_filter=checkpoint_filter, weights=weights,
            # As for the MNs: every convolution and pooling is padded, so one frame or more will do.
            min_seconds=0.1, audioset_head=None if imagenet else 'classifier.5', head_dropout=HEAD_DROPOUT,
            published=published))


_register_all()
