"""Learning-rate schedules against their formulas, and exact resume from state_dict."""
import math

import numpy as np
import paddle
import pytest

from paddle_soundcls.training.schedules import build_scheduler, step_decay, warmup_cosine


def rates(scheduler, steps):
    """The rate used by each of the next `steps` optimizer steps."""
    out = []
    for _ in range(steps):
        out.append(scheduler())
        scheduler.step()
    return out


def expected_warmup_cosine(step, lr, total, warmup, min_lr):
    if step < warmup:
        return lr * (step + 1) / warmup
    q = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * q))


def test_warmup_is_a_linear_ramp():
    got = rates(warmup_cosine(0.01, total_steps=100, warmup_steps=5), 5)
    np.testing.assert_allclose(got, [0.002, 0.004, 0.006, 0.008, 0.010], rtol=1e-12)


def test_warmup_cosine_matches_formula():
    lr, total, warmup, min_lr = 3e-4, 50, 10, 1e-5
    got = rates(warmup_cosine(lr, total, warmup, min_lr), total + 5)
    for step in [0, 4, 9, 10, 11, 20, 30, 35, 49, 50, 54]:
        assert got[step] == pytest.approx(expected_warmup_cosine(step, lr, total, warmup, min_lr), rel=1e-12)
    assert got[10] == pytest.approx(lr)                       # cosine starts at the peak
    assert got[30] == pytest.approx((lr + min_lr) / 2)        # half way down at mid-decay
    assert got[50] == pytest.approx(min_lr) and got[54] == pytest.approx(min_lr)


def test_cosine_without_warmup():
    got = rates(warmup_cosine(1.0, total_steps=8), 9)
    np.testing.assert_allclose(got, [0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(9)], atol=1e-12)


def test_step_decay_matches_formula():
    got = rates(step_decay(0.1, step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(got, [0.1 * 0.5 ** (s // 3) for s in range(10)], rtol=1e-12)


@pytest.mark.parametrize('name', ['constant', 'warmup_cosine', 'step'])
def test_state_dict_round_trip_continues_identically(name):
    def make():
        return build_scheduler(name, 0.05, total_steps=40, warmup_steps=6, step_size=7, gamma=0.3)

    uninterrupted = rates(make(), 40)
    first = make()
    rates(first, 17)
    state = first.state_dict()
    resumed = make()
    resumed.set_state_dict(state)
    np.testing.assert_allclose(rates(resumed, 23), uninterrupted[17:], rtol=1e-12)


def test_resume_through_the_optimizer():
    # The Trainer saves optimizer.state_dict(), which carries the scheduler's state.
    def make():
        layer = paddle.nn.Linear(2, 1)
        scheduler = warmup_cosine(0.1, total_steps=20, warmup_steps=4)
        return scheduler, paddle.optimizer.SGD(learning_rate=scheduler, parameters=layer.parameters())

    scheduler, optimizer = make()
    for _ in range(9):
        scheduler.step()
    state = optimizer.state_dict()
    scheduler2, optimizer2 = make()
    optimizer2.set_state_dict(state)
    assert optimizer2.get_lr() == pytest.approx(expected_warmup_cosine(9, 0.1, 20, 4, 0.0))
    scheduler2.step()
    assert optimizer2.get_lr() == pytest.approx(expected_warmup_cosine(10, 0.1, 20, 4, 0.0))


def test_build_scheduler_constant_and_errors():
    assert rates(build_scheduler('constant', 0.02, total_steps=10), 4) == [0.02] * 4
    assert isinstance(build_scheduler('constant', 0.02, 10), paddle.optimizer.lr.LRScheduler)
    with pytest.raises(ValueError, match='constant, warmup_cosine, step'):
        build_scheduler('linear', 0.1, 10)
    with pytest.raises(ValueError, match='step_size'):
        build_scheduler('step', 0.1, 10)
    with pytest.raises(ValueError, match='warmup_steps'):
        warmup_cosine(0.1, total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match='min_lr'):
        warmup_cosine(0.1, total_steps=5, min_lr=0.2)
    with pytest.raises(ValueError, match='learning_rate'):
        warmup_cosine(-1.0, total_steps=5)
