"""CP-ResNet: receptive-field-regularised ResNets to train from scratch, and the frequency-damped variant.

Koutini et al., "Receptive field regularization techniques for audio classification and tagging
with deep convolutional neural networks", IEEE/ACM TASLP 2021; the frequency damping of Koutini
et al., "Low-complexity models for acoustic scene classification based on receptive field
regularization and frequency damping", DCASE 2020 workshop. The network and its settings are
those of CPJKU's DCASE code: models/cp/cp_resnet.py of CPJKU/cpjku_dcase22, whose submission
arguments (rho 8, blocks (2, 1, 1), stage 2 in two groups, 36 channels cut from stage 3) are the
defaults of models/cp_resnet.py in fschmid56/cpjku_dcase23, the 128 K-parameter CP-ResNet teachers of
CPJKU's DCASE 2023 submission (which, with PaSST, taught its CP-Mobile students); the damping is
Conv2dDamped of kkoutini/cpjku_dcase20 (models/cp_resnet_freq_damp.py). Neither comes with weights
here: both are meant to be trained, e.g. as a teacher for a smaller student on your own classes.

Network, on log-mel input laid out [batch, 1, mel bins, frames] as in the original:
    in_c     5x5 convolution, stride 2, padding 1, 1 -> base channels, BatchNorm, ReLU
    stage1   a 2x2 max pooling, then base-channel residual blocks, a max pooling over frequency only
             (2x1) after blocks 1, 2 and 4
    stage2   blocks to base x multiplier channels (minus cut_channels_s2), grouped convolutions
    stage3   blocks to base x multiplier^2 channels (minus cut_channels_s3)
    block    conv1 (k1 x k1) -> BN -> ReLU -> conv2 (k2 x k2) -> BN, plus the input (through a 1x1
             conv + BN where the channels change), ReLU; no bias, 'same' padding, stride 1
    head     the original maps the last feature map to class scores with a 1x1 conv and BatchNorm, then
             averages over frequency and time. Here the embedding is that last feature map averaged
             (emb_size = stage 3's channels) and the classifier is the Module's Linear on it; in
             evaluation mode they compute the same function (`classifier_from_feed_forward` folds a
             trained original head into the Module's).

rho sets which convolutions are 3x3 rather than 1x1, and so the receptive field: in network
order from the second block of stage 1 (block 1 of stage 1 always has a 3x3 then a 1x1), the
n-th convolution is 3x3 when rho >= n + 2 (`kernel_sizes`). Every 3x3 widens the field by twice
the current stride on each axis, so a larger rho sees more: `receptive_field(rho)` gives
(mel bins, frames); `cpresnet` (rho 8) sees 155 bins (of 256) by 55 frames (1.3 s at 23.4 ms a
frame; a 1-s clip has 43 frames). Past rho 11 nothing changes with (2, 1, 1) blocks.

Frequency damping (`cpresnet_damped`): every convolution uses its weight times a fixed mask that
falls linearly along the kernel's frequency axis from 1 at the centre row to 0.01 at its first
and last rows (rows 0.01, 1, 0.01 of a 3x3; 0.01, 0.505, 1, 0.505, 0.01 of in_c's 5x5). It
leaves the parameters and their names as they are and damps what each layer takes from
neighbouring frequencies: a regularisation that the damping paper relates to a smaller receptive
field over frequency.

Checkpoints: sub-layers are named as the original's (`in_c.0.weight`, `stage2.block1.shortcut.conv.weight`,
...), so PyTorch state dicts of CPJKU's networks (bare, or inside a Lightning module under `net.` or
`model.`) load through `checkpoint_filter`; the classifier (`feed_forward.*`, for the original's
classes) is passed on and reported unused, or folded into the Module's by `classifier_from_feed_forward`.
"""
import math
from functools import lru_cache, partial

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ArgumentError, CheckpointError
from ..features.config import FrontendConfig
from ..frames import FrameGeometry
from .base import Backbone
from .builder import paddle_bn_name
from .registry import ModelSpec, register_model

FAMILY = 'cpresnet'

# The DCASE 2023 CP-ResNet teachers' front end (run_teacher_validation.py of fschmid56/cpjku_dcase23:
# AugmentMelSTFT in evaluation mode): pre-emphasis 0.97, torch.stft with a symmetric Hann window of
# 3072 centred in 4096 points, hop 750, centred frames (reflect padding), power spectrum, 256 Kaldi
# mel banks from 0 Hz to 15.5 kHz (fmax=None there means 16 kHz less half the 1 kHz fmax
# augmentation range), ln(mel + 1e-5), then (x + 4.5) / 5. The DCASE 2022 code computed the same
# steps with n_fft and window 2048, hop 744 and banks up to 16 kHz.
CPRESNET_FRONTEND = FrontendConfig(
    sample_rate=32000, preemphasis=0.97, n_fft=4096, win_length=3072, hop_length=750, window='hann',
    window_periodic=False, center=True, pad_mode='reflect', power=2.0, n_mels=256, f_min=0.0, f_max=15500.0,
    mel_banks='kaldi', mel_norm=None, htk=True, log='ln', log_offset=1e-5, shift=4.5, scale=5.0)

# The DCASE 2023 teachers' get_model defaults (the DCASE 2022 submission's arguments).
TEACHER = dict(rho=8, base_channels=32, channels_multiplier=2, cut_channels_s2=0, cut_channels_s3=36,
               n_blocks=(2, 1, 1), groups=(1, 2, 1), damped=False)
# Max pooling after these blocks of stage 1 (0: before the first); 2x2 at 0, over frequency only after.
STAGE1_POOLS = (0, 1, 2, 4)
# Convolutions whose kernel rho sets, in network order, and the smallest rho that makes each 3x3:
# (stage, block, conv). Convolutions of later blocks are 1x1, as in the 2023 code.
_RHO_THRESHOLDS = {(1, 2, 1): 2, (1, 2, 2): 3, (2, 1, 1): 4, (2, 1, 2): 5, (2, 2, 1): 6, (2, 2, 2): 7,
                   (3, 1, 1): 8, (3, 1, 2): 9, (3, 2, 1): 10, (3, 2, 2): 11}
DAMPING_FLOOR = 0.01     # the damping mask's value at the kernel's first and last frequency rows


def kernel_sizes(rho, stage, block):
    """(k1, k2) of block `block` (1-based) of stage `stage` for a given rho."""
    if (stage, block) == (1, 1):
        return 3, 1
    return tuple(3 if rho >= _RHO_THRESHOLDS.get((stage, block, conv), math.inf) else 1 for conv in (1, 2))


def stage_channels(base_channels, channels_multiplier, cut_channels_s2=0, cut_channels_s3=0):
    """Channels of the three stages (stage 1 keeps in_c's)."""
    return [base_channels, base_channels * channels_multiplier - cut_channels_s2,
            base_channels * channels_multiplier ** 2 - cut_channels_s3]


def receptive_field(rho=TEACHER['rho'], n_blocks=TEACHER['n_blocks']):
    """(mel bins, frames) of input that one unit of the last feature map depends on."""
    # (kernel, stride) per axis of every layer on the main path, in order; 1x1 convs add nothing.
    layers = [((5, 2), (5, 2)), ((2, 2), (2, 2))]
    for stage, count in enumerate(n_blocks, start=1):
        for block in range(1, count + 1):
            for k in kernel_sizes(rho, stage, block):
                layers.append(((k, 1), (k, 1)))
            if stage == 1 and block in STAGE1_POOLS:
                layers.append(((2, 2), (1, 1)))
    size, jump = [1, 1], [1, 1]
    for per_axis in layers:
        for axis, (kernel, stride) in enumerate(per_axis):
            size[axis] += (kernel - 1) * jump[axis]
            jump[axis] *= stride
    return tuple(size)


# --- the network ------------------------------------------------------------------------------

def damping_mask(kernel_height):
    """The frequency damping of a kernel [1, 1, kernel_height, 1]: 1 at the centre row, falling linearly
    with the distance from it to DAMPING_FLOOR at the first and last rows; all ones for a height of 1."""
    centre = (kernel_height - 1) / 2
    rows = np.ones(kernel_height)
    if centre >= 1:
        rows = 1 - (1 - DAMPING_FLOOR) * np.abs(np.arange(kernel_height) - centre) / centre
    return rows.reshape(1, 1, kernel_height, 1).astype('float32')


class DampedConv2D(nn.Conv2D):
    """A Conv2D (no bias) computing with its weight times `damping_mask` along the frequency axis
    (the kernel's height). The mask is a fixed buffer outside the state dict, as in the original."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, weight_attr=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                         weight_attr=weight_attr, bias_attr=False)
        self.conv_args = dict(stride=stride, padding=padding, groups=groups)
        self.register_buffer('damper', paddle.to_tensor(damping_mask(self.weight.shape[2])), persistable=False)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.damper, **self.conv_args)


def _normal(std):
    return paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, std))


def _conv(in_channels, out_channels, kernel, damped, std, stride=1, padding=None, groups=1):
    """A convolution without bias, 'same'-padded by default (kernel // 3 in the original: 1 for 3x3, 0 for 1x1),
    its weight drawn from N(0, std) (0: zeros)."""
    padding = kernel // 3 if padding is None else padding
    attr = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if std == 0 else _normal(std)
    if damped:
        return DampedConv2D(in_channels, out_channels, kernel, stride, padding, groups, weight_attr=attr)
    return nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups,
                     weight_attr=attr, bias_attr=False)


class BasicBlock(nn.Layer):
    """conv1 -> BN -> ReLU -> conv2 -> BN, + the input (a 1x1 conv + BN where the channels change), ReLU.

    Initialised as the original (Fixup: He-normal conv1 over fan-out scaled by 1 / sqrt(number of
    blocks), conv2 zero, so each block starts as its shortcut)."""

    def __init__(self, in_channels, out_channels, k1, k2, groups, damped, num_blocks):
        super().__init__()
        fixup_std = math.sqrt(2.0 / (k1 * k1 * out_channels) / num_blocks)
        self.conv1 = _conv(in_channels, out_channels, k1, damped, fixup_std, groups=groups)
        self.bn1 = nn.BatchNorm2D(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(out_channels, out_channels, k2, damped, 0.0, groups=groups)
        self.bn2 = nn.BatchNorm2D(out_channels)
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                ('conv', _conv(in_channels, out_channels, 1, damped, math.sqrt(2.0 / out_channels), groups=groups)),
                ('bn', nn.BatchNorm2D(out_channels)))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + (x if self.shortcut is None else self.shortcut(x)))


class CPResNet(Backbone):
    """The backbone: log-mel [batch, frames, n_mels] -> embedding [batch, stage 3's channels]."""

    def __init__(self, rho=TEACHER['rho'], base_channels=TEACHER['base_channels'],
                 channels_multiplier=TEACHER['channels_multiplier'], cut_channels_s2=TEACHER['cut_channels_s2'],
                 cut_channels_s3=TEACHER['cut_channels_s3'], n_blocks=TEACHER['n_blocks'], groups=TEACHER['groups'],
                 damped=False):
        super().__init__()
        n_blocks, groups = tuple(n_blocks), tuple(groups)
        if len(n_blocks) != 3 or n_blocks[0] < 1 or n_blocks[1] < 1 or n_blocks[2] < 0:
            raise ArgumentError(f'n_blocks must be three block counts (stage 1 and 2 at least 1, stage 3 may be 0), '
                                f'got {n_blocks}')
        channels = stage_channels(base_channels, channels_multiplier, cut_channels_s2, cut_channels_s3)
        if not all(isinstance(c, int) and c > 0 for c in channels):
            raise ArgumentError(f'base_channels, channels_multiplier and cut_channels_* give stage channels '
                                f'{channels}: they must be positive whole numbers')
        if len(groups) != 3 or any(c % g for c, g in zip([channels[0], *channels[:2]], groups)) \
                or any(c % g for c, g in zip(channels, groups)):
            raise ArgumentError(f'groups {groups} must divide the channels entering and leaving each stage '
                                f'({channels[0]}, {channels})')
        self.rho, self.damped = rho, damped
        num_blocks = sum(n_blocks)
        self.in_c = nn.Sequential(
            _conv(1, channels[0], 5, damped, math.sqrt(2.0 / 25), stride=2, padding=1),   # He-normal over fan-in
            nn.BatchNorm2D(channels[0]), nn.ReLU())
        inputs = [channels[0], channels[0], channels[1]]
        for stage in (1, 2, 3):
            layers = []
            if stage == 1 and 0 in STAGE1_POOLS:
                layers.append(('maxpool0_0', nn.MaxPool2D(2, 2)))
            in_channels = inputs[stage - 1]
            for block in range(1, n_blocks[stage - 1] + 1):
                k1, k2 = kernel_sizes(rho, stage, block)
                layers.append((f'block{block}', BasicBlock(in_channels, channels[stage - 1], k1, k2, groups[stage - 1],
                                                           damped, num_blocks)))
                in_channels = channels[stage - 1]
                if stage == 1 and block in STAGE1_POOLS:
                    layers.append((f'maxpool{block}_{STAGE1_POOLS.index(block)}', nn.MaxPool2D((2, 1), (2, 1))))
            setattr(self, f'stage{stage}', nn.Sequential(*layers))
        self.emb_size = channels[2] if n_blocks[2] else channels[1]
        self.receptive_field = receptive_field(rho, n_blocks)

    def feature_map(self, features):
        """Log-mel [batch, frames, n_mels] -> the last feature map [batch, emb_size, mel', frames']."""
        x = features.unsqueeze(1).transpose([0, 1, 3, 2])   # -> [batch, 1, n_mels, frames], the original's layout
        return self.stage3(self.stage2(self.stage1(self.in_c(x))))

    def forward_features(self, features):
        """Log-mel [batch, frames, n_mels] -> embedding [batch, emb_size]: the last map averaged over both axes."""
        return self.feature_map(features).mean(axis=[2, 3])

    def forward_frames(self, features):
        """Time-resolved embeddings [batch, frames', emb_size], one per 4 front-end frames (94 ms): the last
        map averaged over frequency only. Each still sees the whole receptive field (55 frames, 1.3 s,
        for `cpresnet`), so short events are blurred over their neighbourhood."""
        return self.feature_map(features).mean(axis=2).transpose([0, 2, 1])


def build(arch, audioset_head=False):
    """A CP-ResNet backbone of settings `arch`: CPResNet's arguments as a dict (e.g. TEACHER)."""
    if audioset_head:
        raise ArgumentError('CP-ResNet has no AudioSet head (no pretrained weights exist): build it with '
                            'audioset_head=False and train it for your classes')
    return CPResNet(**arch)


# --- checkpoints ------------------------------------------------------------------------------

_CLASSIFIER_PREFIX = 'feed_forward.'   # the original's classifier: 1x1 conv to its classes + BatchNorm
# The Lightning modules of CPJKU's training scripts keep the network under `net.` (DCASE 2022, beside
# a PaSST teacher `teacher_net.` and front ends without stored tensors) or `model.` (DCASE 2023).
_WRAPPERS = ('net.', 'model.')
_OTHER_PARTS = ('teacher_net.', 'teacher_mel.', 'mel.')


@lru_cache(maxsize=None)
def _parameter_names(arch_items):
    """The state-dict names of the network of settings `arch_items` (sorted dict items), built once. The
    random generator's state is restored after, so loading a checkpoint leaves the seeded initial
    weights of what it does not hold (a new head) as they would be without it."""
    rng = paddle.get_rng_state()
    try:
        return frozenset(CPResNet(**dict(arch_items)).state_dict())
    finally:
        paddle.set_rng_state(rng)


def _strip_wrapper(state):
    for prefix in _WRAPPERS:
        if state and any(k.startswith(prefix) for k in state) and \
                all(k.startswith((prefix, *_OTHER_PARTS)) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def checkpoint_filter(state, source, arch=None):
    """A CP-ResNet state dict, ours or CPJKU's PyTorch one -> our names, for the network of settings
    `arch` (TEACHER by default; the damped variant has the same names).

    PyTorch's BatchNorm statistics are renamed (running_mean -> _mean, running_var -> _variance)
    and num_batches_tracked dropped; conv weights have the same layout in both frameworks. The
    Lightning modules' prefixes (`net.`, `model.`) are removed with what else they hold (a
    teacher, front ends); the original's classifier (`feed_forward.*`, for its own classes) is
    passed on under its name: the Module reports it as unused (see classifier_from_feed_forward).
    Any other name, e.g. of a network of other depth or rho, is an error.
    """
    arch = TEACHER if arch is None else arch
    own = _parameter_names(tuple(sorted((k, v) for k, v in arch.items())))
    out = {}
    for name, value in _strip_wrapper(state).items():
        key = paddle_bn_name(name)
        if key is None:   # PyTorch's BatchNorm step counter
            continue
        if key.startswith(_CLASSIFIER_PREFIX):
            out[key] = np.asarray(value)
            continue
        if key not in own:
            if not name.startswith(('in_c.', 'stage1.', 'stage2.', 'stage3.')):
                raise CheckpointError(f'{source}: {name!r} is not a parameter of a CP-ResNet network (whose names '
                                      f'start with in_c. or stage1. to stage3.); is it a checkpoint of another model '
                                      f'family?')
            raise CheckpointError(f'{source}: {name!r} is not a parameter of this CP-ResNet (rho {arch["rho"]}, blocks '
                                  f'{tuple(arch["n_blocks"])}); the checkpoint is of a CP-ResNet of other depth '
                                  f'or layout')
        out[key] = np.asarray(value)
    return out


def classifier_from_feed_forward(state, eps=1e-5):
    """The original's classifier (`feed_forward.0.weight`, a 1x1 conv [classes, channels, 1, 1], then
    BatchNorm `feed_forward.1.*`; PyTorch or our names, any wrapper prefix removed) as the Module's
    head {'fc.weight': [channels, classes], 'fc.bias': [classes]}. In evaluation mode conv + BN is
    affine at every position and commutes with the average over frequency and time, so the Module
    gives the original's logits. Save it with the backbone's tensors to load both:
    `save_pdparams({**state, **classifier_from_feed_forward(state)}, path)`."""
    state = _strip_wrapper(state)
    ff = {paddle_bn_name(k)[len(_CLASSIFIER_PREFIX):]: np.asarray(v, dtype=np.float64)
          for k, v in state.items() if k.startswith(_CLASSIFIER_PREFIX) and paddle_bn_name(k) is not None}
    needed = ['0.weight', '1.weight', '1.bias', '1._mean', '1._variance']
    missing = [k for k in needed if k not in ff]
    if missing:
        raise CheckpointError(f'the state dict has no complete feed_forward classifier: missing '
                              f'{[_CLASSIFIER_PREFIX + k for k in missing]}')
    conv = ff['0.weight']
    if conv.ndim != 4 or conv.shape[2:] != (1, 1):
        raise CheckpointError(f'{_CLASSIFIER_PREFIX}0.weight has shape {list(conv.shape)}: the classifier is a '
                              f'1x1 convolution [classes, channels, 1, 1]')
    classes = conv.shape[0]
    for key in needed[1:]:
        if ff[key].shape != (classes,):
            raise CheckpointError(f'{_CLASSIFIER_PREFIX}{key} has shape {list(ff[key].shape)}, not [{classes}] '
                                  f'(the classes of {_CLASSIFIER_PREFIX}0.weight)')
    if not np.all(ff['1._variance'] >= 0) or not all(np.all(np.isfinite(v)) for v in ff.values()):
        raise CheckpointError(f'the feed_forward classifier holds non-finite values or a negative variance '
                              f'({_CLASSIFIER_PREFIX}1.running_var): the checkpoint is damaged')
    scale = ff['1.weight'] / np.sqrt(ff['1._variance'] + eps)
    weight = conv[:, :, 0, 0] * scale[:, None]                           # [classes, channels]
    return {'fc.weight': weight.T.astype('float32'),
            'fc.bias': (ff['1.bias'] - ff['1._mean'] * scale).astype('float32')}


# --- registered models ------------------------------------------------------------------------

# in_c (5x5, stride 2, padding 1) centres its frame j on input frame 2j + 1; the 2x2 max pooling then
# takes in_c's frames 2j and 2j + 1 (centred on 4j + 1 and 4j + 3); every later layer keeps the time
# axis (the other poolings are over frequency only, the convolutions 'same'-padded).
# context: half the receptive field over time (receptive_field: 55 frames for `cpresnet`, so 27), the
# same as measured with random weights in eval mode (tests/test_overlap.py).
FRAME_GEOMETRY = FrameGeometry(stride=4, offset=2, context=(receptive_field()[1] - 1) // 2)


def frame_geometry(settings):
    """FRAME_GEOMETRY with the context of the network of `settings` (its rho and blocks)."""
    frames = receptive_field(settings['rho'], settings['n_blocks'])[1]
    return FrameGeometry(stride=4, offset=2, context=(frames - 1) // 2)

# name: (settings, published figures). Nothing is published for exactly these networks: the DCASE
# 2023 repository calls the teacher "CP-ResNet with 128K parameters"; CPJKU's code counts 127,684
# with its 10-class head (126,744 without it: the backbone here).
MODELS = {
    'cpresnet': (TEACHER, {}),
    'cpresnet_damped': (dict(TEACHER, damped=True), {}),
}


def _register_all():
    for name, (settings, published) in MODELS.items():
        channels = stage_channels(settings['base_channels'], settings['channels_multiplier'],
                                  settings['cut_channels_s2'], settings['cut_channels_s3'])
        register_model(ModelSpec(
            name=name, family=FAMILY, build=partial(build, settings),
            emb_size=channels[2] if settings['n_blocks'][2] else channels[1],
            checkpoint_filter=partial(checkpoint_filter, arch=settings), weights=None,
            frontend=CPRESNET_FRONTEND, frame_geometry=frame_geometry(settings),
            # Paddle's STFT needs a clip of at least n_fft = 4096 samples (0.128 s); the network itself
            # takes 5 frames or more (in_c then the 2x2 pooling).
            min_seconds=0.15,
            audioset_head=None,
            head_dropout=0.0,   # the original has no dropout; its recipes regularise with augmentation
            published=published))


_register_all()
