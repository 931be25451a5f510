"""How big and how costly a model is: parameters, parameter memory, MACs and peak activation memory.

    from paddle_soundcls.analysis.complexity import complexity, check_budget, check_dcase_budget
    report = complexity('cpmobile', seconds=1)        # 61,138 parameters, 29,120,666 MACs
    check_dcase_budget(report)                        # DCASE task 1: 128 kB at int8, 30 M MACs per 1 s
    check_budget(report, max_params=64_000, max_macs_per_second=20e6)   # any other budget

    paddle-soundcls complexity efficientat_mn04 panns_cnn14 --seconds 1 10 [--json] [--layers]
    paddle-soundcls complexity cpmobile --seconds 1 --budget-dcase

Figures are counted on the network input, the log-mel features [1, frames, n_mels] of one
clip: the front end is excluded, as the DCASE low-complexity rules count them. They come from
one forward pass of the real network with forward post-hooks on its layers, so they hold for
any registered family without knowing its architecture.

Two countings (`counting=`), which differ in normalisation layers (and transposed convolutions):
- 'dcase' (the default): as the DCASE task 1 organisers count, with NeSsi's get_torch_size,
  i.e. torchinfo.summary's total_mult_adds and total_params (the DCASE 2024 baseline's
  helpers/nessi.py; its README's 61,148 parameters and 29,419,156 MACs). A layer's MACs are its
  own parameters times the positions it is applied at. Conv1D / 2D / 3D (and transposed ones):
  weights and bias at every output position, i.e. in / groups x kernel MACs per output value,
  plus one for the bias. Linear: weights and bias at every row of its input (torchinfo 1.8.0
  counts a Linear once per batch item whatever the rows, which it fixed later; the two agree
  on a Linear on pooled [batch, features] input). Any other layer with weights (BatchNorm,
  LayerNorm, GroupNorm, ...): its parameters once per clip (BatchNorm: 2 x channels).
  Activations, pooling, the squeeze-excitation means, residual additions and matrix products
  outside Linear layers are not counted.
- 'fused': as an inference engine runs the network once BatchNorm is folded into the
  preceding convolution: the same Conv and Linear MACs, and nothing for normalisations
  (EfficientAT's helpers/flop_count.py counts this way).
Parameters are the same in both: learnt weights, as PyTorch and torchinfo count them, BatchNorm
scale and shift included. Its running means and variances (Paddle keeps them as non-trainable
parameters, PyTorch as buffers) are reported apart. Parameter memory is parameters x 4, 2 or 1
bytes (fp32 / fp16 / int8); 1 kB = 1000 bytes, as in the DCASE rules (128 kB = 128,000
parameters at int8, NeSsi's MAX_PARAMS_MEMORY).

Peak activation memory: the largest input + output of one Conv or Linear layer for one clip,
the per-layer definition of MCUNetV2 (Lin et al., 2021) that EfficientAT's
helpers/peak_memory.py uses. Conv and Linear are the operators left once BatchNorm and
activations are fused into them, as inference engines do. Tensors kept alive beside them (a
residual branch) are not added, so a runtime holding every live tensor needs somewhat more.

The DCASE 2024 baseline counts 10 parameters and 298,490 MACs more than the registered
`cpmobile` (61,138 and 29,120,666) on a 1-s clip: its classifier is a 1x1 conv without bias +
BatchNorm (1,060 parameters) applied at each of the 32 x 9 positions of the last feature map
before the average (299,540 MACs); ours averages first and then applies the Module's Linear
with bias (1,050 parameters and MACs). The rest of the network counts the same, layer by layer.
"""
import json
import sys
import textwrap

import numpy as np

from .. import validate
from ..models import registry
from ..errors import ArgumentError

BYTES_PER_VALUE = {'fp32': 4, 'fp16': 2, 'int8': 1}
DCASE_PARAM_MEMORY_KB = 128          # DCASE 2024 task 1: parameter memory, any data type (1 kB = 1000 bytes)
DCASE_PARAM_DTYPE = 'int8'           # the budget's default: parameters quantised to 1 byte each
DCASE_MACS_PER_SECOND = 30e6         # DCASE 2024 task 1: MACs for one 1-s clip
DEFAULT_SECONDS = (1, 10)
DEFAULT_NUM_CLASS = 10               # the new head of families without an AudioSet head
DEFAULT_COUNTING = 'dcase'
_COMMON = ('Front end excluded: counted on the log-mel input of one clip. Parameters: learnt weights, BatchNorm '
           'scale and shift included (its running statistics apart). Peak activation: the largest input + output '
           'of one Conv or Linear layer for one clip.')
COUNTINGS = {
    'dcase': ('as the DCASE task 1 organisers count (NeSsi, torchinfo): MACs of Conv1D/2D/3D (grouped and depthwise '
              'included) at every output position and of Linear layers at every input row, biases as one MAC per '
              'output; BatchNorm, LayerNorm and other layers with weights: their parameters once per clip; '
              'activations, pooling and element-wise operations not counted. ' + _COMMON),
    'fused': ('with BatchNorm folded into the convolutions, as inference engines run them: MACs of Conv1D/2D/3D '
              '(grouped and depthwise included) and Linear layers, biases as one MAC per output; normalisations, '
              'activations, pooling and element-wise operations not counted. ' + _COMMON),
}
COUNTING = COUNTINGS[DEFAULT_COUNTING]


def _check_seconds(seconds):
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        seconds = (seconds,)
    try:
        seconds = [float(s) for s in seconds]
    except (TypeError, ValueError):
        raise ArgumentError(f'seconds must be a clip length or a list of them (seconds of audio), got {seconds!r}') \
            from None
    if not seconds or any(not s > 0 for s in seconds):
        raise ArgumentError(f'seconds must be positive clip lengths, got {seconds!r}')
    return seconds


def _check_min_seconds(name, seconds, min_seconds):
    too_short = [s for s in seconds if s < min_seconds]
    if too_short:
        raise ArgumentError(f'{name} takes clips of at least {min_seconds:g} s (shorter ones are zero-padded to it); '
                         f'seconds {too_short} are shorter: count {min_seconds:g} s instead')


def _kb(num_bytes):
    return round(num_bytes / 1000, 3)


def _module_for(name, task, num_class):
    """A Module of the registered model `name` with random weights: the AudioSet tagger where the
    family has one (unless task says otherwise), else a 'sound-cls' head with num_class classes."""
    from ..module import Module
    spec = registry.get_spec(name)
    num_class = validate.positive_int('num_class', num_class, allow_none=True)
    if task is None:
        task = 'tagging' if spec.audioset_head is not None and num_class is None else 'sound-cls'
    if task == 'tagging':
        if num_class is not None:
            raise ArgumentError(f"num_class goes with task='sound-cls'; task='tagging' has the "
                             f"{registry.AUDIOSET_CLASSES} AudioSet classes")
        return Module(name, task='tagging', pretrained=False)
    return Module(name, task=task, num_class=num_class or DEFAULT_NUM_CLASS, pretrained=False)


def _count_parameters(layer, exclude_prefix=None):
    """(learnt parameters, BatchNorm running statistics) of `layer`, leaving out names under exclude_prefix."""
    learnt = statistics = 0
    for name, param in layer.named_parameters():
        if exclude_prefix and (name == exclude_prefix or name.startswith(exclude_prefix + '.')):
            continue
        # Paddle keeps BatchNorm's running mean and variance as parameters that never get a gradient.
        if param.stop_gradient and name.rpartition('.')[2] in ('_mean', '_variance'):
            statistics += int(np.prod(param.shape))
        else:
            learnt += int(np.prod(param.shape))
    return learnt, statistics


def _tensors(value):
    """The tensors in a layer's inputs or outputs (a tensor, or nested tuples / lists of them)."""
    import paddle
    if isinstance(value, paddle.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _numel(tensor):
    return int(np.prod(tensor.shape))


def _own_parameters(layer):
    """{name: parameter} of `layer` itself, without BatchNorm's running statistics."""
    return {name: param for name, param in layer.named_parameters(include_sublayers=False)
            if not (param.stop_gradient and name in ('_mean', '_variance'))}


class _Counter:
    """Forward post-hooks on the layers of a network that `counting` counts: their MACs, each
    layer's figures, and the largest input + output of one Conv or Linear layer."""

    def __init__(self, network, counting):
        import paddle.nn as nn
        # Folded into the convolutions at inference (BatchNorm) or element-wise (the others).
        normalisations = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm,
                          nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1D, nn.InstanceNorm2D, nn.InstanceNorm3D)
        convs = (nn.Conv1D, nn.Conv2D, nn.Conv3D)
        if counting == 'dcase':
            # torchinfo counts every layer whose class name has "Conv" as a convolution.
            convs += (nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose)
        self.macs = {'conv': 0, 'linear': 0, 'other': 0}
        self.layers = []
        self.peak = (0, None)
        self.uncounted = set()
        self.handles = []
        for name, layer in network.named_sublayers(include_self=True):
            name = name or 'network'
            own = _own_parameters(layer)
            if isinstance(layer, convs):
                self.handles.append(layer.register_forward_post_hook(self._hook(name, 'conv', self._conv_macs)))
            elif isinstance(layer, nn.Linear):
                self.handles.append(layer.register_forward_post_hook(self._hook(name, 'linear', self._linear_macs)))
            elif (counting == 'dcase' and own and set(own) <= {'weight', 'bias'}
                  and not any(True for _ in layer.children())):
                # torchinfo: a layer's "weight" and "bias", once per batch item (the layers with
                # sublayers are left to those).
                self.handles.append(layer.register_forward_post_hook(self._hook(name, 'other', self._once_macs)))
            elif own and not isinstance(layer, normalisations):
                # A layer with weights of its own that is neither a Conv, a Linear nor a
                # normalisation (an LSTM; a transposed convolution when fused): its MACs are
                # missing, so the report names it.
                self.uncounted.add(type(layer).__name__)

    def _hook(self, name, kind, macs_of):
        def hook(layer, inputs, output):
            outputs = _tensors(output)
            macs = macs_of(layer, outputs[0])
            self.macs[kind] += macs
            self.layers.append({'name': name, 'type': type(layer).__name__,
                                'output_shape': [int(d) for d in outputs[0].shape],
                                'params': sum(_numel(p) for p in _own_parameters(layer).values()), 'macs': macs})
            if kind != 'other':
                elements = sum(_numel(t) for t in _tensors(inputs) + outputs)
                if elements > self.peak[0]:
                    self.peak = (elements, f'{name} ({type(layer).__name__})')
        return hook

    @staticmethod
    def _conv_macs(layer, output):
        # Each weight and bias once per output position (torchinfo's rule): in / groups x kernel
        # MACs per output value plus one for the bias, for either data format.
        positions = _numel(output) // int(layer._out_channels)
        return positions * sum(_numel(p) for p in _own_parameters(layer).values())

    @staticmethod
    def _linear_macs(layer, output):
        # Paddle's Linear weight is [in, out]; it is applied to every row of the input.
        rows = _numel(output) // int(layer.weight.shape[1])
        return rows * sum(_numel(p) for p in _own_parameters(layer).values())

    @staticmethod
    def _once_macs(layer, output):
        # Once per batch item: the counted clip is a batch of one.
        return int(output.shape[0]) * sum(_numel(p) for p in _own_parameters(layer).values())

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _measure_clip(network, frames, n_mels, counting):
    """MACs, each counted layer and peak activation of one forward pass of `network` on one clip of `frames` frames."""
    import paddle
    counter = _Counter(network, counting)
    try:
        with paddle.no_grad():
            network(paddle.zeros([1, frames, n_mels], dtype='float32'))
    finally:
        counter.remove()
    elements, layer = counter.peak
    peak = {'elements': elements, 'layer': layer,
            **{f'{dtype}_kB': _kb(elements * size) for dtype, size in BYTES_PER_VALUE.items()}}
    macs = counter.macs
    return {'macs': sum(macs.values()), 'macs_conv': macs['conv'], 'macs_linear': macs['linear'],
            'macs_other': macs['other'], 'peak_activation': peak}, counter.layers, sorted(counter.uncounted)


def complexity(name_or_module, seconds=DEFAULT_SECONDS, task=None, num_class=None, frontend=None,
               counting=DEFAULT_COUNTING, layers=False):
    """The complexity report of a model, a JSON-ready dict.

    name_or_module: a registered model name (built with random weights: the figures do not depend
        on them), a Module, or any paddle Layer taking log-mel [batch, frames, n_mels] (then pass
        `frontend`, the FrontendConfig of its input).
    seconds: clip lengths to count MACs and activations for (default 1 s, the DCASE unit, and 10 s,
        the AudioSet clip).
    task, num_class: for a model name: the head to count. Default: the AudioSet tagging head where
        the family has one, else task='sound-cls' with 10 classes; the report's 'head' says which.
    counting: 'dcase' (default: as the DCASE task 1 organisers count, BatchNorm included) or
        'fused' (BatchNorm folded into the convolutions); see the module docstring.
    layers: also list, for each clip, every layer counted with its figures.

    Returns {'model', 'task', 'classes', 'head', 'params': {'total', 'backbone', 'head',
    'batchnorm_statistics'}, 'param_memory': {'fp32'|'fp16'|'int8': {'bytes', 'kB'}},
    'clips': [{'seconds', 'samples', 'frames', 'macs', 'macs_conv', 'macs_linear', 'macs_other'
    (normalisations; 0 when fused), 'peak_activation': {'elements', 'layer', 'fp32_kB', 'fp16_kB',
    'int8_kB'}[, 'layers': [{'name', 'type', 'output_shape', 'params', 'macs'}, ...]]}, ...],
    'macs_per_second', 'counting' ('dcase' or 'fused'), 'counting_rules', 'published',
    'uncounted_layers'}.
    """
    seconds = _check_seconds(seconds)
    if counting not in COUNTINGS:
        raise ArgumentError(f"counting must be one of {sorted(COUNTINGS)} ('dcase': as the DCASE task 1 organisers "
                            f"count; 'fused': BatchNorm folded into the convolutions), got {counting!r}")
    validate.flag('layers', layers)
    module = _network(name_or_module, seconds, task, num_class)
    about = _describe(module, from_name=isinstance(name_or_module, str), frontend=frontend)
    frontend, spec, total, backbone = about['frontend'], about['spec'], about['total'], about['backbone']
    _check_min_seconds(about['model'], seconds, about['min_seconds'])
    clips, uncounted = _measure_clips(module, frontend, seconds, counting, layers)
    report = {
        **{key: about[key] for key in ('model', 'task', 'classes', 'head')},
        'input': f'log-mel [1, frames, {frontend.n_mels}] at {frontend.sample_rate} Hz, hop {frontend.hop_length}',
        'params': {'total': total, 'backbone': backbone, 'head': None if backbone is None else total - backbone,
                   'batchnorm_statistics': about['statistics']},
        'param_memory': {dtype: {'bytes': total * size, 'kB': _kb(total * size)}
                         for dtype, size in BYTES_PER_VALUE.items()},
        'clips': clips,
        'macs_per_second': macs_per_second(clips),
        'counting': counting,
        'counting_rules': COUNTINGS[counting],
        'uncounted_layers': uncounted,
    }
    if spec is not None:
        report['published'] = {k: v for k, v in spec.published.items() if k == 'params' or k.startswith('macs')}
    return report


def _network(name_or_module, seconds, task, num_class):
    """The Layer to count: a registered model built with random weights, or the Module / Layer given."""
    import paddle.nn as nn
    if isinstance(name_or_module, str):
        _check_min_seconds(name_or_module, seconds, registry.get_spec(name_or_module).min_seconds)
        return _module_for(name_or_module, task, num_class)
    if isinstance(name_or_module, nn.Layer):
        if task is not None or num_class is not None:
            raise ArgumentError('task and num_class go with a model name; a Module or Layer is counted as it is')
        return name_or_module
    raise ArgumentError(f'name_or_module must be a registered model name, a Module or a paddle Layer, '
                    f'got {type(name_or_module).__name__}')


def _describe(module, from_name, frontend):
    """What the report says of the network besides its counts (model, task, classes, head; total,
    backbone and statistics: its parameters), with its registry spec, front end and min_seconds."""
    from ..module import Module
    total, statistics = _count_parameters(module)
    if not isinstance(module, Module):
        if frontend is None:
            raise ArgumentError(f'a {type(module).__name__} that is not a Module needs frontend=FrontendConfig(...), '
                             f'the front end of its log-mel input (its n_mels, sample rate and hop)')
        return {'model': type(module).__name__, 'task': None, 'classes': None, 'head': 'as given',
                'total': total, 'backbone': None, 'statistics': statistics, 'spec': None, 'frontend': frontend,
                'min_seconds': 0.0}
    spec, classes = module.spec, module.num_class
    if module.task == 'tagging':
        head = f'the AudioSet tagging head ({classes} classes)'
    else:
        head = f"a new 'sound-cls' head with {classes} classes"
        if spec.audioset_head is None and from_name:
            head += ' (the family has no AudioSet head)'
    # The backbone is everything forward_features uses: the trunk without its AudioSet head.
    backbone, _ = _count_parameters(module.backbone, exclude_prefix=spec.audioset_head)
    return {'model': module.name, 'task': module.task, 'classes': classes, 'head': head,
            'total': total, 'backbone': backbone, 'statistics': statistics, 'spec': spec,
            'frontend': module.frontend_cfg, 'min_seconds': spec.min_seconds}


def _measure_clips(module, frontend, seconds, counting, layers):
    """([the figures of one clip of each length in `seconds`], the layer types left uncounted), in eval mode."""
    was_training = module.training
    module.eval()
    clips, uncounted = [], []
    try:
        for s in seconds:
            samples = int(round(s * frontend.sample_rate))
            frames = frontend.num_frames(samples)
            figures, counted, uncounted = _measure_clip(module, frames, frontend.n_mels, counting)
            clips.append({'seconds': s, 'samples': samples, 'frames': frames, **figures,
                          **({'layers': counted} if layers else {})})
    finally:
        if was_training:
            module.train()
    return clips, uncounted


def macs_per_second(clips):
    """MACs for 1 s of audio: the 1-s clip's count when there is one, else the longest clip's per second."""
    one = [c for c in clips if c['seconds'] == 1]
    if one:
        return one[0]['macs']
    longest = max(clips, key=lambda c: c['seconds'])
    return round(longest['macs'] / longest['seconds'])


def _si(value):
    """12751255 -> '12.8 M'."""
    for factor, prefix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(value) >= factor:
            return f'{value / factor:.3g} {prefix}'
    return f'{value:g}'


def check_budget(report, max_params=None, max_macs_per_second=None, max_param_kB=None, dtype=DCASE_PARAM_DTYPE):
    """Raise ArgumentError (a ValueError) when the model of `report` (from complexity()) is over a budget.

    max_params: most learnt parameters allowed. max_param_kB: most parameter memory in kB (1 kB =
        1000 bytes) with parameters stored as `dtype` ('int8': 1 byte each, 'fp16': 2, 'fp32': 4).
        max_macs_per_second: most MACs for 1 s of audio (counted on a 1-s clip; without one in
        the report, the longest clip's MACs per second). DCASE task 1's limits: check_dcase_budget.
    The message names the model, each figure over its limit and the limit. Returns the report.
    """
    over = []
    params = report['params']['total']
    memory = report['param_memory']
    if max_params is not None and params > max_params:
        over.append(f'{params:,} parameters > the limit of {int(max_params):,} (parameter memory '
                    f'{memory["fp16"]["kB"]:,.1f} kB at fp16, {memory["int8"]["kB"]:,.1f} kB at int8; '
                    f'the DCASE rule allows {DCASE_PARAM_MEMORY_KB} kB)')
    if max_param_kB is not None:
        if dtype not in BYTES_PER_VALUE:
            raise ArgumentError(f'dtype must be one of {sorted(BYTES_PER_VALUE)} (the type parameters are stored as), '
                                f'got {dtype!r}')
        size = BYTES_PER_VALUE[dtype]
        limit = int(max_param_kB * 1000)
        if params * size > limit:
            over.append(f'{params:,} parameters take {_kb(params * size):,.3f} kB at {dtype} ({params * size:,} bytes, '
                        f'{size} per parameter) > the limit of {max_param_kB:g} kB ({limit:,} bytes; 1 kB = 1000 '
                        f'bytes as in the DCASE rules), which holds at most {limit // size:,} parameters at {dtype}')
    if max_macs_per_second is not None:
        macs = report['macs_per_second']
        if macs > max_macs_per_second:
            exact = any(c['seconds'] == 1 for c in report['clips'])
            how = 'on a 1-s clip' if exact else 'per second of the longest clip counted'
            over.append(f'{_si(macs)} MACs per second of audio ({macs:,}, {how}) > the limit of '
                        f'{_si(max_macs_per_second)} MACs ({int(max_macs_per_second):,}; the DCASE rule allows '
                        f'{_si(DCASE_MACS_PER_SECOND)})')
    if over:
        raise ArgumentError(f'{report["model"]} is over budget: ' + '; '.join(over))
    return report


def check_dcase_budget(report, dtype=DCASE_PARAM_DTYPE):
    """Raise ArgumentError when the model of `report` is over the DCASE 2024 task 1 limits: 128 kB
    of parameter memory (128,000 bytes: 128,000 parameters at int8, the default `dtype`; 64,000 at
    fp16) and 30 M MACs for a 1-s clip. The report must be counted as DCASE counts (counting=
    'dcase', the default) and include a 1-s clip. Returns the report."""
    if report.get('counting') != 'dcase':
        raise ArgumentError(f"the DCASE budget applies to figures counted as DCASE counts them: count "
                            f"{report['model']} with complexity(..., counting='dcase'), not {report.get('counting')!r}")
    if not any(c['seconds'] == 1 for c in report['clips']):
        raise ArgumentError(f"DCASE counts MACs on a 1-s clip: count {report['model']} with seconds=1 "
                            f"(the report has {[c['seconds'] for c in report['clips']]})")
    try:
        return check_budget(report, max_param_kB=DCASE_PARAM_MEMORY_KB, dtype=dtype,
                            max_macs_per_second=DCASE_MACS_PER_SECOND)
    except ArgumentError as exc:
        raise ArgumentError(str(exc).replace(' is over budget: ', ' is over the DCASE task 1 budget: ', 1)) from None


# ----------------------------------------------------------------------------- command line

def add_complexity_arguments(parser):
    """The arguments of `paddle-soundcls complexity MODEL [MODEL ...]`."""
    parser.add_argument('models', nargs='+', metavar='MODEL', help='registered model names (see list_models())')
    parser.add_argument('--seconds', type=float, nargs='+', default=list(DEFAULT_SECONDS),
                        help='clip lengths to count for (default: 1 10)')
    parser.add_argument('--task', choices=('tagging', 'sound-cls'), default=None,
                        help='the head counted: tagging (the AudioSet head; the default where the family has one) '
                             f'or sound-cls (a new head with --num-class classes, default {DEFAULT_NUM_CLASS})')
    parser.add_argument('--num-class', type=int, default=None, help='classes of the sound-cls head')
    parser.add_argument('--counting', choices=sorted(COUNTINGS), default=DEFAULT_COUNTING,
                        help='dcase (default): as the DCASE task 1 organisers count (NeSsi / torchinfo), BatchNorm '
                             'included; fused: BatchNorm folded into the convolutions')
    parser.add_argument('--layers', action='store_true', help='also list every layer counted, with its figures')
    parser.add_argument('--json', action='store_true', help='print the reports as JSON')
    parser.add_argument('--budget-params', type=int, default=None, metavar='N',
                        help='exit with status 1 when a model has more than N parameters (DCASE: 128 kB, i.e. '
                             '128000 at int8)')
    parser.add_argument('--budget-macs', type=float, default=None, metavar='N',
                        help='exit with status 1 when a model needs more than N MACs per 1 s of audio '
                             '(DCASE: 30e6)')
    parser.add_argument('--budget-dcase', action='store_true',
                        help=f'exit with status 1 when a model is over the DCASE task 1 limits: '
                             f'{DCASE_PARAM_MEMORY_KB} kB of parameters (1 kB = 1000 bytes) at --budget-dtype and '
                             f'{_si(DCASE_MACS_PER_SECOND)} MACs on a 1-s clip, counted as DCASE counts')
    parser.add_argument('--budget-dtype', choices=sorted(BYTES_PER_VALUE), default=DCASE_PARAM_DTYPE,
                        help=f'the type parameters are stored as for --budget-dcase (default {DCASE_PARAM_DTYPE}: '
                             f'1 byte each)')
    return parser


def format_table(reports):
    """The reports as a text table: one row per model and clip length."""
    rows = [('model', 'task', 'params', 'backbone', 'fp16 kB', 'int8 kB', 'seconds', 'frames', 'MACs',
             'peak act. fp32 kB')]
    for r in reports:
        for i, clip in enumerate(r['clips']):
            first = i == 0
            rows.append((r['model'] if first else '', (r['task'] or '') if first else '',
                         f'{r["params"]["total"]:,}' if first else '',
                         f'{r["params"]["backbone"]:,}' if first and r['params']['backbone'] is not None else '',
                         f'{r["param_memory"]["fp16"]["kB"]:,.1f}' if first else '',
                         f'{r["param_memory"]["int8"]["kB"]:,.1f}' if first else '',
                         f'{clip["seconds"]:g}', str(clip['frames']), f'{clip["macs"]:,} ({_si(clip["macs"])})',
                         f'{clip["peak_activation"]["fp32_kB"]:,.1f}'))
    lines = _columns(rows, left=2)
    for r in reports:
        for clip in r['clips']:
            if 'layers' in clip:
                lines += ['', f'{r["model"]}, {clip["seconds"]:g} s ({clip["frames"]} frames): {clip["macs"]:,} MACs']
                lines += _columns([('layer', 'type', 'output', 'params', 'MACs')] +
                                  [(layer['name'], layer['type'], 'x'.join(map(str, layer['output_shape'])),
                                    f'{layer["params"]:,}', f'{layer["macs"]:,}') for layer in clip['layers']],
                                  left=3)
    notes = sorted({r['head'] for r in reports if r['task'] == 'sound-cls'})
    rules = sorted({r['counting_rules'] for r in reports})
    return '\n'.join(lines + [f'sound-cls: {note}' for note in notes] +
                     [line for text in rules for line in textwrap.wrap('Counting: ' + text, 100)])


def _columns(rows, left):
    """Rows of cells as aligned text lines: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ['  '.join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def run_complexity(args):
    """`paddle-soundcls complexity`: print the reports; exit status 1 when a model is over a budget."""
    if args.budget_dcase and 1 not in args.seconds:
        raise ArgumentError(f'--budget-dcase checks the MACs of a 1-s clip, as DCASE counts them: add 1 to --seconds '
                            f'(got {args.seconds})')
    if args.budget_dcase and args.counting != 'dcase':
        raise ArgumentError(f'--budget-dcase checks figures counted as DCASE counts them: drop --counting '
                            f'{args.counting} (or give --counting dcase)')
    reports = [complexity(name, args.seconds, args.task, args.num_class, counting=args.counting, layers=args.layers)
               for name in args.models]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        print(format_table(reports))
    status = 0
    for report in reports:
        try:
            check_budget(report, args.budget_params, args.budget_macs)
            if args.budget_dcase:
                check_dcase_budget(report, args.budget_dtype)
        except ValueError as exc:
            print(f'paddle-soundcls complexity: {exc}', file=sys.stderr)
            status = 1
    return status
