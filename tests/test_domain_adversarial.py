"""Domain-adversarial training (Trainer(domain_adversarial_weight=...)): the step's gradients are
the task loss's plus the device classifier's, reversed and scaled by DANN's schedule into the
backbone; the run trains on device-labelled data, keeps the classifier out of its checkpoints,
and is refused where it cannot work."""
import math

import numpy as np
import paddle
import pytest

from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioDataset
from paddle_soundcls.models.domain import DeviceClassifier
from paddle_soundcls.training import AugmentConfig, losses, modes, steps
from paddle_soundcls.training.data import WithDevices
from test_consistency import two_classes

LABELS = ['hiss', 'tone']


def device_set(root, devices=('a', 'b', 'a', 'c', 'b', 'c')):
    """Two classes of 1-s clips, each clip named as recorded by one of `devices`."""
    two_classes(root, [1.0] * (len(devices) // 2), seed=3)
    items = [(str(root / label / f'{i:02d}.wav'), LABELS.index(label))
             for i in range(len(devices) // 2) for label in LABELS]
    data = AudioDataset(items, LABELS, mode='train', duration=1.0)
    data.devices, data.seen_devices = list(devices), tuple(sorted(set(devices), key=str))
    return data


def small(seed=0):
    return Module("cpmobile", label_map=LABELS, pretrained=False, seed=seed)


def test_the_step_reverses_the_device_gradient_into_the_backbone_only(tmp_path):
    """Backbone gradients = d task / d w - lam * d device / d w, the classifier's = d device / d w,
    with lam = weight * (2 / (1 + exp(-gamma p)) - 1) at the step's progress p: each computed here
    with paddle.grad on a copy of the network without the reversal."""
    paddle.seed(0)
    model = small()
    head = DeviceClassifier(model.backbone.emb_size, 3, hidden=8)
    net = steps.TrainingNet(model, head)
    net.train()
    objective = steps.Objective(losses.build_loss('ce'))
    step = steps.DomainStep(net, steps.Inputs(model, AugmentConfig()), objective, head, weight=0.7, gamma=10.0)
    step.set_steps(total_steps=8, steps_per_epoch=4)
    key = (0, 2, 1, 0)    # epoch 2, step 1: 4 of 8 steps done
    assert step.progress(key) == pytest.approx(0.5)
    lam = 0.7 * (2 / (1 + math.exp(-10 * 0.5)) - 1)

    waves = paddle.to_tensor(np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype('float32'))
    target, devices = paddle.to_tensor([0, 1, 1]), paddle.to_tensor([0, 2, 1])
    for layer in net.sublayers():   # BatchNorm in eval: both passes see the same statistics
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer.eval()
    _, loss, _ = step([waves, target, devices], key)
    loss.backward()
    backbone = [p for p in model.backbone.parameters() if not p.stop_gradient]
    got_backbone = [p.grad.numpy().copy() for p in backbone]
    got_head = [p.grad.numpy().copy() for p in head.parameters()]
    assert head.lam == pytest.approx(lam)

    feats = model.frontend(waves)
    embeddings = model.forward_features(feats)
    task = objective(model.forward_head(embeddings), target)
    device = paddle.nn.functional.cross_entropy(head.mlp(embeddings), devices.reshape([-1, 1]))
    task_grads = paddle.grad(task, backbone, retain_graph=True, allow_unused=True)
    device_grads = paddle.grad(device, backbone + list(head.parameters()), allow_unused=True)
    assert float(loss) == pytest.approx(float(task) + float(device), rel=1e-5)
    for got, g_task, g_device in zip(got_backbone, task_grads, device_grads[:len(backbone)]):
        expected = (0 if g_task is None else g_task.numpy()) - lam * (0 if g_device is None else g_device.numpy())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    for got, g_device in zip(got_head, device_grads[len(backbone):]):
        np.testing.assert_allclose(got, g_device.numpy(), rtol=1e-4, atol=1e-7)


def test_device_indices_follow_the_sorted_device_names(tmp_path):
    data = device_set(tmp_path / 'd', devices=('s1', 'a', 'b', 'a'))
    wrapped = WithDevices(data, data.devices)
    assert wrapped.names == ['a', 'b', 's1']
    assert [int(wrapped[i][-1]) for i in range(len(wrapped))] == [2, 0, 1, 0]


def test_a_run_trains_the_classifier_and_saves_the_model_alone(tmp_path):
    data = device_set(tmp_path / 'd')
    model = small()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    trainer = Trainer(model, paddle.optimizer.Adam(1e-3, parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), domain_adversarial_weight=0.5)
    state = trainer.train(data, epochs=2, batch_size=3, eval_dataset=data)
    head = trainer._net.device_head
    assert head.num_devices == 3 and head.lam > 0
    assert isinstance(trainer.step, steps.DomainStep) and trainer.step.total_steps == 4
    saved = paddle.load(str(tmp_path / 'ckpt' / 'best_model' / 'model.pdparams'))
    assert sorted(saved) == sorted(before)        # the device classifier is not part of the model
    assert any(not np.array_equal(saved[k], before[k]) for k in before)
    assert set(state['history'][-1]['eval']) >= {'macro_acc', 'seen_acc'}


def test_domain_adversarial_training_is_refused_without_devices_and_with_fp16(tmp_path):
    data = device_set(tmp_path / 'd')
    del data.devices
    model = small()
    trainer = Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), domain_adversarial_weight=0.5)
    [(why, fix)] = [(w, f) for m, o, w, f in modes.CONFLICTS if (m, o) == ('domain', 'no_devices')]
    with pytest.raises(ValueError, match=f'a training set without devices') as info:
        trainer.train(data, epochs=1)
    assert why in str(info.value) and str(info.value).endswith(fix)
    one = device_set(tmp_path / 'e', devices=('a',) * 4)
    with pytest.raises(ValueError, match=r"a training set of one device \(\['a'\]\)"):
        trainer.train(one, epochs=1)
    with pytest.raises(ValueError, match="amp='fp16'"):
        Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                checkpoint_dir=str(tmp_path / 'ckpt2'), domain_adversarial_weight=0.5, amp='fp16')
    with pytest.raises(ValueError, match='domain_adversarial_weight'):
        Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                checkpoint_dir=str(tmp_path / 'ckpt3'), domain_adversarial_weight=-1)
    assert not (tmp_path / 'ckpt').exists()


def test_device_names_must_be_names_and_a_data_parallel_run_keeps_its_devices(tmp_path):
    data = device_set(tmp_path / 'd')
    model = small()
    trainer = Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), domain_adversarial_weight=0.5)
    mixed = device_set(tmp_path / 'm', devices=('a', 'b', None, 'a', 'b', 'a'))
    with pytest.raises(ValueError, match=r"`devices` must be a list of device names \(str\)"):
        trainer.train(mixed, epochs=1)
    data.seen_devices = 'ab'
    with pytest.raises(ValueError, match=r"`seen_devices` must be a tuple of device names"):
        trainer.evaluate(data)
    data.seen_devices = ('a', 'b', 'c')
    trainer.train(data, epochs=1, batch_size=3)
    # Two processes cannot swap the classifier for one of another size: the model is already
    # wrapped for them (the refusal comes before any rewrapping).
    trainer.world_size = 2
    two = device_set(tmp_path / 't', devices=('a', 'b', 'a', 'b'))
    with pytest.raises(ValueError, match='trained a device classifier for 3 devices; the new training set has 2'):
        trainer.train(two, epochs=2, batch_size=2)
