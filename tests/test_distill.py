"""Knowledge distillation: the loss against its formula, the teacher's cached outputs (reuse,
recomputation, exports and ensembles, refusals), mixup of the teacher's targets, and a resumed
run with a teacher ending where an uninterrupted one does."""
import os

import numpy as np
import paddle
import pytest

from helpers import calm
from paddle_soundcls import Ensemble, Module, Trainer
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
    real = teacher_lib.Teacher.member_logits
    monkeypatch.setattr(teacher_lib.Teacher, 'member_logits',
                        lambda self, member, paths: calls.append(len(paths)) or real(self, member, paths))
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
    # An ensemble: the mean of the members' logits, each member's outputs cached on their own
    # (both are known already: nothing is computed), and weighted as the ensemble says.
    done = sum(calls)
    both = teacher_lib.teacher_logits(teacher_lib.Teacher([teacher, other]), data, root)
    second = teacher_lib.teacher_logits(teacher_lib.Teacher(other), data, root)
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-5)
    weighted = teacher_lib.teacher_logits(teacher_lib.Teacher(Ensemble([teacher, other], weights=[3, 1])), data, root)
    np.testing.assert_allclose(weighted, (3 * first + second) / 4, atol=1e-5)
    assert sum(calls) == done
    third = small(seed=7)
    teacher_lib.teacher_logits(teacher_lib.Teacher([teacher, third]), data, root)
    assert sum(calls) == done + len(data)   # only the new member


def test_the_teacher_cache_keys_on_pooling_and_on_how_audio_is_decoded(data, tmp_path, monkeypatch):
    """Two teachers with the same weights but other pooling give other outputs: each gets its own
    (those of its own predict); so does another resampler version."""
    from paddle_soundcls import audio
    embedding = small(seed=5)
    pooled = calm(Module('panns_cnn6', label_map=LABELS, pretrained=False, pooling='max'))
    pooled.set_state_dict(embedding.state_dict())
    root, paths = str(tmp_path / 'cache'), [path for path, _ in data.items]
    outputs = []
    for teacher in (embedding, pooled):
        got = teacher_lib.teacher_logits(teacher_lib.Teacher(teacher), data, root)
        own = np.log([[s[label] for label in LABELS] for s in teacher.predict(paths)])
        np.testing.assert_allclose(got, own, atol=1e-5)
        outputs.append(got)
    assert np.abs(outputs[0] - outputs[1]).max() > 0.01   # the two really differ
    calls = []
    real = teacher_lib.Teacher.member_logits
    monkeypatch.setattr(teacher_lib.Teacher, 'member_logits', lambda self, m, p: calls.append(len(p)) or real(self, m, p))
    teacher_lib.teacher_logits(teacher_lib.Teacher(pooled), data, root)
    assert calls == []                                    # cached
    monkeypatch.setattr(audio, 'RESAMPLER_VERSION', audio.RESAMPLER_VERSION + 1)
    teacher_lib.teacher_logits(teacher_lib.Teacher(pooled), data, root)
    assert sum(calls) == len(data)                        # decoded otherwise: computed again


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


def test_mixup_mixes_the_teachers_distributions_with_the_same_coefficients(data, tmp_path):
    """As EfficientAT's ex_audioset.py: the target of a mixed clip is lam * p_a + (1 - lam) * p_b of
    the teacher's distributions at T, not the distribution of the mixed logits (which, for a
    confident teacher, is near one clip's label whatever lam is)."""
    model = small()
    trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), augment=AugmentConfig(mixup_alpha=0.4), teacher=small(1),
                      kd_temperature=1.0, kd_lambda=0.5)
    trainer._prepare(data, 'train')
    inputs, distill = trainer.step.inputs, trainer.step.objective.distill
    waves = paddle.to_tensor(np.stack([data[i][0] for i in range(4)]))
    labels = [0, 1, 1, 0]
    sure = np.log(np.where(np.eye(2)[labels] > 0, 0.999, 0.001))   # a teacher 99.9 % sure of each label
    for seed in range(5):
        _, mixed_target, mixed_teacher = inputs([waves, paddle.to_tensor(np.array(labels)),
                                                 paddle.to_tensor(sure.astype('float32'))],
                                                np.random.default_rng(seed))
        # Mixup draws one lambda ~ Beta(alpha, alpha) per batch, then a permutation (augment.mixup):
        # the same draws blend the targets and the teacher's distributions.
        rng = np.random.default_rng(seed)
        lam, perm = rng.beta(0.4, 0.4), rng.permutation(4)
        one_hot, p = np.eye(2)[labels], softmax(sure)
        np.testing.assert_allclose(mixed_target.numpy(), lam * one_hot + (1 - lam) * one_hot[perm], atol=1e-6)
        np.testing.assert_allclose(mixed_teacher.numpy(), lam * p + (1 - lam) * p[perm], atol=1e-6)
        # The loss is the formula on that target: (1 - l) CE + l T^2 KL(p_mix || q).
        s = np.random.default_rng(seed).normal(size=(4, 2))
        got = float(distill(paddle.to_tensor(s, 'float32'), mixed_target, teacher_probs=mixed_teacher))
        q, p_mix = softmax(s), lam * p + (1 - lam) * p[perm]
        target = lam * one_hot + (1 - lam) * one_hot[perm]
        expected = 0.5 * -np.mean(np.sum(target * np.log(q), axis=1)) + 0.5 * np.mean(
            np.sum(p_mix * (np.log(p_mix) - np.log(q)), axis=1))
        assert got == pytest.approx(expected, rel=1e-5)
    # A multi-label teacher: its sigmoids at T are mixed.
    multi = losses.DistillationLoss(losses.build_loss('bce'), 0.5, 2.0, multi_label=True)
    t = np.array([[3.0, -1.0], [0.5, 2.0]], 'float32')
    np.testing.assert_allclose(multi.teacher_probs(paddle.to_tensor(t)).numpy(), 1 / (1 + np.exp(-t / 2)), atol=1e-6)


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


def test_distillation_loss_stays_finite_in_float16():
    """Under fp16 autocast the student's logits are float16; a confident teacher's smallest
    probability (1e-18 here) would be 0 in float16 and log(0) * 0 NaN: the soft loss is float32."""
    kd = losses.DistillationLoss(losses.build_loss('ce'), 0.5, 2.0)
    teacher = kd.teacher_probs(paddle.to_tensor([[40.0, 38.0, -40.0]]))
    student = paddle.to_tensor([[2.0, 1.0, 0.0]]).astype('float16')
    value = float(kd.soft_loss(student, teacher))
    p, q = softmax(np.array([20.0, 19.0, -20.0])), softmax(np.array([1.0, 0.5, 0.0]))
    assert value == pytest.approx(4.0 * float(np.sum(p * (np.log(p) - np.log(q)))), rel=1e-4)


def _distill_example():
    import importlib.util
    import sys
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples', 'esc50',
                        'distill.py')
    spec = importlib.util.spec_from_file_location('esc50_distill_example', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('argv, match', [
    (['--teacher-models', 'cpmobile', 'panns_cnn6', '--teacher-weights', '-1', '2'], r'--teacher-weights: -1 \(the '
                                                                                      r'weight of cpmobile\)'),
    (['--teacher-models', 'cpmobile', 'panns_cnn6', '--teacher-weights', '0', '0'], '--teacher-weights: .*positive'),
    (['--teacher-models', 'cpmobile', 'panns_cnn6', '--teacher-weights', '1'], 'one weight per --teacher-models'),
    (['--teacher-models', 'cpmobile', '--teacher-epochs', '0'], '--teacher-epochs must be 1 or more'),
    (['--teacher', 'ckpt_a', 'ckpt_b', '--teacher-weights', '1', '2'], 'save them as one ensemble'),
    (['--teacher-models', 'cpmobile', 'cpmobile'], 'cpmobile more than once'),
])
def test_distill_example_refuses_teacher_options_before_training_anything(argv, match, tmp_path):
    from paddle_soundcls.errors import ArgumentError
    # A data folder that does not exist: without the early check, loading the data would fail instead.
    example = _distill_example()
    with pytest.raises(ArgumentError, match=match):
        example.main(['--data-dir', str(tmp_path / 'no_such_data'), '--checkpoint-dir', str(tmp_path / 'ck'), *argv])
    assert not (tmp_path / 'ck').exists()
