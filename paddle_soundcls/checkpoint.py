"""Checkpoint files: reading the layouts users bring, writing ours atomically.

Our layout (also PaddleSpeech's `SoundClassifier`): `backbone.*` for the PANNs trunk and
`fc.*` for the classification head, in `model.pdparams`, with `meta.json` beside it
holding what is needed to rebuild the Module (model name, task, labels, front end).
"""
import json
import os
import shutil
import tempfile

import numpy as np

META_FILE = 'meta.json'
PARAMS_FILE = 'model.pdparams'
FORMAT = 'paddle_soundcls/1'


def _default_mode(base):
    """`base` less the process umask: what open()/mkdir() would have given (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


def atomic_write(path, write):
    """Call write(tmp_path), then move tmp_path over `path` in one step."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode(0o666))
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, data):
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
    atomic_write(path, write)


def replace_dir(build, target):
    """Build a directory with build(tmp_dir), then swap it in for `target`.

    The old directory is kept as `target.old` until the new one is in place, so a crash
    at any moment leaves a complete directory at `target` or at `target.old`.
    """
    target = os.fspath(target)
    parent = os.path.dirname(os.path.abspath(target)) or '.'
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(target) + '.', suffix='.tmp')
    try:
        os.chmod(tmp, _default_mode(0o777))
        build(tmp)
        old = target + '.old'
        if os.path.exists(old):
            shutil.rmtree(old)
        if os.path.exists(target):
            os.replace(target, old)
        os.replace(tmp, target)
        if os.path.exists(old):
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def recover_dir(target):
    """Put back `target.old` if a crash left it without `target`; return whether `target` exists."""
    old = target + '.old'
    if not os.path.exists(target) and os.path.exists(old):
        os.replace(old, target)
    return os.path.exists(target)


def read_meta(directory):
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f'cannot read {path}: {exc}') from None
    if meta.get('format') != FORMAT:
        raise CheckpointError(f'{path} is not a paddle_soundcls checkpoint (format {meta.get("format")!r})')
    return meta


def load_params(path):
    """Read a .pdparams file as {name: numpy array}."""
    import paddle
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint file not found: {path}')
    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as exc:
        raise CheckpointError(f'cannot read checkpoint {path}: {exc}. The file is damaged or not a '
                              f'Paddle .pdparams file.') from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} does not hold a state dict (found {type(state).__name__})')
    return {k: np.asarray(v) for k, v in state.items()}


def resolve(load_checkpoint):
    """A file or a directory -> (params path, meta or None)."""
    path = os.fspath(load_checkpoint)
    if os.path.isdir(path):
        params = os.path.join(path, PARAMS_FILE)
        if not os.path.isfile(params):
            raise CheckpointError(f'{path} holds no {PARAMS_FILE}; pass a checkpoint directory written by the '
                                  f'Trainer (e.g. ckpt/best_model) or a .pdparams file')
        return params, read_meta(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'load_checkpoint: no such file or directory: {path}')
    return path, read_meta(os.path.dirname(path))


_HUB_PREFIXES = ('cnn14.', 'cnn10.', 'cnn6.')


def to_module_layout(state, source):
    """Rename the keys of any supported layout to ours (`backbone.*`, `fc.*`).

    - official backbone + tagging checkpoints: `bn0.*`, `conv_block*`, `fc1.*`, `fc_audioset.*`
    - ours and PaddleSpeech's SoundClassifier: `backbone.*`, `fc.*`
    - PaddleHub's fine-tuned modules: `cnn14.*` (or cnn10/cnn6), `fc.*`
    """
    out = {}
    for key, value in state.items():
        if key.startswith('backbone.') or key.startswith('fc.'):
            new = key
        elif key.startswith(_HUB_PREFIXES):
            new = 'backbone.' + key.split('.', 1)[1]
        elif key.startswith(('bn0.', 'conv_block', 'fc1.', 'fc_audioset.')):
            new = 'backbone.' + key
        else:
            raise CheckpointError(f'{source}: unrecognised parameter {key!r}; expected the official PANNs names '
                                  f'(bn0.*, conv_block*, fc1.*, fc_audioset.*) or backbone.*/fc.* or cnn14.*/fc.*')
        out[new] = value
    return out
