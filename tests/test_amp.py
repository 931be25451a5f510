"""Mixed precision and CPU threads in the Trainer: refusals where the device cannot run the asked
precision, dynamic loss scaling (exact where nothing overflows, skipped steps and a smaller scale
where something does, exact resume), float32 front-end features, and the thread count."""
import functools
import json

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from helpers import calm
from paddle_soundcls import Module, Trainer
from paddle_soundcls import device
from paddle_soundcls.datasets import AudioFolder
from paddle_soundcls.training import modes
from paddle_soundcls.training.loss_scale import DynamicLossScaler
from test_consistency import two_classes

LABELS = ['hiss', 'tone']


def small(seed=0):
    return calm(Module('panns_cnn6', label_map=LABELS, pretrained=False, seed=seed))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('amp')
    return AudioFolder(str(two_classes(root / 'train', [1.0, 1.5, 1.0], seed=1)), mode='train', duration=1.0)


def test_precisions_the_device_cannot_run_are_refused():
    model = small()
    optimizer = paddle.optimizer.Adam(parameters=model.parameters())
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        Trainer(model, optimizer, amp='int8')
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(ValueError, match="amp='fp16' needs a CUDA GPU"):
            Trainer(model, optimizer, amp='fp16')
        # Dygraph has no bfloat16 convolution on the CPU (so auto_cast computes float32): refused, not ignored.
        with pytest.raises(RuntimeError, match='bfloat16'):
            F.conv2d(paddle.ones([1, 1, 2, 2]).astype('bfloat16'), paddle.ones([1, 1, 1, 1]).astype('bfloat16'))
        assert not modes.bf16_autocast_works()
        with pytest.raises(ValueError, match="amp='bf16'"):
            Trainer(model, optimizer, amp='bf16')
    with pytest.raises(ValueError, match='num_threads must be a positive int'):
        Trainer(model, optimizer, num_threads=0)


def test_cpu_threads_default_to_the_cpus_shared_among_local_processes(monkeypatch):
    monkeypatch.setattr(device, 'cpu_count', lambda: 8)
    monkeypatch.delenv('PADDLE_LOCAL_SIZE', raising=False)
    assert device.cpu_threads() == 8
    monkeypatch.setenv('PADDLE_LOCAL_SIZE', '2')   # set by paddle.distributed.launch
    assert device.cpu_threads() == 4
    assert device.cpu_threads(3) == 3
    monkeypatch.setenv('PADDLE_LOCAL_SIZE', '16')
    assert device.cpu_threads() == 1


def test_an_explicit_thread_count_stays_until_another_is_given(monkeypatch):
    calls = []
    monkeypatch.setattr(paddle.base.core, 'set_num_threads', calls.append)
    monkeypatch.setattr(device, '_threads_set', None)
    monkeypatch.setattr(device, 'cpu_count', lambda: 4)
    monkeypatch.delenv('PADDLE_LOCAL_SIZE', raising=False)
    device.set_device(False)          # the first call takes the default
    device.set_device(False, 1)       # e.g. Trainer(num_threads=1)
    device.set_device(False)          # e.g. predict() later: keeps 1
    assert calls == [4, 1]
    with pytest.raises(ValueError, match='num_threads must be a positive int'):
        device.set_device(False, 0)


# ----- dynamic loss scaling -----

def linear_step(scaler=None, x=None, seed=0):
    """One Adam step of a small linear model; returns (weights after, stepped)."""
    paddle.seed(seed)
    net = paddle.nn.Linear(4, 3)
    optimizer = paddle.optimizer.Adam(learning_rate=0.1, parameters=net.parameters())
    x = paddle.to_tensor(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)) if x is None else x
    loss = F.cross_entropy(net(x), paddle.to_tensor(np.array([0, 2])))
    if scaler is None:
        loss.backward()
        optimizer.step()
        stepped = True
    else:
        scaler.scale_loss(loss).backward()
        stepped = scaler.step(optimizer, net.parameters())
    return net.weight.numpy(), stepped


def test_loss_scaling_changes_nothing_when_nothing_overflows():
    plain, _ = linear_step()
    scaler = DynamicLossScaler(scale=2.0 ** 12)
    scaled, stepped = linear_step(scaler)
    assert stepped
    np.testing.assert_array_equal(scaled, plain)   # power-of-two scales: exact
    assert scaler.scale == 2.0 ** 12 and scaler.skipped == 0


def test_an_overflowing_step_is_skipped_and_the_scale_halved():
    paddle.seed(0)
    untouched = paddle.nn.Linear(4, 3).weight.numpy()
    scaler = DynamicLossScaler(scale=2.0 ** 140)   # the scaled loss is inf in float32
    after, stepped = linear_step(scaler)
    assert not stepped and scaler.skipped == 1 and scaler.scale == 2.0 ** 139
    np.testing.assert_array_equal(after, untouched)
    inf_input = paddle.to_tensor(np.array([[np.inf, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    after, stepped = linear_step(DynamicLossScaler(scale=4.0), x=inf_input)
    assert not stepped
    np.testing.assert_array_equal(after, untouched)
    # Gradients that stay inf at every scale are a diverged run, not an overflow: stop and say so.
    with pytest.raises(FloatingPointError, match='diverged'):
        linear_step(DynamicLossScaler(scale=2.0 ** -24), x=inf_input)


def test_the_scale_grows_after_a_run_of_good_steps_and_must_be_a_power_of_two():
    scaler = DynamicLossScaler(scale=8.0, growth_interval=2)
    paddle.seed(0)
    net = paddle.nn.Linear(4, 3)
    optimizer = paddle.optimizer.SGD(learning_rate=0.01, parameters=net.parameters())
    for expected in (8.0, 16.0, 16.0, 32.0):
        scaler.scale_loss(net(paddle.ones([2, 4])).sum()).backward()
        assert scaler.step(optimizer, net.parameters())
        optimizer.clear_grad()
        assert scaler.scale == expected
    assert scaler.state_dict() == {'scale': 32.0, 'good_steps': 0, 'skipped': 0}
    with pytest.raises(ValueError, match='power of two'):
        DynamicLossScaler(scale=1000.0)


@pytest.fixture
def fp16_path_on_cpu(monkeypatch):
    """The Trainer's fp16 code path on a CPU: the device check lets it through, and auto_cast,
    which does nothing on a CPU, is left out; only the loss scaling then differs from float32."""
    monkeypatch.setattr(modes, 'check_amp', lambda amp, use_gpu: amp)
    monkeypatch.setattr(modes.Precision, 'autocast', lambda self: __import__('contextlib').nullcontext())

    def with_scale(scale):
        monkeypatch.setattr(modes, 'DynamicLossScaler', functools.partial(DynamicLossScaler, scale=scale))
    return with_scale


def run(data, ckpt, epochs, amp):
    model = small(seed=3)
    trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()),
                      use_vdl=False, checkpoint_dir=str(ckpt), seed=4, amp=amp)
    state = trainer.train(data, epochs=epochs, batch_size=2)
    return trainer, state, {k: v.numpy() for k, v in model.state_dict().items()}


def test_fp16_training_with_loss_scaling_equals_float32_and_resumes_exactly(data, tmp_path, fp16_path_on_cpu):
    _, fp32, fp32_weights = run(data, tmp_path / 'fp32', 2, None)
    fp16_path_on_cpu(2.0 ** 12)
    trainer, scaled, weights = run(data, tmp_path / 'a', 2, 'fp16')
    assert [h['train'] for h in scaled['history']] == [h['train'] for h in fp32['history']]
    for key, value in fp32_weights.items():
        np.testing.assert_array_equal(weights[key], value)
        assert weights[key].dtype == value.dtype                      # checkpoints stay float32
    saved = json.loads((tmp_path / 'a' / 'epoch_2' / 'trainer.json').read_text())
    assert saved['amp'] == 'fp16' and saved['loss_scaler']['scale'] == 2.0 ** 12
    # The front end runs outside the low-precision region: float32 features.
    waves = paddle.to_tensor(np.stack([data[i][0] for i in range(2)]))
    features, _, _ = trainer.step.inputs([waves, paddle.to_tensor(np.array([0, 1]))], np.random.default_rng(0))
    assert features.dtype == paddle.float32
    # Interrupted after one epoch and resumed: the same history and weights.
    run(data, tmp_path / 'b', 1, 'fp16')
    _, resumed, resumed_weights = run(data, tmp_path / 'b', 2, 'fp16')
    assert resumed['history'] == scaled['history']
    for key, value in weights.items():
        np.testing.assert_array_equal(resumed_weights[key], value)


def test_fp16_training_survives_an_overflowing_scale(data, tmp_path, fp16_path_on_cpu):
    fp16_path_on_cpu(2.0 ** 129)   # inf in float32: the gradients overflow until the scale has come down
    before = {k: v.numpy() for k, v in small(seed=3).state_dict().items()}
    trainer, state, weights = run(data, tmp_path / 'c', 3, 'fp16')
    assert trainer.scaler.skipped >= 2 and trainer.scaler.scale < 2.0 ** 129
    assert all(np.isfinite(h['train']['loss']) for h in state['history'])
    assert all(np.isfinite(v).all() for v in weights.values())
    assert any(not np.array_equal(before[k], weights[k]) for k in weights)   # it trained once the scale fit
    saved = json.loads((tmp_path / 'c' / 'epoch_3' / 'trainer.json').read_text())
    assert saved['loss_scaler'] == trainer.scaler.state_dict()
