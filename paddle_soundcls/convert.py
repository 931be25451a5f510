"""Convert the official PyTorch PANNs checkpoints to Paddle .pdparams files, without PyTorch.

The key mapping lives with the family (models/panns.py: convert_panns_state); this module
reads and writes the files (`paddle-soundcls convert`).
"""
import numpy as np

from .features.config import FrontendConfig
from .fileio import atomic_write
from .models.panns import MEL_KEY, STFT_KEYS, build_backbone, convert_panns_state
from .torch_checkpoint import strip_module_prefix


def save_pdparams(state, path):
    """Write {name: array} as a Paddle .pdparams file; the file appears only once complete."""
    import paddle

    def write(tmp):
        # numpy arrays are saved as they are (paddle.load gives Tensors back), sparing a copy of every weight.
        paddle.save({k: np.asarray(v) for k, v in state.items()}, tmp)
    atomic_write(path, write)
    return path


def convert_file(input_path, output_path, arch, channels=None, emb_size=None, n_mels=64):
    """Convert a PyTorch PANNs checkpoint file to a .pdparams file; returns a report, line by line.

    channels / emb_size: a smaller network of the same kind as `arch` (for tests), both or neither.
    """
    from .torch_checkpoint import load_state_dict
    if (channels is None) != (emb_size is None):
        raise ValueError('--channels and --emb-size go together')
    torch_state = load_state_dict(input_path)
    target = arch
    if channels is not None or n_mels != 64:
        target = build_backbone(arch, channels, emb_size, n_mels, lazy=True)
    frontend = FrontendConfig(n_mels=n_mels)
    state = convert_panns_state(torch_state, target, frontend, source=input_path)
    save_pdparams(state, output_path)
    torch_state = strip_module_prefix(torch_state)
    frontend_keys = [k for k in torch_state if k in STFT_KEYS or k == MEL_KEY]
    counters = [k for k in torch_state if k.endswith('.num_batches_tracked')]
    num_values = sum(v.size for v in state.values())
    lines = [f'read {len(torch_state)} tensors from {input_path}',
             f'wrote {len(state)} tensors ({num_values:,} values) to {output_path}']
    if frontend_keys:
        lines.append(f'dropped {len(frontend_keys)} front-end buffers (our front end computes them): '
                     + ', '.join(frontend_keys))
    if counters:
        lines.append(f'dropped {len(counters)} BatchNorm num_batches_tracked counters')
    if MEL_KEY in torch_state:
        lines.append(f'mel filters match our front end ({frontend.sample_rate} Hz, n_fft {frontend.n_fft}, '
                     f'{frontend.n_mels} mel bins, {frontend.f_min}-{frontend.f_max} Hz)')
    else:
        lines.append(f'note: the checkpoint has no {MEL_KEY}, so its front-end settings could not be checked')
    if channels is None:
        lines.append(f"load it with Module('panns_{arch}', task='tagging', load_checkpoint={output_path!r})")
    return lines
