"""Knowledge distillation: the loss against its formula, the teacher's cached outputs (reuse,
recomputation, exports and ensembles, refusals), mixup of the teacher's targets, and a resumed
run with a teacher ending where an uninterrupted one does."""
import os

import numpy as np
import paddle
import pytest

from helpers import calm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioFolder
from paddle_soundcls.export import export_static
from paddle_soundcls.training import AugmentConfig, losses
from paddle_soundcls.training import teacher as teacher_lib
from test_consistency import two_classes

LABELS = ['hiss', 'tone']


def small(seed=0, labels=LABELS, name='panns_cnn6'):
    return calm(Module(name, label_map=list(labels), pretrained=False, seed=seed))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('distill')
    return AudioFolder(str(two_classes(root / 'train', [1.0, 1.5, 1.0], seed=1)), mode='train', duration=1.0)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_single_label_loss_is_the_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    y = np.array([0, 2, 1, 1])
    T, lam = 2.5, 0.3
    kd = losses.DistillationLoss(losses.build_loss('ce'), lam, T)
    got = float(kd(paddle.to_tensor(s, 'float32'), paddle.to_tensor(y), paddle.to_tensor(t, 'float32')))
    ce = -np.mean(np.log(softmax(s))[np.arange(4), y])
    p, q = softmax(t / T), softmax(s / T)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    assert got == pytest.approx((1 - lam) * ce + lam * T * T * kl, rel=1e-5)


def test_multi_label_loss_is_the_formula():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y = (rng.random((3, 4)) > 0.5).astype(np.float32)
    T, lam = 1.5, 0.6
    kd = losses.DistillationLoss(losses.build_loss('bce'), lam, T, multi_label=True)
    got = float(kd(paddle.to_tensor(s, 'float32'), paddle.to_tensor(y), paddle.to_tensor(t, 'float32')))
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731

    def bce(logits, target):
        p = sig(logits)
        return -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    assert got == pytest.approx((1 - lam) * bce(s, y) + lam * T * T * bce(s / T, sig(t / T)), rel=1e-5)
    with pytest.raises(ValueError, match='kd_lambda'):
        losses.DistillationLoss(None, 1.5)
    with pytest.raises(ValueError, match='kd_temperature'):
        Trainer(small(), paddle.optimizer.Adam(parameters=small().parameters()), teacher=small(), kd_temperature=0)


def test_teacher_outputs_are_cached_and_recomputed_only_when_they_must(data, tmp_path, monkeypatch):
    calls = []
    real = teacher_lib.Teacher.logits
    monkeypatch.setattr(teacher_lib.Teacher, 'logits', lambda self, paths: calls.append(len(paths)) or real(self, paths))
    teacher = small(seed=5)
    root = str(tmp_path / 'cache')
    first = teacher_lib.teacher_logits(teacher_lib.Teacher(teacher), data, root)
    assert sum(calls) == len(data) == 6
    again = teacher_lib.teacher_logits(teacher_lib.Teacher(teacher), data, root)
    assert sum(calls) == 6
    np.testing.assert_array_equal(first, again)
    # The logits are those of predict: log of its softmax scores (the same softmax at T = 1).
    scores = teacher.predict([path for path, _ in data.items])
    expected = np.log([[s[label] for label in LABELS] for s in scores])
    np.testing.assert_allclose(first, expected, atol=1e-5)
    # Other weights: everything again. An export of the same teacher gives the same outputs.
    other = small(seed=6)
    teacher_lib.teacher_logits(teacher_lib.Teacher(other), data, root)
    assert sum(calls) == 12
    export_static(teacher, tmp_path / 'export', opset=13)
    exported = teacher_lib.teacher_logits(teacher_lib.Teacher(str(tmp_path / 'export')), data, root)
    np.testing.assert_allclose(exported, first, atol=1e-4)
    # An ensemble: the mean of the members' logits.
    both = teacher_lib.teacher_logits(teacher_lib.Teacher([teacher, other]), data, root)
    np.testing.assert_allclose(both, (first + teacher_lib.teacher_logits(teacher_lib.Teacher(other), data, root)) / 2,
                               atol=1e-5)


def test_a_teacher_of_other_labels_is_refused(data, tmp_path):
    model = small()
    trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), teacher=small(labels=['tone', 'hiss']),
                      teacher_cache=str(tmp_path / 't'))
    with pytest.raises(ValueError, match=r"(?s)teacher: \['tone', 'hiss'\].*data: +\['hiss', 'tone'\]"):
        trainer.train(data, epochs=1, batch_size=4)
    with pytest.raises(ValueError, match='share their labels'):
        teacher_lib.Teacher([small(), small(labels=['a', 'b'])])
    with pytest.raises(ValueError, match='export directory'):
        teacher_lib.Teacher(str(tmp_path / 'nowhere'))


def test_mixup_mixes_the_teachers_outputs_with_the_same_coefficients(data, tmp_path):
    model = small()
    trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), augment=AugmentConfig(mixup_alpha=0.4), teacher=small(1))
    waves = paddle.to_tensor(np.stack([data[i][0] for i in range(4)]))
    target = paddle.to_tensor(np.array([0, 1, 1, 0]))
    teacher = paddle.to_tensor(np.array([[1.0, -1.0], [2.0, 3.0], [-2.0, 0.5], [0.0, 4.0]], 'float32'))
    _, mixed_target, mixed_teacher = trainer._features(waves, target, False, np.random.default_rng(3), teacher)
    mixed_target, mixed_teacher, t = mixed_target.numpy(), mixed_teacher.numpy(), teacher.numpy()
    # Mixup draws one lambda ~ Beta(alpha, alpha) per batch, then a permutation (augment.mixup):
    # the same draws must blend the targets and the teacher's outputs.
    rng = np.random.default_rng(3)
    lam, perm = rng.beta(0.4, 0.4), rng.permutation(4)
    one_hot = np.eye(2)[[0, 1, 1, 0]]
    np.testing.assert_allclose(mixed_target, lam * one_hot + (1 - lam) * one_hot[perm], atol=1e-6)
    np.testing.assert_allclose(mixed_teacher, lam * t + (1 - lam) * t[perm], atol=1e-6)


def test_resume_with_a_teacher_matches_an_uninterrupted_run(data, tmp_path):
    teacher = small(seed=9)

    def run(ckpt, epochs):
        model = small(seed=3)
        trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()),
                          use_vdl=False, checkpoint_dir=str(ckpt), seed=4, teacher=teacher, kd_lambda=0.7,
                          teacher_cache=str(tmp_path / 'teacher'))
        state = trainer.train(data, epochs=epochs, batch_size=4)
        return state, {k: v.numpy() for k, v in model.state_dict().items()}
    straight, weights = run(tmp_path / 'a', 2)
    run(tmp_path / 'b', 1)
    resumed, resumed_weights = run(tmp_path / 'b', 2)
    assert resumed['history'] == straight['history']
    for key, value in weights.items():
        np.testing.assert_array_equal(value, resumed_weights[key])
    # The teacher changes training: without it the same run ends elsewhere.
    model = small(seed=3)
    Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()), use_vdl=False,
            checkpoint_dir=str(tmp_path / 'c'), seed=4).train(data, epochs=2, batch_size=4)
    assert not np.allclose(model.fc.weight.numpy(), weights['fc.weight'])
    assert len(os.listdir(tmp_path / 'teacher')) == 1  # one teacher, its outputs computed once


def test_the_recipe_augmentations_and_supcon_train_and_resume_exactly(data, tmp_path):
    import soundfile as sf
    irs = tmp_path / 'irs'
    irs.mkdir()
    for k in range(2):
        ir = np.zeros(600, 'float32')
        ir[0], ir[100 * (k + 1)] = 1.0, 0.6
        sf.write(irs / f'device{k}.wav', ir, 32000)
    augment = AugmentConfig(freq_mixstyle_p=0.8, freq_mixstyle_alpha=0.4, impulse_responses=str(irs),
                            impulse_response_p=0.5, time_masks=1, time_mask_width=5)

    def run(ckpt, epochs):
        model = small(seed=3)
        trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()),
                          use_vdl=False, checkpoint_dir=str(ckpt), seed=4, augment=augment, supcon_weight=0.2)
        state = trainer.train(data, epochs=epochs, batch_size=6)
        return state, model.fc.weight.numpy()
    straight, weights = run(tmp_path / 'a', 2)
    assert all(np.isfinite(h['train']['loss']) for h in straight['history'])
    run(tmp_path / 'b', 1)
    resumed, resumed_weights = run(tmp_path / 'b', 2)
    assert resumed['history'] == straight['history']
    np.testing.assert_array_equal(weights, resumed_weights)
    with pytest.raises(ValueError, match='needs augmentation'):
        model = small()
        Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), supcon_weight=0.5)


def test_a_model_over_its_complexity_budget_is_refused_before_training():
    model = Module('cpmobile', num_class=10, pretrained=False, seed=0)
    optimizer = paddle.optimizer.Adam(parameters=model.parameters())
    with pytest.raises(ValueError, match=r'cpmobile.*61,138 parameters > the limit of 50,000.*128 kB'):
        Trainer(model, optimizer, max_params=50_000)
    with pytest.raises(ValueError, match=r'cpmobile.*MACs per second.*> the limit of 20 M'):
        Trainer(model, optimizer, max_macs_per_second=20e6)
    Trainer(model, optimizer, max_params=64_000, max_macs_per_second=30e6)  # the DCASE 2024 task 1 limits


def test_the_example_refuses_a_model_over_budget(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, 'examples', 'esc50', 'train.py'), '--demo', '--model',
                           'panns_cnn6', '--max-params', '64000', '--max-macs', '30e6',
                           '--checkpoint-dir', str(tmp_path / 'ckpt')],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=repo, PADDLE_SOUNDCLS_HOME=str(tmp_path / 'home')))
    assert proc.returncode == 2 and 'panns_cnn6 is over budget' in proc.stderr and '64,000' in proc.stderr
    assert not (tmp_path / 'ckpt').exists()   # refused before the first step
