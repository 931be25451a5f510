"""Convert the official PyTorch PANNs checkpoints (qiuqiangkong/audioset_tagging_cnn) to Paddle.

The PyTorch state dict differs from the official Paddle one in three ways:
- BatchNorm buffers are `running_mean` / `running_var` (Paddle: `_mean` / `_variance`) and
  come with a `num_batches_tracked` counter Paddle does not keep;
- Linear weights are [out, in] (Paddle: [in, out]);
- the front end is part of the network: `spectrogram_extractor.stft.conv_{real,imag}.weight`
  (STFT kernels) and `logmel_extractor.melW` (mel filters, [n_freq, n_mels]). Our front end
  computes these itself, so they are dropped, after checking that melW matches our filters.
Every other key must map onto a parameter of our backbone with the same shape.
"""
from collections import OrderedDict

import numpy as np

from . import registry
from .checkpoint import CheckpointError, atomic_write
from .features.config import FrontendConfig
from .features.mel import mel_filterbank

MEL_KEY = 'logmel_extractor.melW'
STFT_KEYS = ('spectrogram_extractor.stft.conv_real.weight', 'spectrogram_extractor.stft.conv_imag.weight')
_BN_RENAMES = {'running_mean': '_mean', 'running_var': '_variance'}


class ConversionError(CheckpointError):
    """A PyTorch state dict that does not fit the asked architecture or front end."""


def build_backbone(arch, channels=None, emb_size=None, n_mels=64, lazy=False):
    """A PANNs backbone by architecture name ('cnn14', 'cnn10', 'cnn6').

    channels / emb_size: give both to build a smaller network of the same kind (kernel size,
        convolutions per block and last pooling taken from `arch`), e.g. for tests.
    lazy: build under paddle.LazyGuard, which allocates no weights: enough to read names and shapes.
    """
    import paddle
    from .models import ARCHITECTURES, PANNsBackbone
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
    return f'{layer}.{_BN_RENAMES.get(attr, attr)}' if layer else torch_key


def strip_module_prefix(state):
    """The state dict without the 'module.' prefix a model saved from inside nn.DataParallel has."""
    if state and all(k.startswith('module.') for k in state):
        return {k[len('module.'):]: v for k, v in state.items()}
    return dict(state)


def _torch_name(paddle_key):
    layer, _, attr = paddle_key.rpartition('.')
    renames = {v: k for k, v in _BN_RENAMES.items()}
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
    import paddle.nn as nn
    layer = build_backbone(arch, lazy=True) if isinstance(arch, str) else arch
    target = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    linear = {f'{name}.weight' for name, sub in layer.named_sublayers() if isinstance(sub, nn.Linear)}
    if frontend is None:
        # The front end the registered pretrained model of this architecture is used with.
        frontend = (registry.get_cfg(f'panns_{arch}').frontend if isinstance(arch, str)
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
                              + '. Is it a checkpoint of another PANNs model (choose it with --model)?')
    return OrderedDict((k, out[k]) for k in target)


def save_pdparams(state, path):
    """Write {name: array} as a Paddle .pdparams file; the file appears only once complete."""
    import paddle

    def write(tmp):
        # numpy arrays are saved as they are (paddle.load gives Tensors back), sparing a copy of every weight.
        paddle.save({k: np.asarray(v) for k, v in state.items()}, tmp)
    atomic_write(path, write)
    return path
