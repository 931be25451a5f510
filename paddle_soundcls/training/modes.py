"""The training modes a run combines, the one table of those that do not go together, the
precision a run computes in, and the step it takes.

A run's modes and traits come from the Trainer's settings, its model and its training data
(active_modes). A run whose modes include both sides of a row of CONFLICTS is refused before
any work, with one message built from the row.
"""
import contextlib

import paddle

from ..errors import ArgumentError
from . import steps
from .loss_scale import DynamicLossScaler

# (mode, other, why, what to do): `mode` does not go with `other`. The refusal reads
#     '<mode> <why>, so it does not combine with <other>: <what to do>'
# with each side named as active_modes names it (the setting that turned it on). The first row
# that applies is the one reported, so the rows between two modes come before those about a
# setting one of them needs: the user hears of the real conflict, not of a fix that leads to it.
CONFLICTS = (
    ('supcon', 'frozen', 'contrasts two augmented views of each clip: it needs the whole network training',
     'train with freeze_backbone=False'),
    ('strong', 'frozen', 'trains frame by frame', 'train the whole network (freeze_backbone=False)'),
    ('strong', 'supcon', 'trains frame by frame', 'drop supcon_weight'),
    ('strong', 'teacher', 'trains frame by frame', 'drop the teacher'),
    ('strong', 'mixup', 'trains frame by frame', 'turn mixup off (mixup_alpha=0)'),
    ('supcon', 'data_parallel', 'runs in one process', 'drop it for data-parallel training'),
    ('supcon', 'multi_label', 'contrasts clips by their class: it needs single-label data',
     'drop supcon_weight for multi-label data'),
    ('frozen', 'tagging', 'trains a classification head (dropout + fc) on cached embeddings',
     "build the Module with task='sound-cls' (the AudioSet tagging layer is part of the backbone)"),
    ('frozen', 'decision_pooling', 'trains the head on cached clip embeddings, not frame by frame',
     "build the Module with pooling='embedding', or train the whole network"),
    ('frozen', 'augment', 'trains on embeddings computed once per clip, before any augmentation could apply',
     'turn it off (augment=None) or train the whole network with freeze_backbone=False'),
    ('supcon', 'decision_pooling', 'contrasts clip embeddings', "build the Module with pooling='embedding'"),
    ('supcon', 'no_augment', 'contrasts two augmented views of each clip: it needs augmentation',
     'pass augment=AugmentConfig(...)'),
    ('domain', 'frozen', "reverses the device classifier's gradient into the backbone: it needs the whole network "
     'training', 'train with freeze_backbone=False'),
    ('domain', 'supcon', 'adds its own loss on the clip embeddings', 'drop supcon_weight'),
    ('domain', 'mixup', 'classifies the recording device of each clip, and a mixed clip has two',
     'turn mixup off (mixup_alpha=0; Freq-MixStyle mixes the devices\' frequency statistics instead)'),
    # (Event times need decision-level pooling, so this row also refuses them.)
    ('domain', 'decision_pooling', 'classifies devices from the clip embeddings', "build the Module with "
     "pooling='embedding'"),
    ('domain', 'no_devices', 'tells recording devices apart', 'train on a dataset whose clips name their device '
     '(a `devices` list, one name per clip: datasets.TAU22)'),
    ('domain', 'one_device', 'tells recording devices apart', 'train on clips of two devices or more'),
    ('strong', 'embedding_pooling', "trains the frame scores and needs decision-level pooling (pooling='max' or "
     "'linear_softmax'), whose clip scores are the pooled frame scores",
     "build the Module with pooling='max' or 'linear_softmax'"),
)


def active_modes(model, augment, frozen=False, teacher=False, supcon=False, world_size=1, data=None, domain=False):
    """{mode: how the refusal names it} of the modes and traits of a run; `data` (the training
    set) adds those it brings."""
    modes = {}
    if domain:
        modes['domain'] = 'domain-adversarial training (domain_adversarial_weight > 0)'
    if frozen:
        modes['frozen'] = 'freeze_backbone=True'
    if teacher:
        modes['teacher'] = 'distillation from a teacher'
    if supcon:
        modes['supcon'] = 'supcon_weight > 0'
    if augment.enabled:
        modes['augment'] = f'augmentation (on: {", ".join(augment.changed())})'
    else:
        modes['no_augment'] = 'training without augmentation'
    if augment.mixup_alpha > 0:
        modes['mixup'] = f'mixup (mixup_alpha={augment.mixup_alpha:g})'
    if world_size > 1:
        modes['data_parallel'] = f'data-parallel training ({world_size} processes)'
    if model.task != 'sound-cls':
        modes['tagging'] = f'task={model.task!r}'
    pooling = getattr(model, 'pooling', 'embedding')
    modes['embedding_pooling' if pooling == 'embedding' else 'decision_pooling'] = f'pooling={pooling!r}'
    if data is not None and getattr(data, 'strong', False):
        modes['strong'] = 'training on event times (strong labels)'
    if data is not None and getattr(data, 'multi_label', False):
        modes['multi_label'] = 'multi-label data'
    if data is not None:
        devices = getattr(data, 'devices', None)
        if devices is None:
            modes['no_devices'] = 'a training set without devices'
        elif len(set(devices)) < 2:
            modes['one_device'] = f'a training set of one device ({sorted(set(devices))})'
    return modes


def check_modes(modes):
    """Refuse the first pair of `modes` (from active_modes) that CONFLICTS lists."""
    for mode, other, why, fix in CONFLICTS:
        if mode in modes and other in modes:
            raise ArgumentError(f'{modes[mode]} {why}, so it does not combine with {modes[other]}: {fix}')


def build_step(net, module, augment, loss, distill=None, frozen=False, strong=False, supcon=None, supcon_weight=0.0,
               autocast=contextlib.nullcontext, domain=None):
    """The step of a run's modes (check_modes has refused those that do not go together).
    domain: for domain-adversarial training, (device_head, weight, gamma) of steps.DomainStep."""
    inputs = steps.Inputs(module, augment, distill, frozen)
    if strong:
        return steps.StrongStep(net, inputs, loss, module, autocast)
    objective = steps.Objective(loss, distill)
    if domain is not None:
        return steps.DomainStep(net, inputs, objective, *domain, autocast=autocast)
    if supcon is not None:
        return steps.SupConStep(net, inputs, objective, supcon, supcon_weight, autocast)
    return steps.ClipStep(net, inputs, objective, autocast)


# ------------------------------------------------------------------ precision
AMP_CHOICES = (None, 'bf16', 'fp16')


class Precision:
    """What a step computes in and how its gradients are applied: float32 (amp=None), or
    paddle.amp.auto_cast level O1 in bfloat16 or float16 (convolutions and matrix products in
    the low precision; the front end, BatchNorm, the loss and the weights stay float32), fp16
    with dynamic loss scaling (loss_scale.DynamicLossScaler, made by start())."""

    def __init__(self, amp=None):
        self.amp = amp
        self.scaler = None

    def start(self, scaler_state=None):
        """A new loss scaler for fp16, in the state a resumed run saved (state_dict())."""
        self.scaler = DynamicLossScaler() if self.amp == 'fp16' else None
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(dtype='bfloat16' if self.amp == 'bf16' else 'float16', level='O1')

    def step(self, loss, optimizer, parameters):
        """backward() and the optimizer step; with fp16, of the scaled loss, and a step with
        inf/NaN gradients is skipped (the scaler halves the scale)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale_loss(loss).backward()
            self.scaler.step(optimizer, parameters)


def check_amp(amp, use_gpu):
    """amp as given, after checking that the device can run it."""
    if amp not in AMP_CHOICES:
        raise ArgumentError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp == 'fp16' and not (use_gpu and paddle.is_compiled_with_cuda()):
        raise ArgumentError("amp='fp16' needs a CUDA GPU (use_gpu=True with paddlepaddle-gpu): CPUs have no fast "
                            "float16 training. On a CPU use amp='bf16' where supported, or None")
    if amp == 'bf16' and not paddle.amp.is_bfloat16_supported():
        raise ArgumentError(f"amp='bf16' is not supported on this {'GPU' if use_gpu else 'CPU'} "
                            f"(paddle.amp.is_bfloat16_supported() is False); use amp=None"
                            f"{' or fp16' if use_gpu else ''}")
    if amp == 'bf16' and not bf16_autocast_works():
        raise ArgumentError("amp='bf16' would change nothing here: PaddlePaddle's dygraph has no bfloat16 "
                            "convolution on the CPU, so paddle.amp.auto_cast leaves the network in float32 "
                            "(float32's results at float32's speed). Use amp=None on the CPU; bf16 is for GPUs "
                            "that support it")
    return amp


def bf16_autocast_works():
    """Whether paddle.amp.auto_cast(bfloat16) really runs a convolution in bfloat16 on the current
    device (CPU builds of Paddle 3.3 accept the context and compute in float32)."""
    conv = paddle.nn.Conv2D(1, 1, 1)
    with paddle.amp.auto_cast(dtype='bfloat16', level='O1'):
        out = conv(paddle.ones([1, 1, 2, 2]))
    return out.dtype == paddle.bfloat16
