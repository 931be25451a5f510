"""How big and how costly a model is: parameters, parameter memory, MACs and peak activation memory.

    from paddle_soundcls.analysis.complexity import complexity, check_budget
    report = complexity('efficientat_mn10', seconds=(1, 10))
    check_budget(report, max_params=128_000, max_macs_per_second=30e6)   # DCASE task 1 limits

    paddle-soundcls complexity efficientat_mn04 panns_cnn14 --seconds 1 10 [--json]

Figures are counted on the network input, the log-mel features [1, frames, n_mels] of one
clip: the front end is excluded, as the DCASE low-complexity rules count them. They come from
one forward pass of the real network with forward post-hooks on its layers, so they hold for
any registered family without knowing its architecture.

What is counted (convolutions and Linear layers as torchinfo's "mult-adds" and EfficientAT's
helpers/flop_count.py count them):
- MACs: every Conv1D / Conv2D / Conv3D (grouped and depthwise ones with their in_channels /
  groups inputs per output) and every Linear (applied to every row of its input), each bias
  counted as one MAC per output value. BatchNorm is not counted: at inference it is folded
  into the preceding convolution. Activations, pooling, the squeeze-excitation means, residual
  additions and other element-wise operations are not counted either (they cost well under a
  MAC per activation value).
- Parameters: learnt weights, as PyTorch and torchinfo count them; BatchNorm running means
  and variances (Paddle keeps them as non-trainable parameters) are reported apart, since
  they are folded into the convolutions at inference. Parameter memory is parameters x 4, 2
  or 1 bytes (fp32 / fp16 / int8); 1 kB = 1000 bytes, as in the DCASE rules.
- Peak activation memory: the largest input + output of one Conv or Linear layer for one clip,
  the per-layer definition of MCUNetV2 (Lin et al., 2021) that EfficientAT's
  helpers/peak_memory.py uses. Conv and Linear are the operators left once BatchNorm and
  activations are fused into them, as inference engines do. Tensors kept alive beside them (a
  residual branch) are not added, so a runtime holding every live tensor needs somewhat more.
"""
import json
import sys
import textwrap

import numpy as np

from .. import validate
from ..models import registry
from ..errors import ArgumentError

BYTES_PER_VALUE = {'fp32': 4, 'fp16': 2, 'int8': 1}
DCASE_PARAM_MEMORY_KB = 128          # DCASE 2024 task 1: parameter memory, any data type
DCASE_MACS_PER_SECOND = 30e6         # DCASE 2024 task 1: MACs for one 1-s clip
DEFAULT_SECONDS = (1, 10)
DEFAULT_NUM_CLASS = 10               # the new head of families without an AudioSet head
COUNTING = ('MACs of Conv1D/2D/3D (grouped and depthwise included) and Linear layers, biases as one MAC per '
            'output; BatchNorm (folded into the convolutions), activations, pooling and element-wise operations '
            'not counted. Front end excluded: counted on the log-mel input of one clip. Parameters: learnt '
            'weights (BatchNorm running statistics apart). Peak activation: the largest input + output of one '
            'Conv or Linear layer for one clip.')


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


class _Counter:
    """Forward post-hooks on the Conv and Linear layers of a network: their MACs, and the largest
    input + output of one of them."""

    def __init__(self, network):
        import paddle.nn as nn
        self.conv_types = (nn.Conv1D, nn.Conv2D, nn.Conv3D)
        # Folded into the convolutions at inference (BatchNorm) or element-wise (the others).
        normalisations = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm,
                          nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1D, nn.InstanceNorm2D, nn.InstanceNorm3D)
        self.macs = {'conv': 0, 'linear': 0}
        self.peak = (0, None)
        self.uncounted = set()
        self.handles = []
        for name, layer in network.named_sublayers(include_self=True):
            if isinstance(layer, self.conv_types):
                self.handles.append(layer.register_forward_post_hook(self._hook(name or 'network', self._count_conv)))
            elif isinstance(layer, nn.Linear):
                self.handles.append(layer.register_forward_post_hook(self._hook(name or 'network', self._count_linear)))
            elif (not isinstance(layer, normalisations)
                  and any(True for _ in layer.parameters(include_sublayers=False))):
                # A layer with weights of its own that is neither a Conv, a Linear nor a
                # normalisation (an LSTM, a transposed convolution...): its MACs are missing, so
                # the report names it.
                self.uncounted.add(type(layer).__name__)

    def _hook(self, name, count):
        def hook(layer, inputs, output):
            count(layer, output)
            elements = sum(_numel(t) for t in _tensors(inputs) + _tensors(output))
            if elements > self.peak[0]:
                self.peak = (elements, f'{name} ({type(layer).__name__})')
        return hook

    def _count_conv(self, layer, output):
        # Per output value: one MAC for each weight of its (grouped) kernel, plus one for the bias.
        # The weight is [out, in / groups, *kernel] in either data format.
        per_output = int(np.prod(layer.weight.shape[1:])) + (1 if layer.bias is not None else 0)
        self.macs['conv'] += _numel(output) * per_output

    def _count_linear(self, layer, output):
        # Paddle's Linear weight is [in, out]; it is applied to every row of the input.
        rows = _numel(output) // int(layer.weight.shape[1])
        self.macs['linear'] += rows * (_numel(layer.weight) + (_numel(layer.bias) if layer.bias is not None else 0))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _measure_clip(network, frames, n_mels):
    """MACs and peak activation of one forward pass of `network` on one clip of `frames` frames."""
    import paddle
    counter = _Counter(network)
    try:
        with paddle.no_grad():
            network(paddle.zeros([1, frames, n_mels], dtype='float32'))
    finally:
        counter.remove()
    elements, layer = counter.peak
    peak = {'elements': elements, 'layer': layer,
            **{f'{dtype}_kB': _kb(elements * size) for dtype, size in BYTES_PER_VALUE.items()}}
    macs = counter.macs['conv'] + counter.macs['linear']
    return {'macs': macs, 'macs_conv': counter.macs['conv'], 'macs_linear': counter.macs['linear'],
            'peak_activation': peak}, sorted(counter.uncounted)


def complexity(name_or_module, seconds=DEFAULT_SECONDS, task=None, num_class=None, frontend=None):
    """The complexity report of a model, a JSON-ready dict.

    name_or_module: a registered model name (built with random weights: the figures do not depend
        on them), a Module, or any paddle Layer taking log-mel [batch, frames, n_mels] (then pass
        `frontend`, the FrontendConfig of its input).
    seconds: clip lengths to count MACs and activations for (default 1 s, the DCASE unit, and 10 s,
        the AudioSet clip).
    task, num_class: for a model name: the head to count. Default: the AudioSet tagging head where
        the family has one, else task='sound-cls' with 10 classes; the report's 'head' says which.

    Returns {'model', 'task', 'classes', 'head', 'params': {'total', 'backbone', 'head',
    'batchnorm_statistics'}, 'param_memory': {'fp32'|'fp16'|'int8': {'bytes', 'kB'}},
    'clips': [{'seconds', 'samples', 'frames', 'macs', 'macs_conv', 'macs_linear',
    'peak_activation': {'elements', 'layer', 'fp32_kB', 'fp16_kB', 'int8_kB'}}, ...],
    'macs_per_second', 'counting', 'published', 'uncounted_layers'}. See the module docstring
    for what is counted.
    """
    seconds = _check_seconds(seconds)
    module = _network(name_or_module, seconds, task, num_class)
    about = _describe(module, from_name=isinstance(name_or_module, str), frontend=frontend)
    frontend, spec, total, backbone = about['frontend'], about['spec'], about['total'], about['backbone']
    _check_min_seconds(about['model'], seconds, about['min_seconds'])
    clips, uncounted = _measure_clips(module, frontend, seconds)
    report = {
        **{key: about[key] for key in ('model', 'task', 'classes', 'head')},
        'input': f'log-mel [1, frames, {frontend.n_mels}] at {frontend.sample_rate} Hz, hop {frontend.hop_length}',
        'params': {'total': total, 'backbone': backbone, 'head': None if backbone is None else total - backbone,
                   'batchnorm_statistics': about['statistics']},
        'param_memory': {dtype: {'bytes': total * size, 'kB': _kb(total * size)}
                         for dtype, size in BYTES_PER_VALUE.items()},
        'clips': clips,
        'macs_per_second': macs_per_second(clips),
        'counting': COUNTING,
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


def _measure_clips(module, frontend, seconds):
    """([the figures of one clip of each length in `seconds`], the layer types left uncounted), in eval mode."""
    was_training = module.training
    module.eval()
    clips, uncounted = [], []
    try:
        for s in seconds:
            samples = int(round(s * frontend.sample_rate))
            frames = frontend.num_frames(samples)
            figures, uncounted = _measure_clip(module, frames, frontend.n_mels)
            clips.append({'seconds': s, 'samples': samples, 'frames': frames, **figures})
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


def check_budget(report, max_params=None, max_macs_per_second=None):
    """Raise ValueError when the model of `report` (from complexity()) is over a budget.

    max_params: most learnt parameters allowed (DCASE task 1: 128 kB of parameter memory, i.e.
        128,000 at int8 or 64,000 at fp16). max_macs_per_second: most MACs for 1 s of audio
        (DCASE task 1: 30 M, counted on a 1-s clip; without one in the report, the longest clip's
        MACs per second). The message names the model, each figure over its limit and the limit.
    """
    over = []
    if max_params is not None:
        params = report['params']['total']
        if params > max_params:
            memory = report['param_memory']
            over.append(f'{params:,} parameters > the limit of {int(max_params):,} (parameter memory '
                        f'{memory["fp16"]["kB"]:,.1f} kB at fp16, {memory["int8"]["kB"]:,.1f} kB at int8; '
                        f'the DCASE rule allows {DCASE_PARAM_MEMORY_KB} kB)')
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
    parser.add_argument('--json', action='store_true', help='print the reports as JSON')
    parser.add_argument('--budget-params', type=int, default=None, metavar='N',
                        help='exit with status 1 when a model has more than N parameters (DCASE: 128 kB, i.e. '
                             '128000 at int8)')
    parser.add_argument('--budget-macs', type=float, default=None, metavar='N',
                        help='exit with status 1 when a model needs more than N MACs per 1 s of audio '
                             '(DCASE: 30e6)')
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
                         f'{clip["seconds"]:g}', str(clip['frames']), _si(clip['macs']),
                         f'{clip["peak_activation"]["fp32_kB"]:,.1f}'))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    notes = sorted({r['head'] for r in reports if r['task'] == 'sound-cls'})
    return '\n'.join(lines + [f'sound-cls: {note}' for note in notes] + textwrap.wrap('Counting: ' + COUNTING, 100))


def run_complexity(args):
    """`paddle-soundcls complexity`: print the reports; exit status 1 when a model is over a budget."""
    reports = [complexity(name, args.seconds, args.task, args.num_class) for name in args.models]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        print(format_table(reports))
    status = 0
    for report in reports:
        try:
            check_budget(report, args.budget_params, args.budget_macs)
        except ValueError as exc:
            print(f'paddle-soundcls complexity: {exc}', file=sys.stderr)
            status = 1
    return status
