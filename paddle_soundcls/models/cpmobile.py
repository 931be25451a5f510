"""CP-Mobile: small receptive-field-regularised CNNs to train from scratch.

The network of the DCASE 2024 task 1 baseline (CPJKU/dcase2024_task1_baseline, models/baseline.py),
a simplified CP-Mobile (Schmid et al., DCASE 2023 workshop), which descends from CP-ResNet
(Koutini et al., "Receptive field regularization techniques for audio classification and
tagging with deep convolutional neural networks", IEEE/ACM TASLP 2021). It has no pretrained
weights: it is meant to be trained from random weights on your own data, where it does well
with few labelled clips and little compute (61 K parameters and 29 M MACs per second of audio
in its baseline setting, inside the DCASE low-complexity limits).

Network, on log-mel input laid out [batch, 1, mel bins, frames] as in the original:
    in_c   two 3x3 convolutions with stride 2 on both axes (conv-BN-ReLU; 1 -> base/4 -> base channels)
    stages blocks of 1x1 expand -> 3x3 depthwise (the block's stride) -> 1x1 project, each conv
           followed by BatchNorm (ReLU after the first two), plus the input when the channel count is
           unchanged (through a 3x3 average pooling where the block strides), then ReLU
    head   the original maps the last feature map to class scores with a 1x1 conv and BatchNorm, then
           averages over frequency and time. Here the embedding is that last feature map averaged
           over frequency and time (emb_size = the last stage's channels) and the classifier is the
           Module's Linear on it. In evaluation mode the two are the same family of functions: a 1x1
           conv and BatchNorm are affine per position, so they commute with the average.

Receptive field. Koutini et al. show that CNNs on spectrograms generalise better when the
receptive field of their last layer is kept small, notably along frequency; CP-Mobile keeps it
small with few 3x3 layers and late strides. Each unit of the last feature map of `cpmobile`
sees 71 mel bins (of 256) by 79 frames (1.23 s at 15.6 ms per frame; a 1-s clip has 65 frames).
`receptive_field()` computes it for any setting:
    n_blocks   every block adds one 3x3 depthwise conv, which widens the field by 2 x the input's
               current stride on each axis: +8 bins / +8 frames in the first stage (after in_c's
               4 x 4 downsampling), +16 once a block has strided that axis again. So depth is the
               main knob: (3, 2, 1) gives 71 x 79, (2, 1, 1) gives 39 x 47, (4, 3, 2) gives 119 x 127.
    strides    {block number (1-based, counted across stages): (mel stride, time stride)}. A stride
               doubles the growth of every later block along its axis; moving it earlier enlarges
               the field and shrinks the later maps (fewer MACs), moving it later does the opposite.
    base_channels, channels_multiplier, expansion_rate
               widths only: they leave the receptive field unchanged and scale parameters and MACs
               (about quadratically in the first two, linearly in the third).
The front end sets what the field means in Hz and seconds (hop 500 samples at 32 kHz, 256 mel
bands from 0 to 16 kHz).

Variants against device mismatch (the layers are in models/domain.py; CPMobile's sub_bands and rfn):
    cpmobile_ssn  SubSpectralNorm with 4 sub-bands in place of the stem's two BatchNorms: each
                  quarter of the frequency axis gets its own statistics and affine weights
    cpmobile_rfn  RelaxedFreqNorm (lam 0.5) on the log-mel, after the stem and after stage 1:
                  half a frequency-wise instance norm, which removes each clip's per-band offsets
                  and scales (what a device's filter changes), half a layer norm, which keeps
                  them; no parameters. Its statistics are the clip's, so every
                  output depends on the whole clip (window) through them: the receptive field
                  above is that of the convolutions.
Both keep the baseline's convolutions (so its MACs, the normalisations aside) and frame geometry, and
export as it does.

Checkpoints: sub-layers are named as the baseline's (`in_c.0.0.weight`, `stages.s1.b1.block.1.1.bias`,
...), so its PyTorch state dicts load through `checkpoint_filter` (see there), as they are or once
converted (`paddle-soundcls convert --model cpmobile`):
`Module('cpmobile', num_class=10, load_checkpoint='baseline.ckpt')`; the classifier starts afresh.
"""
import math
from functools import partial

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ArgumentError, CheckpointError
from ..features.config import FrontendConfig
from ..features.mel import config_filterbank, window
from ..frames import FrameGeometry
from .base import Backbone
from .builder import paddle_bn_name
from .domain import RelaxedFreqNorm, SubSpectralNorm
from .layers import conv_bn_act, make_divisible
from .registry import ModelSpec, register_model

FAMILY = 'cpmobile'

# --- the network ------------------------------------------------------------------------------

# The baseline's front end (run_training.py there): torchaudio's MelSpectrogram with its defaults
# (periodic Hann window, centred frames with reflect padding, power spectrum, HTK-scale triangular
# mel filters without normalisation), then ln(mel + 1e-5), no further normalisation.
CPMOBILE_FRONTEND = FrontendConfig(
    sample_rate=32000, preemphasis=None, n_fft=4096, win_length=3072, hop_length=500, window='hann',
    window_periodic=True, center=True, pad_mode='reflect', power=2.0, n_mels=256, f_min=0.0, f_max=None,
    mel_banks='librosa', mel_norm=None, htk=True, log='ln', log_offset=1e-5)

# The baseline's settings (its run_training.py defaults; its get_model defaults, 2.3 and 3.0, are
# CP-Mobile's DCASE 2023 widths, registered as cpmobile_wide).
BASE_CHANNELS = 32
CHANNELS_MULTIPLIER = 1.8
EXPANSION_RATE = 2.1
N_BLOCKS = (3, 2, 1)
# {block number: (mel stride, time stride)}; the other blocks have stride 1.
STRIDES = {3: (1, 2), 4: (2, 1)}
# Where RelaxedFreqNorm goes when it is asked for (CPMobile's rfn): on the log-mel, after the stem
# and after the first stage. These early maps (before the blocks' first frequency stride, in block
# 4) are where a device's gain per band is closest to the input's plain offset per band; deeper
# maps carry more of the scene, which the normalisation would take away with it.
RFN_AT = ('input', 'in_c', 's1')
KERNEL = 3          # of the stem convs and the depthwise convs; the others are 1x1


def stage_channels(base_channels=BASE_CHANNELS, channels_multiplier=CHANNELS_MULTIPLIER, num_stages=len(N_BLOCKS)):
    """Channels after in_c, then after each stage: the base, then base x multiplier^stage, rounded to 8."""
    base = make_divisible(base_channels)
    return [base] + [make_divisible(base * channels_multiplier ** stage) for stage in range(num_stages)]


def receptive_field(n_blocks=N_BLOCKS, strides=None):
    """(mel bins, frames) of input that one unit of the last feature map depends on."""
    strides = STRIDES if strides is None else strides
    layers = [(2, 2), (2, 2)] + [tuple(strides.get(b, (1, 1))) for b in range(1, sum(n_blocks) + 1)]
    size, jump = [1, 1], [1, 1]
    for stride in layers:   # every layer here is one 3x3 window (1x1 convs add nothing)
        for axis in (0, 1):
            size[axis] += (KERNEL - 1) * jump[axis]
            jump[axis] *= stride[axis]
    return tuple(size)


def _conv_bn(in_channels, out_channels, kernel, stride=1, groups=1, relu=True, norm=nn.BatchNorm2D):
    """conv_bn_act with PyTorch's BatchNorm defaults (eps 1e-5, momentum 0.1: Paddle's 0.9) and the
    original's initialisation, kaiming normal over fan-out (PyTorch's fan-out of a grouped conv counts
    every output channel): it matters when training from scratch."""
    fan_out = out_channels * kernel * kernel
    init = paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, math.sqrt(2.0 / fan_out)))
    return conv_bn_act(in_channels, out_channels, kernel, stride, groups, 'relu' if relu else None, norm=norm,
                       weight_attr=init)


class Block(nn.Layer):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise (strided), 1x1 project, + shortcut, ReLU."""

    def __init__(self, in_channels, out_channels, expansion_rate, stride=(1, 1)):
        super().__init__()
        expanded = make_divisible(in_channels * expansion_rate)
        self.block = nn.Sequential(
            _conv_bn(in_channels, expanded, 1),
            _conv_bn(expanded, expanded, KERNEL, stride=stride, groups=expanded),
            _conv_bn(expanded, out_channels, 1, relu=False))
        self.use_shortcut = in_channels == out_channels
        self.shortcut = None
        if self.use_shortcut and tuple(stride) != (1, 1):
            # PyTorch's AvgPool2d counts the zero padding in the average (count_include_pad).
            self.shortcut = nn.AvgPool2D(KERNEL, stride=stride, padding=1, exclusive=False)

    def forward(self, x):
        out = self.block(x)
        if self.use_shortcut:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class CPMobile(Backbone):
    """The backbone: log-mel [batch, frames, n_mels] -> embedding [batch, last stage's channels].

    Two options against device mismatch (models/domain.py; both off in the baseline):
    sub_bands  None: the stem's two convolutions are followed by BatchNorm, as in the baseline;
               an int S: by SubSpectralNorm with S sub-bands instead (the stem sees n_mels / 2 and
               n_mels / 4 bins, which S must divide: any divisor of 64 for 256 mel bands)
    rfn        None: no RelaxedFreqNorm; lam in [0, 1]: RelaxedFreqNorm(lam) at each place of
               `rfn_at`, among 'input' (the log-mel), 'in_c' (after the stem) and the stage
               names 's1', 's2', ... (after that stage)
    """

    def __init__(self, base_channels=BASE_CHANNELS, channels_multiplier=CHANNELS_MULTIPLIER,
                 expansion_rate=EXPANSION_RATE, n_blocks=N_BLOCKS, strides=None, sub_bands=None, rfn=None,
                 rfn_at=RFN_AT):
        super().__init__()
        strides = STRIDES if strides is None else strides
        unknown = sorted(set(strides) - set(range(1, sum(n_blocks) + 1)))
        if unknown:
            raise ArgumentError(f'strides given for blocks {unknown}, but the network has blocks 1 to {sum(n_blocks)}')
        channels = stage_channels(base_channels, channels_multiplier, len(n_blocks))
        stem_norm = nn.BatchNorm2D
        if sub_bands is not None:
            stem_norm = partial(SubSpectralNorm, sub_bands=sub_bands)
        self.in_c = nn.Sequential(_conv_bn(1, channels[0] // 4, KERNEL, stride=2, norm=stem_norm),
                                  _conv_bn(channels[0] // 4, channels[0], KERNEL, stride=2, norm=stem_norm))
        places = ('input', 'in_c') + tuple(f's{stage + 1}' for stage in range(len(n_blocks)))
        self.rfn_at = ()
        self.rfn = None
        if rfn is not None:
            self.rfn_at = tuple(rfn_at)
            wrong = [p for p in self.rfn_at if p not in places]
            if wrong or not self.rfn_at:
                raise ArgumentError(f'rfn_at must name one or more of {places}, got {rfn_at!r}')
            self.rfn = RelaxedFreqNorm(rfn)   # no parameters: one layer serves every place
        stages, number = [], 0
        for stage, num_blocks in enumerate(n_blocks):
            blocks = []
            for i in range(num_blocks):
                number += 1
                in_channels = channels[stage] if i == 0 else channels[stage + 1]
                blocks.append((f'b{number}', Block(in_channels, channels[stage + 1], expansion_rate,
                                                   strides.get(number, (1, 1)))))
            stages.append((f's{stage + 1}', nn.Sequential(*blocks)))
        self.stages = nn.Sequential(*stages)
        self.emb_size = channels[-1]
        self.receptive_field = receptive_field(n_blocks, strides)

    def feature_map(self, features):
        """Log-mel [batch, frames, n_mels] -> the last feature map [batch, emb_size, mel, frames]."""
        x = features.unsqueeze(1).transpose([0, 1, 3, 2])   # -> [batch, 1, n_mels, frames], the original's layout
        if self.rfn is None:
            return self.stages(self.in_c(x))
        x = self._rfn('input', x)
        x = self._rfn('in_c', self.in_c(x))
        for name, stage in self.stages.named_children():
            x = self._rfn(name, stage(x))
        return x

    def _rfn(self, place, x):
        return self.rfn(x) if place in self.rfn_at else x

    def forward_features(self, features):
        """Log-mel [batch, frames, n_mels] -> embedding [batch, emb_size]: the last map averaged over both axes."""
        return self.feature_map(features).mean(axis=[2, 3])

    def forward_frames(self, features):
        """Time-resolved embeddings [batch, frames', emb_size], frames' = frames / 8 rounded up with the
        default strides (one per 125 ms): the last map averaged over frequency only. Each frame still
        sees the whole receptive field (79 frames in the default setting), so events shorter than
        about a second are blurred over their neighbourhood."""
        return self.feature_map(features).mean(axis=2).transpose([0, 2, 1])



def build(arch, audioset_head=False):
    """A CP-Mobile backbone of settings `arch`: CPMobile's arguments as a dict (e.g. BASELINE)."""
    if audioset_head:
        raise ArgumentError('CP-Mobile has no AudioSet head (no pretrained weights exist): build it with '
                            'audioset_head=False and train it for your classes')
    return CPMobile(**arch)


# --- checkpoints ------------------------------------------------------------------------------

_FRONTEND_PREFIX = 'mel.'             # the baseline's torchaudio front end inside its Lightning module
_CLASSIFIER_PREFIX = 'feed_forward.'  # the baseline's classifier: 1x1 conv to its classes + BatchNorm


def _check_frontend_buffer(name, value, source):
    """The baseline's front-end buffers hold no learnt weights, but tell what features it was trained on."""
    cfg = CPMOBILE_FRONTEND
    if name.endswith('mel_scale.fb'):
        expected = config_filterbank(cfg).T                     # torchaudio's layout [freqs, mels]
    elif name.endswith('spectrogram.window'):
        expected = window(cfg.window, cfg.win_length, cfg.window_periodic)
    else:
        raise CheckpointError(f'{source}: unknown front-end tensor {name!r} in a CP-Mobile checkpoint')
    value = np.asarray(value, dtype=np.float64)
    if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-6):
        raise CheckpointError(
            f'{source}: its front-end tensor {name!r} ({list(value.shape)}) differs from the baseline front end '
            f'({cfg.sample_rate} Hz, n_fft {cfg.n_fft}, window {cfg.win_length}, {cfg.n_mels} HTK mel bands); '
            f'these weights were trained on other features')


def checkpoint_filter(state, source):
    """A CP-Mobile state dict, ours or the baseline's PyTorch one -> our names.

    PyTorch's BatchNorm statistics are renamed (running_mean -> _mean, running_var -> _variance)
    and num_batches_tracked dropped; conv weights have the same layout in both frameworks. The
    prefix of the baseline's Lightning module (`model.`) is removed, its front-end buffers
    (`mel.*`) are checked against CPMOBILE_FRONTEND and dropped, and its classifier
    (`feed_forward.*`, for its own classes) is passed on under its name: the Module reports it
    as unused, since its own classifier is `fc`. Any other name is an error.
    """
    if state and all(k.startswith(('model.', _FRONTEND_PREFIX)) for k in state):
        state = {k[len('model.'):] if k.startswith('model.') else k: v for k, v in state.items()}
    out = {}
    for name, value in state.items():
        if name.startswith(_FRONTEND_PREFIX):
            _check_frontend_buffer(name, value, source)
            continue
        if not name.startswith(('in_c.', 'stages.', _CLASSIFIER_PREFIX)):
            raise CheckpointError(f'{source}: {name!r} is not a parameter of a CP-Mobile network (whose names start '
                                  f'with in_c. or stages.); is it a checkpoint of another model family?')
        key = paddle_bn_name(name)
        if key is not None:   # None: PyTorch's BatchNorm step counter
            out[key] = np.asarray(value)
    return out


# --- registered models ------------------------------------------------------------------------

def frame_geometry(strides=None, n_blocks=N_BLOCKS, rfn=None):
    """The stem's two stride-2 convolutions and the blocks' time strides, each a 3x3 window padded
    by one (the depthwise convolution, and the shortcut's average pooling) whose output j is
    centred on input 2j: network frame j is centred on front-end frame stride * j.
    context: half the receptive field over time (receptive_field: 79 frames, so 39, for the
    baseline's blocks), the same as measured with random weights in eval mode (tests/test_overlap.py);
    None with RelaxedFreqNorm (rfn), whose statistics are the whole input's."""
    strides = STRIDES if strides is None else strides
    stride = 4
    for _, time_stride in strides.values():
        stride *= time_stride
    context = None if rfn is not None else (receptive_field(n_blocks, strides)[1] - 1) // 2
    return FrameGeometry(stride=stride, offset=0, context=context)


# The baseline's network (the constants above) as build's `arch`.
BASELINE = dict(base_channels=BASE_CHANNELS, channels_multiplier=CHANNELS_MULTIPLIER, expansion_rate=EXPANSION_RATE,
                n_blocks=N_BLOCKS)

# name: (settings, pretrained weights (none exist), published figures). The baseline's published
# figures (its README, counted with torchinfo on a [1, 1, 256, 65] input) include its 10-class
# classifier, a 1x1 conv + BatchNorm at every position of the last map before the average. Its MACs
# are published for a 1-s clip only (29,419,156; the same counter gives 271,984,276 for 10 s, not
# ten times that), so there is no 10-s figure to record. tests/test_complexity_dcase.py checks the
# counter against the baseline's own network, layer by layer.
MODELS = {
    'cpmobile': (BASELINE, None, {'params': 61148}),
    # CP-Mobile's DCASE 2023 widths with the baseline's blocks: 125 K parameters before the classifier
    # (within 128 kB at int8), 53 M MACs per second. Nothing is published for this exact network.
    'cpmobile_wide': (dict(BASELINE, channels_multiplier=2.3, expansion_rate=3.0), None, {}),
    # Against device mismatch (models/domain.py). SubSpectralNorm with 4 sub-bands in place of the
    # stem's two BatchNorms (Chang et al. use it in the early layers): 8 x 4 and 32 x 4 channels,
    # +240 parameters (61,378 with a 10-class head); the convolutions' MACs are the baseline's.
    'cpmobile_ssn': (dict(BASELINE, sub_bands=4), None, {}),
    # RelaxedFreqNorm (lam 0.5, as in Kim et al.) on the input, after the stem and after the first
    # stage (RFN_AT): no parameters, so the baseline's 61,138 with a 10-class head, and a baseline
    # checkpoint loads into it as it is.
    'cpmobile_rfn': (dict(BASELINE, rfn=0.5), None, {}),
}


def _register_all():
    for name, (settings, weights, published) in MODELS.items():
        channels = stage_channels(settings['base_channels'], settings['channels_multiplier'], len(settings['n_blocks']))
        register_model(ModelSpec(
            name=name, family=FAMILY, build=partial(build, settings), emb_size=channels[-1],
            checkpoint_filter=checkpoint_filter, weights=weights,
            frontend=CPMOBILE_FRONTEND, frame_geometry=frame_geometry(settings.get('strides'), settings['n_blocks'],
                                                                  settings.get('rfn')),
            # Paddle's STFT needs a clip of at least n_fft = 4096 samples (0.128 s); every conv is padded
            # and the map is averaged, so the network itself takes any clip of one frame or more.
            min_seconds=0.15,
            audioset_head=None,
            head_dropout=0.0,   # the baseline has no dropout; its recipe regularises with augmentation
            published=published))


_register_all()
