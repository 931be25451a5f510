"""Weights for registered networks: fetch, read, adapt to the network's layout, check and load them.

One path for every family (timm's `_builder.load_pretrained`):
    file (any format, checkpoints.files.read_params) or the pretrained file (`pretrained_state`)
    -> `split_head`: the Module's classification head `fc.*`, and the backbone's part
    -> `backbone_state`: the pretrained file's own classifier dropped unless it is the backbone's
       AudioSet head, the first convolution summed to one input channel, then the family's
       checkpoint filter (its names and layouts; BatchNorm renames through `paddle_bn_name`)
    -> `load_module_state`: shapes and dtypes checked, missing and unexpected keys reported
`convert_file` runs the same path for `paddle-soundcls convert` and writes the result.
Nothing here knows a family: everything specific is in its ModelSpec and PretrainedCfg.
"""
import logging
import os
import warnings
from collections import OrderedDict

import numpy as np

from .. import cache
from ..checkpoints import files, pdparams
from ..errors import CheckpointError
from . import registry

logger = logging.getLogger(__name__)

HEAD = 'fc'   # the parameter prefix of a Module's classification head; the backbone's is `backbone.`
# PyTorch's BatchNorm statistics and their Paddle names (its step counter has no Paddle tensor).
BN_RENAMES = {'running_mean': '_mean', 'running_var': '_variance'}
BN_COUNTER = 'num_batches_tracked'
# The names `convert --model` took when it read only PANNs' PyTorch files.
DEPRECATED_NAMES = {'cnn14': 'panns_cnn14', 'cnn10': 'panns_cnn10', 'cnn6': 'panns_cnn6'}


def paddle_bn_name(key):
    """A state-dict key in Paddle's BatchNorm names (running_mean -> _mean, running_var -> _variance);
    None for PyTorch's num_batches_tracked counter. Other keys are returned as they are."""
    layer, _, attr = key.rpartition('.')
    if attr == BN_COUNTER:
        return None
    return f'{layer}.{BN_RENAMES.get(attr, attr)}' if layer else key


def has_torch_batchnorm(state):
    """Whether a state dict names BatchNorm statistics as PyTorch does (a torch.save'd network)."""
    return any(key.rpartition('.')[2] in (*BN_RENAMES, BN_COUNTER) for key in state)


def torch_bn_name(key):
    """The inverse of paddle_bn_name: the PyTorch name of a Paddle key."""
    layer, _, attr = key.rpartition('.')
    renames = {v: k for k, v in BN_RENAMES.items()}
    return f'{layer}.{renames.get(attr, attr)}' if layer else key


def _some(items, limit=8):
    return ', '.join(items if len(items) <= limit else items[:limit] + [f'... {len(items) - limit} more'])


# ----------------------------------------------------------------------------- reading weights

def pretrained_state(spec):
    """The official weights of `spec` as ({name: array}, the file they were read from), fetched into
    the cache once.

    Files in the 'torch' format are read without PyTorch (or running any code in them), mapped
    by backbone_state and cached as .pdparams beside the download.
    """
    w = spec.weights
    source = cache.fetch(w.url, w.filename, md5=w.md5, sha256=w.sha256, size_range=w.size_range)
    if w.file_format == 'pdparams':
        try:
            return pdparams.load_params(source), source
        except CheckpointError as exc:  # damaged in the cache (the size check passed)
            raise type(exc)(f'{exc} Delete {source} and run again to download it from {w.url}.') from None
    converted = os.path.join(cache.cache_dir(), f'{spec.name}.converted.pdparams')
    if os.path.isfile(converted):
        return pdparams.load_params(converted), converted
    try:
        state = backbone_state(spec, files.read_params(source), source)
    except CheckpointError as exc:  # damaged or not this model's file, under the official name
        raise type(exc)(f'{exc} Delete {source} and run again to download it from {w.url}.') from None
    files.save_pdparams(state, converted)
    return state, source


def read_checkpoint(load_checkpoint):
    """A checkpoint file or directory -> ({name: array} in the file's names, the file, its meta.json or None)."""
    source, meta = files.resolve(load_checkpoint)
    return files.read_checkpoint_params(source), source, meta


# ----------------------------------------------------------------------------- layouts

def split_head(spec, state):
    """(the Module's classification head `fc.*`, the backbone's part without `backbone.`) of a
    checkpoint in any accepted layout. In a family's own layout (no `backbone.*` keys) whose
    pretrained file names its classifier `fc` too (paddle.vision's ImageNet head), `fc.*` is that
    classifier: backbone_state drops it."""
    own_layout = not any(k.startswith('backbone.') for k in state)
    classifier = spec.weights.classifier if spec.weights is not None else None
    head_prefix = None if own_layout and classifier == HEAD else HEAD + '.'
    head = {k: v for k, v in state.items() if head_prefix and k.startswith(head_prefix)}
    trunk = {k[len('backbone.'):] if k.startswith('backbone.') else k: v for k, v in state.items() if k not in head}
    return head, trunk


def _adapt_first_conv(name, value):
    """A first convolution of several input channels (an RGB network) for our one-channel log-mel: the
    sum of its kernels, which on a grey image (the same in every channel) computes exactly what
    the original computes, so the pretrained stem sees a spectrogram as that picture in grey."""
    value = np.asarray(value)
    if value.ndim == 4 and value.shape[1] > 1:
        logger.info('%s: summed over its %d input channels for the one-channel log-mel', name, value.shape[1])
        return value.sum(axis=1, keepdims=True)
    return value


def backbone_state(spec, state, source):
    """A backbone state dict in any layout `spec` accepts -> the backbone's own names and layouts."""
    w = spec.weights
    if w is not None and w.classifier is not None and w.classifier != spec.audioset_head:
        dropped = [k for k in state if k.startswith(w.classifier + '.')]
        if dropped:
            logger.info('%s: its %s classifier (%s) is not used', source, w.labels, w.classifier)
        state = {k: v for k, v in state.items() if k not in dropped}
    if w is not None and w.first_conv is not None and w.first_conv in state:
        state = dict(state, **{w.first_conv: _adapt_first_conv(w.first_conv, state[w.first_conv])})
    return spec.checkpoint_filter(state, source)


def module_layout(spec, state, source):
    """Any accepted layout -> a Module's names: `backbone.*` by backbone_state, `fc.*` as they are."""
    head, trunk = split_head(spec, state)
    out = {'backbone.' + k: v for k, v in backbone_state(spec, trunk, source).items()}
    out.update(head)
    return out


# ----------------------------------------------------------------------------- loading

def as_parameter(name, value, parameter, source):
    """A checkpoint's array in the dtype of the parameter it loads into: half- or double-precision
    files load as the float32 network; a tensor that is not floating point is refused by name."""
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
        raise CheckpointError(f'{source}: tensor {name} holds {value.dtype} values, not floating-point '
                              f'weights; the file is damaged or not a checkpoint of this model')
    return value.astype(str(parameter.dtype).replace('paddle.', ''), copy=False)


def _refuse_misfits(module, state, own, source):
    """Raise CheckpointError for tensors of the wrong shape, missing backbone parameters or a missing
    AudioSet head where the task needs it."""
    mismatched = [f'{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}'
                  for k, v in state.items() if k in own and list(v.shape) != list(own[k].shape)]
    if mismatched:
        raise CheckpointError(
            f'{source} does not fit {module.name} (task={module.task!r}, {len(module.labels)} classes): '
            + '; '.join(mismatched[:5]) + (f' and {len(mismatched) - 5} more' if len(mismatched) > 5 else ''))
    missing = [k for k in own if k not in state]
    head_prefix = f'backbone.{module.spec.audioset_head}.'
    missing_backbone = [k for k in missing if k.startswith('backbone.') and not k.startswith(head_prefix)]
    if missing_backbone:
        raise CheckpointError(f'{source} lacks {len(missing_backbone)} backbone parameters of '
                              f'{module.name}, e.g. {missing_backbone[:3]}; is it for another model?')
    if module.task == 'tagging' and any(k.startswith(head_prefix) for k in missing):
        raise CheckpointError(f'{source} has no AudioSet tagging layer ({module.spec.audioset_head}); '
                              f'it cannot be used with task=tagging')
    return missing


def _report_unused(module, state, own, missing, source):
    unused = [k for k in state if k not in own]
    head_prefix = f'backbone.{module.spec.audioset_head}.'
    audioset = [k for k in unused if k.startswith(head_prefix)]
    if audioset:  # the pretrained tagger's head, not used by a new classification head
        logger.info('%s: the AudioSet head (%s) is not used with task=%s', source, module.spec.audioset_head,
                    module.task)
    unused = [k for k in unused if k not in audioset]
    if unused:
        logger.warning('%s: skipped %d parameters the %s model does not use: %s', source, len(unused),
                       module.task, ', '.join(unused[:10]))
    if any(k.startswith(HEAD + '.') for k in missing):
        logger.info('%s: classification head (%d classes) starts from random weights', module.name,
                    len(module.labels))


def load_module_state(module, state, source):
    """Load a checkpoint's {name: array} in any accepted layout into `module` (a Module): what does
    not fit is refused naming the file and the keys; what is left over is reported."""
    state = module_layout(module.spec, state, source)
    own = module.state_dict()
    missing = _refuse_misfits(module, state, own, source)
    _report_unused(module, state, own, missing, source)
    module.set_state_dict({k: as_parameter(k, v, own[k], source) for k, v in state.items() if k in own})


# ----------------------------------------------------------------------------- converting files

def model_name(name):
    """A registered model name; the deprecated short names are mapped to theirs, with a FutureWarning."""
    if name in DEPRECATED_NAMES:
        warnings.warn(f'model name {name!r} is deprecated; use {DEPRECATED_NAMES[name]!r}', FutureWarning,
                      stacklevel=3)
        name = DEPRECATED_NAMES[name]
    registry.get_spec(name)  # an unknown name: its error lists the registered ones
    return name


def network_shapes(spec):
    """{name: shape} of the state dict of `spec`'s backbone (with its AudioSet head), built without weights."""
    import paddle
    with paddle.LazyGuard():
        backbone = spec.build(audioset_head=spec.audioset_head is not None)
    return OrderedDict((k, tuple(v.shape)) for k, v in backbone.state_dict().items())


def convert_state(state, name, source='checkpoint'):
    """A checkpoint's {name: array} -> (OrderedDict of `name`'s backbone in its parameter order, names left out).

    backbone_state maps the names and layouts; every backbone parameter must then be there with
    its shape (the AudioSet head may be absent as a whole). Names it passes on that the network
    has no parameter for (a classifier of another task) are left out and returned. Raises
    CheckpointError naming the source and the tensors that do not fit.
    """
    spec = registry.get_spec(name)
    mapped = backbone_state(spec, state, source)
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
        raise CheckpointError(f'{source} does not fit {name}: ' + '; '.join(problems) + '. Is it a checkpoint of '
                              'another model? Give the name of the model it was made for.')
    out = OrderedDict((k, np.ascontiguousarray(mapped[k], dtype=np.float32)) for k in target if k in mapped)
    return out, [k for k in mapped if k not in target]


def _carried(key, names):
    """Whether tensor `key` of the file went on under its name, less a prefix and BatchNorm renames."""
    parts = (paddle_bn_name(key) or key).split('.')
    return any('.'.join(parts[i:]) in names for i in range(len(parts)))


def convert_file(input_path, output_path, model):
    """Convert the checkpoint file of registered model `model` to a .pdparams file in its backbone's
    names (the layout `Module(name, load_checkpoint=...)` and the weights cache take); returns a
    report, line by line."""
    name = model_name(model)
    spec = registry.get_spec(name)
    fmt = files.file_format(input_path)
    state = files.read_params(input_path)
    out, unused = convert_state(state, name, source=input_path)
    files.save_pdparams(out, output_path)

    counters = [k for k in state if k.endswith('.' + BN_COUNTER)]
    went_on = set(out) | set(unused)
    dropped = [k for k in state if k not in counters and not _carried(k, went_on)]
    lines = [f'read {len(state)} tensors from {input_path} ({files.FORMAT_NAMES[fmt]})',
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
