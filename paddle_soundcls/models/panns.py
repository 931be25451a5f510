"""PANNs CNN14 / CNN10 / CNN6 (Kong et al., 2020) in Paddle.

Parameter names and shapes are those of the official Paddle checkpoints
(`panns_cnn14.pdparams` from PaddleSpeech / PaddleHub), so they load unchanged; the
PyTorch checkpoints of the original project load through the same filter (see
`checkpoint_filter`). The embedding is the output of fc1 (after its ReLU) and the AudioSet
head `fc_audioset` reads it without dropout, as in the original code; a new classification
head sees it through dropout (the original's 0.5, then the classifier's 0.1).
"""
from collections import OrderedDict

import numpy as np
import paddle.nn as nn
import paddle.nn.functional as F

from ..checkpoint import CheckpointError
from ..features.config import FrontendConfig
from ..features.mel import mel_filterbank
from ..frames import FrameGeometry
from ..registry import AUDIOSET_CLASSES, ModelSpec, Weights, register_model
from ..torch_checkpoint import BN_RENAMES, strip_module_prefix


def _conv(in_channels, out_channels, kernel):
    return nn.Conv2D(in_channels, out_channels, kernel_size=kernel, stride=1, padding=kernel // 2, bias_attr=False)


class ConvBlock(nn.Layer):
    """conv-bn-relu (twice for the 3x3 blocks, once for the 5x5 ones), then 2-D average pooling."""

    def __init__(self, in_channels, out_channels, kernel=3, num_convs=2):
        super().__init__()
        self.num_convs = num_convs
        self.conv1 = _conv(in_channels, out_channels, kernel)
        self.bn1 = nn.BatchNorm2D(out_channels)
        if num_convs == 2:
            self.conv2 = _conv(out_channels, out_channels, kernel)
            self.bn2 = nn.BatchNorm2D(out_channels)

    def forward(self, x, pool_size=2):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.num_convs == 2:
            x = F.relu(self.bn2(self.conv2(x)))
        if pool_size != 1:
            x = F.avg_pool2d(x, kernel_size=pool_size)
        return x


class PANNsBackbone(nn.Layer):
    """The shared CNN trunk: bn0 over mel bins, conv blocks, global pooling, fc1 (+ fc_audioset)."""

    def __init__(self, channels, kernel, num_convs, last_pool, emb_size, n_mels=64, audioset_head=True):
        super().__init__()
        self.emb_size = emb_size
        self.num_blocks = len(channels)
        self.bn0 = nn.BatchNorm2D(n_mels)
        in_channels = 1
        for i, out_channels in enumerate(channels, start=1):
            self.add_sublayer(f'conv_block{i}', ConvBlock(in_channels, out_channels, kernel, num_convs))
            in_channels = out_channels
        self.pool_sizes = [2] * (len(channels) - 1) + [last_pool]
        self.fc1 = nn.Linear(in_channels, emb_size)
        if audioset_head:
            self.fc_audioset = nn.Linear(emb_size, AUDIOSET_CLASSES)

    def blocks(self):
        return [getattr(self, f'conv_block{i}') for i in range(1, self.num_blocks + 1)]

    def _feature_map(self, features):
        """log-mel [batch, frames, n_mels] -> the last conv block's output averaged over mel, [batch, C, frames']."""
        x = features.unsqueeze(1)                # [batch, 1, frames, n_mels]
        # bn0 normalises each mel bin: move mel bins to the channel axis and back.
        x = self.bn0(x.transpose([0, 3, 2, 1])).transpose([0, 3, 2, 1])
        for block, pool in zip(self.blocks(), self.pool_sizes):
            x = F.dropout(block(x, pool), p=0.2, training=self.training)
        return x.mean(axis=3)

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
        x = self._feature_map(features)
        x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1, exclusive=False)
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x.transpose([0, 2, 1])))

    def forward_head(self, embedding):
        """AudioSet logits [batch, 527] from the embedding."""
        return self.fc_audioset(embedding)


def _builder(channels, kernel, num_convs, last_pool, emb_size):
    def build(audioset_head=True, n_mels=64):
        return PANNsBackbone(channels, kernel, num_convs, last_pool, emb_size, n_mels, audioset_head)
    return build


_BASE_URL = 'https://bj.bcebos.com/paddleaudio/models/'
_ARCHS = {  # name: (channels, kernel, convolutions per block, last pooling, embedding size, parameters)
    'cnn14': ([64, 128, 256, 512, 1024, 2048], 3, 2, 1, 2048, 80769871),
    'cnn10': ([64, 128, 256, 512], 3, 2, 2, 512, 5223247),
    'cnn6': ([64, 128, 256, 512], 5, 1, 2, 512, 4839503),
}
ARCHITECTURES = {arch: _builder(*settings[:5]) for arch, settings in _ARCHS.items()}
_HUB_PREFIXES = ('cnn14.', 'cnn10.', 'cnn6.')   # PaddleHub's fine-tuned modules
_TORCH_MARKERS = ('.running_mean', '.running_var', '.num_batches_tracked', 'logmel_extractor.melW')


def checkpoint_filter(state, source, arch):
    """A PANNs state dict in any layout we accept -> our backbone's names.

    - official Paddle (PaddleSpeech, PaddleHub) backbone + tagger: bn0.*, conv_block*, fc1.*, fc_audioset.*
    - PaddleHub's fine-tuned modules: cnn14.* (cnn10 / cnn6)
    - the original PyTorch checkpoints (BatchNorm running_mean / running_var, Linear [out, in],
      front-end buffers): converted by convert_panns_state, which also checks their mel filters
    (Our own and PaddleSpeech's `backbone.*` prefix is removed by the Module before this.)
    """
    if any(key.endswith(_TORCH_MARKERS) for key in state):
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

# ----- the original PyTorch checkpoints (qiuqiangkong/audioset_tagging_cnn) -----
# They differ from the official Paddle ones in three ways: BatchNorm statistics are
# `running_mean` / `running_var` with a `num_batches_tracked` counter; Linear weights are
# [out, in]; the front end is part of the network (STFT kernels and `logmel_extractor.melW`,
# the mel filters [n_freq, n_mels]). Our front end computes those, so they are dropped, after
# checking that melW matches our filters. Every other key must fit a parameter of ours.

MEL_KEY = 'logmel_extractor.melW'
STFT_KEYS = ('spectrogram_extractor.stft.conv_real.weight', 'spectrogram_extractor.stft.conv_imag.weight')


class ConversionError(CheckpointError):
    """A PyTorch state dict that does not fit the asked architecture or front end."""


def build_backbone(arch, channels=None, emb_size=None, n_mels=64, lazy=False):
    """A PANNs backbone by architecture name ('cnn14', 'cnn10', 'cnn6').

    channels / emb_size: give both to build a smaller network of the same kind (kernel size,
        convolutions per block and last pooling taken from `arch`), e.g. for tests.
    lazy: build under paddle.LazyGuard, which allocates no weights: enough to read names and shapes.
    """
    import paddle
    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown architecture {arch!r}; known: {", ".join(sorted(ARCHITECTURES))}')
    if (channels is None) != (emb_size is None):
        raise ValueError('give both channels and emb_size, or neither')
    if channels is None:
        if not lazy:
            return ARCHITECTURES[arch](n_mels=n_mels)
        with paddle.LazyGuard():
            return ARCHITECTURES[arch](n_mels=n_mels)
    with paddle.LazyGuard():
        full = ARCHITECTURES[arch]()
    first = full.blocks()[0]
    kwargs = dict(kernel=first.conv1.weight.shape[-1], num_convs=first.num_convs, last_pool=full.pool_sizes[-1],
                  emb_size=emb_size, n_mels=n_mels)
    if not lazy:
        return PANNsBackbone(list(channels), **kwargs)
    with paddle.LazyGuard():
        return PANNsBackbone(list(channels), **kwargs)


def paddle_name(torch_key):
    """The Paddle name of a PyTorch PANNs key, or None for keys that are dropped on purpose."""
    if torch_key in STFT_KEYS or torch_key == MEL_KEY:
        return None
    layer, _, attr = torch_key.rpartition('.')
    if attr == 'num_batches_tracked':
        return None
    return f'{layer}.{BN_RENAMES.get(attr, attr)}' if layer else torch_key


def _torch_name(paddle_key):
    layer, _, attr = paddle_key.rpartition('.')
    renames = {v: k for k, v in BN_RENAMES.items()}
    return f'{layer}.{renames.get(attr, attr)}'


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

    torch_state: {name: numpy array} as in the PyTorch checkpoint (see torch_checkpoint.load_state_dict).
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
    missing = [_torch_name(k) for k in target if k not in out and k not in bad]
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


_PUBLISHED = {'cnn14': {'audioset_map': 0.431, 'esc50_acc': 0.95}, 'cnn10': {'esc50_acc': 0.8975},
              'cnn6': {'esc50_acc': 0.8825}}


def frame_geometry(channels, last_pool):
    """Every block but the last halves time with a 2x2 average pooling (the last with `last_pool`):
    output j of one averages inputs 2j and 2j + 1, so after k of them network frame j is centred
    on front-end frame stride * j + (stride - 1) / 2, stride = 2**k. The convolutions are padded
    symmetrically, and forward_frames' 3-frame smoothing is centred, so neither moves it."""
    stride = 2 ** (len(channels) - 1) * last_pool
    return FrameGeometry(stride=stride, offset=(stride - 1) / 2)


def _register():
    for arch, (channels, kernel, num_convs, last_pool, emb_size, num_params) in _ARCHS.items():
        name = f'panns_{arch}'
        register_model(ModelSpec(
            name=name, family='panns', build=ARCHITECTURES[arch],
            frontend=FrontendConfig(), emb_size=emb_size,
            checkpoint_filter=lambda state, source, arch=arch: checkpoint_filter(state, source, arch),
            frame_geometry=frame_geometry(channels, last_pool),
            # A .pdparams file stores every parameter as float32 plus a little pickle framing;
            # no checksum is published for these files.
            weights=Weights(url=_BASE_URL + f'{name}.pdparams', filename=f'{name}.pdparams', file_format='pdparams',
                            size_range=(4 * num_params, 4 * num_params + (1 << 20)), license='MIT'),
            # The deepest network halves the time axis five times and needs at least 32 frames.
            min_seconds=1.0, audioset_head='fc_audioset',
            head_dropout=1 - 0.5 * 0.9,  # the original's dropout(0.5) then the classifier's dropout(0.1)
            published={'params': num_params, **_PUBLISHED[arch], 'license': 'MIT'}))


_register()
