"""Checkpoint files of any format, read and written; release checkpoints converted to .pdparams files.

`read_params` is the one reader of the files a Module is given (load_checkpoint, downloaded
PyTorch weights): PyTorch zip or legacy files or Paddle pickles, told apart by their content
rather than their names (release files end in .pt, .pth, .pdparams or nothing), none of them run.

Converting is one path for every family: read_params reads the file, the family's checkpoint filter
(registry.ModelSpec.checkpoint_filter) maps it onto the network's own names, and this module
checks the result against the network and writes it (`paddle-soundcls convert`). The file
written holds the backbone (with its AudioSet head) in the official Paddle layout, the one
`Module(name, load_checkpoint=...)` and the weights cache take.
"""
import os
import warnings
from collections import OrderedDict

import numpy as np

from . import checkpoint, registry, torch_checkpoint
from .fileio import atomic_write
from .torch_checkpoint import BN_RENAMES

# The names `convert --model` took when it read only PANNs' PyTorch files.
DEPRECATED_NAMES = {'cnn14': 'panns_cnn14', 'cnn10': 'panns_cnn10', 'cnn6': 'panns_cnn6'}
_FORMAT_NAMES = {'pdparams': 'a Paddle pickle', 'torch-zip': 'a PyTorch zip file',
                 'torch-legacy': 'a PyTorch file in the legacy format'}
_HEAD_BYTES = 64  # enough for a zip header, or the legacy format's first pickle (its magic number)


def file_format(path):
    """What a checkpoint file is, from its first bytes: 'torch-zip' (torch.save, PyTorch >= 1.6),
    'torch-legacy' (torch.save before 1.6, a stream of pickles opening with PyTorch's magic
    number) or 'pdparams' (one pickle, as paddle.save writes; also anything unrecognised, which
    its reader then reports). Nothing in the file is run."""
    try:
        with open(path, 'rb') as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise checkpoint.CheckpointError(f'cannot read checkpoint {path}: {exc}') from None
    return {'zip': 'torch-zip', 'legacy': 'torch-legacy'}.get(torch_checkpoint.sniff(head), 'pdparams')


def read_params(path):
    """Any checkpoint file we read -> {name: numpy array}, in the names the file has.

    Paddle files as by checkpoint.load_params; PyTorch files (zip or legacy) without PyTorch, by
    torch_checkpoint.load_state_dict, less the `module.` prefix of nn.DataParallel. Either way
    nothing in the file is run. Mapping the names onto a network is the family's checkpoint
    filter's job (registry.ModelSpec.checkpoint_filter).
    """
    if not os.path.isfile(path):
        raise checkpoint.CheckpointError(f'checkpoint file not found: {path}')
    if file_format(path) == 'pdparams':
        return checkpoint.load_params(path)
    return torch_checkpoint.strip_module_prefix(torch_checkpoint.load_state_dict(path))


def model_name(name):
    """A registered model name; the deprecated short names are mapped to theirs, with a FutureWarning."""
    if name in DEPRECATED_NAMES:
        warnings.warn(f'model name {name!r} is deprecated; use {DEPRECATED_NAMES[name]!r}', FutureWarning,
                      stacklevel=3)
        name = DEPRECATED_NAMES[name]
    registry.get_spec(name)  # an unknown name: its error lists the registered ones
    return name


def save_pdparams(state, path):
    """Write {name: array} as a Paddle .pdparams file; the file appears only once complete."""
    import paddle

    def write(tmp):
        # numpy arrays are saved as they are (paddle.load gives Tensors back), sparing a copy of every weight.
        paddle.save({k: np.asarray(v) for k, v in state.items()}, tmp)
    atomic_write(path, write)
    return path


def network_shapes(spec):
    """{name: shape} of the state dict of `spec`'s backbone (with its AudioSet head), built without weights."""
    import paddle
    with paddle.LazyGuard():
        backbone = spec.build(audioset_head=spec.audioset_head is not None)
    return OrderedDict((k, tuple(v.shape)) for k, v in backbone.state_dict().items())


def _some(items, limit=8):
    return ', '.join(items if len(items) <= limit else items[:limit] + [f'... {len(items) - limit} more'])


def convert_state(state, name, source='checkpoint'):
    """A checkpoint's {name: array} -> (OrderedDict of `name`'s backbone in its parameter order, names left out).

    The family's checkpoint filter maps the names and layouts; every backbone parameter must then
    be there with its shape (the AudioSet head may be absent as a whole). Names the filter passes
    on that the network has no parameter for (a classifier of another task) are left out and
    returned. Raises CheckpointError naming the source and the tensors that do not fit.
    """
    spec = registry.get_spec(name)
    mapped = spec.checkpoint_filter(state, source)
    target = network_shapes(spec)
    head = f'{spec.audioset_head}.' if spec.audioset_head else None
    has_head = head is not None and any(k.startswith(head) for k in mapped)
    missing = [k for k in target if k not in mapped and (has_head or head is None or not k.startswith(head))]
    bad = []
    for key, value in mapped.items():
        if key in target:
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating):
                bad.append(f'{key} is {value.dtype}, not floating point')
            elif tuple(value.shape) != target[key]:
                bad.append(f'{key} is {list(value.shape)}, expected {list(target[key])}')
    if missing or bad:
        problems = ([f'{len(missing)} missing tensors ({_some(missing)})'] if missing else []) + bad[:8]
        raise checkpoint.CheckpointError(
            f'{source} does not fit {name}: ' + '; '.join(problems) + '. Is it a checkpoint of another model? '
            f'Give the name of the model it was made for.')
    out = OrderedDict((k, np.ascontiguousarray(mapped[k], dtype=np.float32)) for k in target if k in mapped)
    return out, [k for k in mapped if k not in target]


def _carried(key, names):
    """Whether tensor `key` of the file went on under its name, less a prefix and BatchNorm renames."""
    layer, _, attr = key.rpartition('.')
    parts = f'{layer}.{BN_RENAMES.get(attr, attr)}'.split('.')
    return any('.'.join(parts[i:]) in names for i in range(len(parts)))


def convert_file(input_path, output_path, model):
    """Convert the checkpoint file of registered model `model` to a .pdparams file; returns a report, line by line."""
    name = model_name(model)
    spec = registry.get_spec(name)
    fmt = file_format(input_path)
    state = read_params(input_path)
    out, unused = convert_state(state, name, source=input_path)
    save_pdparams(out, output_path)

    counters = [k for k in state if k.endswith('.num_batches_tracked')]
    went_on = set(out) | set(unused)
    dropped = [k for k in state if k not in counters and not _carried(k, went_on)]
    lines = [f'read {len(state)} tensors from {input_path} ({_FORMAT_NAMES[fmt]})',
             f'wrote {len(out)} tensors ({sum(v.size for v in out.values()):,} values) to {output_path}, '
             f'in the parameter names of {name}']
    if counters:
        lines.append(f'dropped {len(counters)} BatchNorm num_batches_tracked counters')
    if dropped:
        lines.append(f'dropped {len(dropped)} tensors that are not parameters of {name} (its checkpoint filter '
                     f'leaves them out, after checking any front-end buffers against its front end): '
                     f'{_some(dropped)}')
    if unused:
        lines.append(f'left out {len(unused)} tensors {name} has no parameter for: {_some(unused)}')
    head = spec.audioset_head
    if head is not None and any(k.startswith(f'{head}.') for k in out):
        lines.append(f"load it with Module('{name}', task='tagging', load_checkpoint={output_path!r}), or with "
                     f"task='sound-cls' and num_class=N to fine-tune it")
    else:
        if head is not None:
            lines.append(f'note: the file has no AudioSet head ({head}.*), so it cannot tag')
        lines.append(f"load it with Module('{name}', task='sound-cls', num_class=N, load_checkpoint={output_path!r})")
    return lines
