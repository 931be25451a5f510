"""Dynamic loss scaling for float16 training.

float16 gradients below about 6e-8 become zero. Multiplying the loss by a large scale S keeps
them representable, and the gradients are divided by S again before the optimizer step. When
any gradient overflows (inf or NaN) the step is skipped and S halved; after `growth_interval`
good steps in a row S doubles. Scales are powers of two, so scaling and unscaling are exact
in floating point: where nothing overflows, the updates equal those of unscaled training.

Paddle's GradScaler does the same on GPUs only (it switches itself off on a CPU); this one
works on any device, so its behaviour is tested on every machine.
"""
import math

import paddle
from ..errors import ArgumentError

INITIAL_SCALE = 2.0 ** 15
GROWTH_INTERVAL = 1000
# Below this the gradients are not overflowing float16: the loss itself has diverged.
MIN_SCALE = 2.0 ** -24


class DynamicLossScaler:
    """scale_loss(loss) before backward(); step(optimizer, parameters) instead of optimizer.step().

    state_dict() / load_state_dict() carry the scale and the count of good steps, so a resumed
    run scales exactly as the uninterrupted one.
    """

    def __init__(self, scale=INITIAL_SCALE, growth_interval=GROWTH_INTERVAL):
        if not (scale > 0 and math.log2(scale).is_integer()):
            raise ArgumentError(f'the loss scale must be a positive power of two, got {scale!r}')
        self.scale = float(scale)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0    # steps since the last overflow or growth
        self.skipped = 0       # steps skipped for overflow, over the scaler's life

    def scale_loss(self, loss):
        return loss * self.scale

    @paddle.no_grad()
    def step(self, optimizer, parameters):
        """Unscale the gradients of `parameters` and step the optimizer, or skip the step when
        any gradient is inf or NaN. Returns whether the optimizer stepped."""
        grads = [p.grad for p in parameters if p.grad is not None]
        # One check over every gradient, read back once.
        finite = bool(paddle.stack([paddle.isfinite(g).all() for g in grads]).all()) if grads else True
        if not finite:
            if self.scale / 2 < MIN_SCALE:
                raise FloatingPointError(f'the gradients stayed inf/NaN down to a loss scale of {self.scale:g}: '
                                         f'the training diverged (lower the learning rate, or check the data)')
            self.scale /= 2
            self.good_steps = 0
            self.skipped += 1
            return False
        for g in grads:
            g.scale_(1.0 / self.scale)
        optimizer.step()
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= 2
            self.good_steps = 0
        return True

    def state_dict(self):
        return {'scale': self.scale, 'good_steps': self.good_steps, 'skipped': self.skipped}

    def load_state_dict(self, state):
        self.scale = float(state['scale'])
        self.good_steps = int(state.get('good_steps', 0))
        self.skipped = int(state.get('skipped', 0))
