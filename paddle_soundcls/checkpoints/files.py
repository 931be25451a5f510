"""Checkpoint files of any format: the one reader of the files a Module is given, and the writer.

`read_params` reads PyTorch zip or legacy files and Paddle pickles, told apart by their content
rather than their names (release files end in .pt, .pth, .pdparams or nothing); none of them
is run. Mapping the names onto a network is the builder's job (models/builder.py).
"""
import json
import os

import numpy as np

from ..errors import CheckpointError
from ..fileio import atomic_write
from . import pdparams, schema, torchfile

PARAMS_FILE = 'model.pdparams'   # beside meta.json in a checkpoint directory
TRAINER_STATE = 'trainer.json'   # in the Trainer's epoch_N directories
FORMAT_NAMES = {'pdparams': 'a Paddle pickle', 'torch-zip': 'a PyTorch zip file',
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
        raise CheckpointError(f'cannot read checkpoint {path}: {exc}') from None
    return {'zip': 'torch-zip', 'legacy': 'torch-legacy'}.get(torchfile.sniff(head), 'pdparams')


def read_params(path):
    """Any checkpoint file we read -> {name: numpy array}, in the names the file has.

    Paddle files as by pdparams.load_params; PyTorch files (zip or legacy) without PyTorch, by
    torchfile.load_state_dict, less the `module.` prefix of nn.DataParallel. Either way
    nothing in the file is run.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint file not found: {path}')
    if file_format(path) == 'pdparams':
        return pdparams.load_params(path)
    return torchfile.strip_module_prefix(torchfile.load_state_dict(path))


def read_checkpoint_params(path):
    """The whole model's parameters of a checkpoint file: read_params(path), and for the epoch of a
    frozen-backbone run (whose trainer.json names a backbone file saved once in the run's folder,
    while the epoch holds the head) that backbone under them."""
    params = read_params(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with open(os.path.join(directory, TRAINER_STATE), encoding='utf-8') as f:
            backbone_file = json.load(f).get('backbone_file')
    except (OSError, ValueError, AttributeError):
        return params  # no trainer state, or not one that names a backbone: the file is the whole model
    if not backbone_file:
        return params
    backbone = os.path.join(os.path.dirname(directory), backbone_file)
    if not os.path.isfile(backbone):
        raise CheckpointError(f'{directory} holds the head of a frozen-backbone run; its backbone, {backbone}, is '
                              f'missing. Put it back, or use the run\'s best_model (a whole model)')
    return {**read_params(backbone), **params}


def save_pdparams(state, path):
    """Write {name: array} as a Paddle .pdparams file; the file appears only once complete."""
    import paddle

    def write(tmp):
        # numpy arrays are saved as they are (paddle.load gives Tensors back), sparing a copy of every weight.
        paddle.save({k: np.asarray(v) for k, v in state.items()}, tmp)
    atomic_write(path, write)
    return path


def resolve(load_checkpoint):
    """A checkpoint file or directory -> (params path, its meta.json as read by schema.read_meta, or None)."""
    path = os.fspath(load_checkpoint)
    if not os.path.exists(path) and os.path.isdir(path + '.old'):
        # Left by a crash between the two renames of replace_dir (where there is no atomic exchange).
        path += '.old'
    if os.path.isdir(path):
        params = os.path.join(path, PARAMS_FILE)
        if not os.path.isfile(params):
            raise CheckpointError(f'{path} holds no {PARAMS_FILE}; pass a checkpoint directory written by the '
                                  f'Trainer (e.g. ckpt/best_model) or a .pdparams file')
        return params, schema.read_meta(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'load_checkpoint: no such file or directory: {path}')
    return path, schema.read_meta(os.path.dirname(path))
