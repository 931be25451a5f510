"""PaSST, the patchout audio spectrogram transformer (Koutini et al., "Efficient Training of Audio
Transformers with Patchout", Interspeech 2022) in Paddle.

The network of github.com/kkoutini/PaSST (Apache-2.0 licence), models/passt.py, as its released
AudioSet taggers are built: 16x16 patches of the 128-bin log-mel taken every 10 frames and 10
bins (12 frequency rows x up to 99 time columns for 10 s), separate frequency and time
positional embeddings, a cls and a distillation token with their own positional embedding,
pre-norm transformer blocks (LayerNorm eps 1e-6, exact GELU), a final norm and the head
LayerNorm + Linear. Sub-layers are named as theirs (`blocks.3.attn.qkv.weight`, `head.1.bias`,
`time_new_pos_embed`, ...), so their parameter names carry over one to one; `checkpoint_filter`
transposes Linear weights to Paddle's [in, out].

Outputs, in the backbone contract:
- forward_features: the clip embedding upstream's head takes, the mean of the cls and the
  distillation token after the final norm; audioset_logits is that head (LayerNorm + Linear),
  so forward_head(forward_features(x)) is upstream's logits. Upstream's eval forward never uses
  its second classifier `head_dist` (it applies `head` to the mean of the two tokens), so the
  network has none and checkpoint_filter drops it.
- forward_frames: one embedding per time column of patches: the final norm on each patch token,
  averaged over the 12 frequency rows (the tokens are averaged after the norm, as the two tokens
  of the clip embedding are), so the head applies frame by frame. Column j covers front-end
  frames 10 j .. 10 j + 15: FrameGeometry(stride=10, offset=7.5).
- Inputs of more than 99 time columns (10.05 s) are cut into windows of 99 columns on the
  column grid: window k starts at column 99 k, the last at the last 99 columns (overlapping its
  neighbour). forward_features averages the windows' embeddings, as hear21passt's wrapper
  averages over windows for clips longer than the model's 10 s (its windows hop by 2.5 s over
  the reflect-padded audio; ours tile the input, which costs a quarter as much and needs no
  audio), and the logits of a long input are the head on that average. forward_frames
  concatenates the windows' columns, each column taken from the first window holding it, so
  the output has one row per column of the whole input. Shorter inputs use the first columns
  of the time positional embedding (a random run of them in training, as upstream). The window
  arithmetic is on tensor shapes only: the exported graphs take any batch and length.

Patchout (training mode only): `set_patchout(time=, freq=, unstructured=)` sets how many time
columns and frequency rows of patches (and single patches) are dropped at random per batch;
the defaults are PaSST's ESC-50 fine-tuning (ex_esc50.py: s_patchout_t=10, s_patchout_f=3,
u_patchout=0). forward_frames drops frequency rows only, so every time column keeps its frame.
"""
from functools import partial

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ArgumentError, CheckpointError
from ..frames import FrameGeometry
from .base import Backbone
from .efficientat import EFFICIENTAT_FRONTEND
from .registry import AUDIOSET_CLASSES, ModelSpec, PretrainedCfg, register_model

FAMILY = 'passt'

# --- the network ------------------------------------------------------------------------------

# PaSST's AugmentMelSTFT in eval mode as its AudioSet training (ex_audioset.py) and hear21passt
# build it: fmax=None with fmax_aug_range=2000 gives f_max = 16000 - 1000 = 15 kHz, fmin 0; every
# other setting is EfficientAT's too (EfficientAT took this front end from PaSST), so the two
# families share one FrontendConfig.
PASST_FRONTEND = EFFICIENTAT_FRONTEND

PATCH = 16                # patch size in frames and mel bins
STRIDE = 10               # patch stride of the s10 models, in both axes
TIME_COLUMNS = 99         # time positional embedding of the released models: 998 frames (10 s)
N_MELS = 128
FREQ_ROWS = (N_MELS - PATCH) // STRIDE + 1   # 12
EMBED_DIM = 768
HEADS = 12
MLP_RATIO = 4
# PaSST's fine-tuning on ESC-50 (ex_esc50.py); its AudioSet pretraining used time=40, freq=4.
PATCHOUT = {'time': 10, 'freq': 3, 'unstructured': 0}

_block_norm = partial(nn.LayerNorm, epsilon=1e-6)


class DropPath(nn.Layer):
    """Stochastic depth: drops a sample's residual branch with probability `rate` in training."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = paddle.bernoulli(paddle.full([x.shape[0]] + [1] * (x.ndim - 1), 1 - self.rate, x.dtype))
        return x * keep / (1 - self.rate)


class Attention(nn.Layer):
    def __init__(self, dim, heads, attn_drop=0.0, drop=0.0):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x):                                   # [batch, tokens, dim]
        dim = x.shape[-1]
        qkv = self.qkv(x).reshape([0, 0, 3, self.heads, dim // self.heads]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]                     # [batch, heads, tokens, head dim]
        attn = self.attn_drop(F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1))
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([0, 0, dim])
        return self.proj_drop(self.proj(out))


class Mlp(nn.Layer):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Layer):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, dim, heads, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = _block_norm(dim)
        self.attn = Attention(dim, heads, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = _block_norm(dim)
        self.mlp = Mlp(dim, MLP_RATIO * dim, drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Layer):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2D(1, dim, PATCH, stride=STRIDE)

    def forward(self, x):                                   # [batch, 1, n_mels, frames]
        return self.proj(x)                                 # [batch, dim, rows, columns]


def _random_keep(count, drop):
    """Sorted indices of the `count - drop` items kept (at least one)."""
    drop = min(drop, count - 1)
    return paddle.sort(paddle.randperm(count)[:count - drop])


class PaSST(Backbone):
    """PaSST: log-mel [batch, frames, 128] -> embedding [batch, dim] -> AudioSet logits [batch, 527]."""

    def __init__(self, dim=EMBED_DIM, depth=12, heads=HEADS, time_columns=TIME_COLUMNS, audioset_head=True,
                 num_classes=AUDIOSET_CLASSES, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, patchout=None):
        super().__init__()
        self.emb_size = dim
        self.time_columns = time_columns
        self.patch_embed = PatchEmbed(dim)
        param = partial(self.create_parameter, default_initializer=nn.initializer.TruncatedNormal(std=0.02))
        self.cls_token = param([1, 1, dim])
        self.dist_token = param([1, 1, dim])
        self.new_pos_embed = param([1, 2, dim])                           # of the cls and dist tokens
        self.freq_new_pos_embed = param([1, dim, FREQ_ROWS, 1])
        self.time_new_pos_embed = param([1, dim, 1, time_columns])
        self.pos_drop = nn.Dropout(drop_rate)
        rates = np.linspace(0, drop_path_rate, depth)                     # upstream's stochastic depth rule
        self.blocks = nn.Sequential(*[Block(dim, heads, drop_rate, attn_drop_rate, float(r)) for r in rates])
        self.norm = _block_norm(dim)
        if audioset_head:   # PyTorch's LayerNorm default eps here, as upstream's head
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        self.has_audioset_head = audioset_head
        self.set_patchout(**{**PATCHOUT, **(patchout or {})})

    def set_patchout(self, time=None, freq=None, unstructured=None):
        """Patches dropped at random in training mode: `time` columns, `freq` rows, then `unstructured`
        single patches (None: unchanged). Eval mode never drops any."""
        for name, value in (('time', time), ('freq', freq), ('unstructured', unstructured)):
            if value is not None:
                if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                    raise ArgumentError(f'patchout {name} must be a count of patches >= 0, got {value!r}')
                setattr(self, f'patchout_{name}', int(value))

    # -- the window arithmetic, on shape tensors so that exported graphs take any length

    def _windows(self, features):
        """features [batch, frames, mels] -> (windows [batch * n, frames', mels], n, window columns,
        columns of the whole input, first column of each window [n])."""
        known = features.shape[1] if paddle.in_dynamic_mode() else None   # exported graphs take any length
        if known is not None and known < PATCH:
            raise ArgumentError(f'PaSST needs at least {PATCH} feature frames (one {PATCH}-frame patch), got '
                                f'{known}: pad the input (predict and detect pad short clips to the model\'s '
                                f'min_seconds)')
        frames = paddle.shape(features)[1]
        columns = (frames - PATCH) // STRIDE + 1
        width = paddle.minimum(columns, paddle.full_like(columns, self.time_columns))
        count = (columns + width - 1) // width
        starts = paddle.minimum(paddle.arange(count, dtype=columns.dtype) * width, columns - width)
        span = (width - 1) * STRIDE + PATCH
        index = (starts * STRIDE).unsqueeze(1) + paddle.arange(span, dtype=columns.dtype).unsqueeze(0)
        windows = paddle.gather(features, index.reshape([-1]), axis=1)    # [batch, n * span, mels]
        windows = windows.reshape([-1, span, features.shape[2]])
        return windows, count, width, columns, starts

    def _time_pos_embed(self, columns):
        if self.training and columns < self.time_columns:   # a random run of columns, as upstream trains
            offset = int(np.random.randint(self.time_columns - columns + 1))
            return self.time_new_pos_embed[:, :, :, offset:offset + columns]
        return paddle.slice(self.time_new_pos_embed, axes=[3], starts=[0], ends=[columns])

    def _tokens(self, windows, frames_kept):
        """Windows [batch', frames', mels] -> normed output tokens [batch', 2 + patches, dim] and the
        (rows, columns) of patches kept; frames_kept: no time or unstructured patchout."""
        x = self.patch_embed(windows.unsqueeze(1).transpose([0, 1, 3, 2]))    # [b, dim, rows, columns]
        columns = x.shape[3] if self.training else paddle.shape(x)[3]
        x = x + self._time_pos_embed(columns) + self.freq_new_pos_embed
        rows = FREQ_ROWS
        if self.training and self.patchout_time and not frames_kept:
            keep = _random_keep(x.shape[3], self.patchout_time)
            x = paddle.index_select(x, keep, axis=3)
        if self.training and self.patchout_freq:
            keep = _random_keep(rows, self.patchout_freq)
            x = paddle.index_select(x, keep, axis=2)
            rows = int(keep.shape[0])
        x = x.flatten(2).transpose([0, 2, 1])                                 # [b, rows * columns, dim]
        if self.training and self.patchout_unstructured and not frames_kept:
            x = paddle.index_select(x, _random_keep(x.shape[1], self.patchout_unstructured), axis=1)
        batch = paddle.shape(x)[0]
        cls = (self.cls_token + self.new_pos_embed[:, :1]).expand([batch, -1, -1])
        dist = (self.dist_token + self.new_pos_embed[:, 1:]).expand([batch, -1, -1])
        x = self.pos_drop(paddle.concat([cls, dist, x], axis=1))
        return self.norm(self.blocks(x)), rows

    def forward_features(self, features):
        """Log-mel [batch, frames, n_mels] -> embedding [batch, dim]: (cls + dist token) / 2 after the
        final norm, averaged over the windows of a long input."""
        windows, *_ = self._windows(features)
        tokens, _ = self._tokens(windows, frames_kept=False)
        embedding = (tokens[:, 0] + tokens[:, 1]) / 2                         # [batch * n, dim]
        return embedding.reshape([paddle.shape(features)[0], -1, self.emb_size]).mean(axis=1)

    def forward_frames(self, features):
        """Log-mel [batch, frames, n_mels] -> [batch, columns, dim]: per time column of patches, the
        normed patch tokens averaged over frequency; columns = (frames - 16) // 10 + 1."""
        windows, count, width, columns, starts = self._windows(features)
        tokens, rows = self._tokens(windows, frames_kept=True)
        patches = tokens[:, 2:].reshape([0, rows, -1, self.emb_size]).mean(axis=1)   # [batch * n, width, dim]
        patches = patches.reshape([paddle.shape(features)[0], -1, self.emb_size])    # [batch, n * width, dim]
        column = paddle.arange(columns, dtype=columns.dtype)
        window = paddle.minimum(column // width, count - 1)
        index = window * width + column - paddle.gather(starts, window)
        return paddle.gather(patches, index, axis=1)

    def audioset_logits(self, embedding):
        """Embedding [..., dim] -> AudioSet logits [..., 527]: upstream's head, LayerNorm + Linear."""
        return self.head(embedding)


def build(depth=12, audioset_head=False):
    """A PaSST-S (depth 12) or PaSST-L (depth 7) with the s10 AudioSet models' geometry."""
    return PaSST(depth=depth, audioset_head=audioset_head)


# --- checkpoints ------------------------------------------------------------------------------

_PREFIXES = ('patch_embed.', 'blocks.', 'norm.', 'head.')
_TOKENS = ('cls_token', 'dist_token', 'new_pos_embed', 'freq_new_pos_embed', 'time_new_pos_embed')


def _is_linear_weight(name):
    return name.endswith(('.qkv.weight', '.proj.weight', '.fc1.weight', '.fc2.weight')) and name.startswith(
        'blocks.') or name == 'head.1.weight'


def _torch_layout(state, source):
    """Whether Linear weights are PyTorch's [out, in]: told by the first block's qkv ([3 dim, dim]
    there, [dim, 3 dim] in ours)."""
    qkv = next((np.shape(v) for k, v in state.items() if k.endswith('attn.qkv.weight')), None)
    if qkv is None:
        raise CheckpointError(f'{source}: no attention weights (blocks.N.attn.qkv.weight); is it a checkpoint '
                              f'of a PaSST network?')
    return qkv[0] == 3 * qkv[1]


def checkpoint_filter(state, source):
    """A PaSST state dict in upstream's layout (its release files, a PyTorch state dict of the PaSST
    class, or hear21passt's wrapper with its `net.` prefix) or ours -> our names and shapes.

    Linear weights are transposed to [in, out] where the file holds PyTorch's [out, in];
    `head_dist.*` is dropped (upstream's eval forward never applies it) and so is hear21passt's
    `device_proxy`. Anything else is refused, naming the key.
    """
    state = {k[len('net.'):] if k.startswith('net.') else k: v for k, v in state.items() if k != 'device_proxy'}
    torch_layout = _torch_layout(state, source)
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        if name.startswith('head_dist.'):
            continue
        if name.startswith('mel.'):
            raise CheckpointError(f'{source}: {name!r} is a front-end tensor; PaSST\'s front end has no learnt '
                                  f'weights and its checkpoints hold none: is it a checkpoint of another family?')
        if name not in _TOKENS and not name.startswith(_PREFIXES):
            raise CheckpointError(f'{source}: {name!r} is not a parameter of a PaSST network (whose names start '
                                  f'with patch_embed., blocks., norm., head. or are its tokens and positional '
                                  f'embeddings); is it a checkpoint of another model family?')
        if torch_layout and _is_linear_weight(name) and value.ndim == 2:
            value = value.T
        out[name] = value
    return out


# --- registered models ------------------------------------------------------------------------

# Time column j covers front-end frames 10 j .. 10 j + 15: centred on frame 10 j + 7.5.
FRAME_GEOMETRY = FrameGeometry(stride=STRIDE, offset=(PATCH - 1) / 2)


def _params(depth, dim=EMBED_DIM, classes=AUDIOSET_CLASSES):
    """Learnt parameters of a PaSST with its AudioSet head (no head_dist), counted from the
    architecture: patch convolution, tokens and positional embeddings, blocks, final norm, head."""
    hidden = MLP_RATIO * dim
    block = (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (2 * dim * hidden + hidden + dim) + 4 * dim
    return (PATCH * PATCH * dim + dim) + dim * (2 + 2 + FREQ_ROWS + TIME_COLUMNS) + depth * block + 2 * dim \
        + 2 * dim + dim * classes + classes


def _release(url, depth, audioset_map):
    filename = url.rsplit('/', 1)[1]
    params = _params(depth)
    # A torch.save'd state dict of float32 tensors: 4 bytes per parameter, the unused head_dist
    # (dim x 527 + 527), and under 1 MB of framing for ~200 named tensors.
    extra = EMBED_DIM * AUDIOSET_CLASSES + AUDIOSET_CLASSES
    weights = PretrainedCfg(url=url, filename=filename, file_format='torch',
                            size_range=(4 * params, 4 * (params + extra) + (1 << 20)), license='Apache-2.0',
                            frontend=PASST_FRONTEND, frame_geometry=FRAME_GEOMETRY, labels='audioset',
                            classifier='head', description='AudioSet tagger (PaSST, PyTorch release)')
    return depth, weights, {'params': params, 'audioset_map': audioset_map}


_RELEASES = 'https://github.com/kkoutini/PaSST/releases/download/'
# The s10 AudioSet releases of upstream's default_cfgs (models/passt.py), with the mAP in their names.
MODELS = {
    'passt_s_swa_p16_128_ap476': _release(_RELEASES + 'v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt', 12,
                                          0.476),
    'passt_s_swa_p16_128_ap4761': _release(_RELEASES + 'v0.0.2-audioset/passt-s-f128-p16-s10-ap.4761-swa.pt', 12,
                                           0.4761),
    'passt_s_p16_128_ap472': _release(_RELEASES + 'v0.0.2-audioset/passt-s-f128-p16-s10-ap.472.pt', 12, 0.472),
    'passt_s_kd_p16_128_ap486': _release(_RELEASES + 'v.0.0.9/passt-s-kd-ap.486.pt', 12, 0.486),
    'passt_l_kd_p16_128_ap47': _release(_RELEASES + 'v.0.0.10/passt-l-kd-ap.47.pt', 7, 0.47),
}


def _register_all():
    for name, (depth, weights, published) in MODELS.items():
        register_model(ModelSpec(
            name=name, family=FAMILY, build=partial(build, depth), emb_size=EMBED_DIM,
            checkpoint_filter=checkpoint_filter, weights=weights,
            # One patch needs 16 front-end frames: 0.16 s = 5120 samples (pre-emphasis takes one).
            min_seconds=0.16, audioset_head='head', head_dropout=0.0, published=published))


_register_all()
