"""Learning-rate schedules, stepped once per optimizer step.

Every schedule here computes its rate in closed form from the step count (`last_epoch`,
which Paddle's LRScheduler counts in calls to `step()`). The state that
`state_dict()` saves (`last_epoch`, `last_lr`) is therefore all that is needed to resume:
a restored scheduler continues with exactly the rates an uninterrupted one would give.

Step numbering: rate(s) is the rate used by optimizer step s (s = 0 for the first step).
Build the scheduler, pass it to the optimizer, and call `scheduler.step()` after each
`optimizer.step()`.
"""
import math

from paddle.optimizer.lr import LRScheduler

from .. import validate
from ..errors import ArgumentError

SCHEDULES = ('constant', 'warmup_cosine', 'step')


def _check_lr(learning_rate):
    return validate.positive_number('learning_rate', learning_rate)


def _check_count(name, value, minimum):
    return validate.integer(name, value, minimum)


class _ClosedForm(LRScheduler):
    """An LRScheduler whose rate is a pure function of the step count."""

    def rate(self, step):
        raise NotImplementedError

    def get_lr(self):
        return self.rate(max(self.last_epoch, 0))

    # Paddle calls this when step(epoch) is given explicitly; the rate is the same either way.
    def _get_closed_form_lr(self):
        return self.get_lr()


class ConstantLR(_ClosedForm):
    """The same rate at every step."""

    def __init__(self, learning_rate, last_epoch=-1):
        super().__init__(_check_lr(learning_rate), last_epoch)

    def rate(self, step):
        return self.base_lr


class WarmupCosine(_ClosedForm):
    """Linear warm-up, then cosine decay from `learning_rate` to `min_lr` at `total_steps`.

    rate(s) = learning_rate * (s + 1) / warmup_steps                        for s < warmup_steps
    rate(s) = min_lr + (learning_rate - min_lr) * (1 + cos(pi * q)) / 2      otherwise,
              q = min(1, (s - warmup_steps) / max(1, total_steps - warmup_steps))

    The ramp starts at learning_rate / warmup_steps rather than 0 so that no optimizer step
    is wasted at a zero rate; it reaches the full rate on the last warm-up step. Steps past
    `total_steps` stay at `min_lr`.
    """

    def __init__(self, learning_rate, total_steps, warmup_steps=0, min_lr=0.0, last_epoch=-1):
        learning_rate = _check_lr(learning_rate)
        self.total_steps = _check_count('total_steps', total_steps, 1)
        self.warmup_steps = _check_count('warmup_steps', warmup_steps, 0)
        if self.warmup_steps > self.total_steps:
            raise ArgumentError(f'warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})')
        if not 0.0 <= min_lr <= learning_rate:
            raise ArgumentError(f'min_lr must be in [0, learning_rate={learning_rate}], got {min_lr!r}')
        self.min_lr = float(min_lr)
        super().__init__(learning_rate, last_epoch)

    def rate(self, step):
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepDecayLR(_ClosedForm):
    """rate(s) = learning_rate * gamma ** (s // step_size)."""

    def __init__(self, learning_rate, step_size, gamma=0.1, last_epoch=-1):
        learning_rate = _check_lr(learning_rate)
        self.step_size = _check_count('step_size', step_size, 1)
        if not 0.0 < gamma <= 1.0:
            raise ArgumentError(f'gamma must be in (0, 1], got {gamma!r}')
        self.gamma = float(gamma)
        super().__init__(learning_rate, last_epoch)

    def rate(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)


def warmup_cosine(learning_rate, total_steps, warmup_steps=0, min_lr=0.0):
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.

    Args:
        learning_rate (float): peak rate, reached on the last warm-up step.
        total_steps (int): number of optimizer steps in the whole run (epochs * batches per epoch).
        warmup_steps (int): length of the linear ramp; 0 starts the cosine at once.
        min_lr (float): final rate.
    Returns:
        paddle.optimizer.lr.LRScheduler
    """
    return WarmupCosine(learning_rate, total_steps, warmup_steps, min_lr)


def step_decay(learning_rate, step_size, gamma=0.1):
    """Multiply the rate by `gamma` every `step_size` optimizer steps. Returns an LRScheduler."""
    return StepDecayLR(learning_rate, step_size, gamma)


def build_scheduler(name, learning_rate, total_steps, warmup_steps=0, step_size=None, gamma=0.1):
    """Scheduler by name: 'constant', 'warmup_cosine' or 'step'.

    Args:
        name (str): one of SCHEDULES.
        learning_rate (float): base (peak) rate.
        total_steps (int): optimizer steps in the run; used by 'warmup_cosine'.
        warmup_steps (int): used by 'warmup_cosine'.
        step_size (int): optimizer steps between decays; required by 'step'.
        gamma (float): decay factor for 'step'.
    Returns:
        paddle.optimizer.lr.LRScheduler
    """
    if name == 'constant':
        return ConstantLR(learning_rate)
    if name == 'warmup_cosine':
        return warmup_cosine(learning_rate, total_steps, warmup_steps)
    if name == 'step':
        if step_size is None:
            raise ArgumentError("the 'step' schedule needs step_size (optimizer steps between decays)")
        return step_decay(learning_rate, step_size, gamma)
    raise ArgumentError(f'unknown schedule {name!r}; known: {", ".join(SCHEDULES)}')


def steps_per_epoch(num_clips, batch_size, world_size=None):
    """Optimizer steps in one epoch of `num_clips` clips: each of `world_size` processes (default:
    those of this paddle.distributed run, 1 otherwise) reads batch_size clips per step.

    The Trainer steps a per-batch schedule this many times per epoch, so size schedules with it:
    total_steps = epochs * steps_per_epoch(len(train_set), batch_size).
    """
    num_clips = _check_count('num_clips', num_clips, 1)
    batch_size = _check_count('batch_size', batch_size, 1)
    if world_size is None:
        import paddle.distributed as dist
        world_size = dist.get_world_size()
    world_size = _check_count('world_size', world_size, 1)
    return math.ceil(num_clips / (batch_size * world_size))


def optimizer_schedule(optimizer, scheduler=None):
    """The LRScheduler that `optimizer` runs on (None for a fixed rate), which the Trainer steps
    once per batch and saves with the optimizer's state.

    scheduler: given, it becomes the optimizer's (Optimizer.set_lr_scheduler). Not given, the one
    the optimizer was built with (learning_rate=scheduler) is used: Paddle keeps it in
    `_learning_rate` and has no public getter, so it is read there, in this one place (as
    PaddleHub's Trainer does).
    """
    if scheduler is not None:
        if not isinstance(scheduler, LRScheduler):
            raise ArgumentError(f'lr_scheduler must be a paddle.optimizer.lr.LRScheduler, got '
                                f'{type(scheduler).__name__}')
        optimizer.set_lr_scheduler(scheduler)
        return scheduler
    found = getattr(optimizer, '_learning_rate', None)
    return found if isinstance(found, LRScheduler) else None
