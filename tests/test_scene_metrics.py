"""Scores as DCASE task 1 reports them: class-averaged accuracy, log loss, per-device and
seen/unseen accuracy; the Trainer's evaluation and best_model on data that names its devices."""
import json
import math

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import calm, prime_batchnorm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioFolder
from paddle_soundcls.errors import ArgumentError, DatasetError
from paddle_soundcls.training import metrics
from paddle_soundcls.training.logs import TrainingLog
from paddle_soundcls.training.trainer import record_epoch

# (true class, class probabilities, device) of eleven clips of three classes.
CLIPS = [
    (0, [0.7, 0.2, 0.1], 'a'),     # right
    (0, [0.2, 0.5, 0.3], 'b'),     # wrong
    (1, [0.1, 0.8, 0.1], 'a'),     # right
    (1, [0.3, 0.6, 0.1], 's1'),    # right
    (1, [0.6, 0.3, 0.1], 's4'),    # wrong
    (2, [0.2, 0.2, 0.6], 'b'),     # right
    (2, [0.5, 0.4, 0.1], 's4'),    # wrong
    (2, [0.0, 1.0, 0.0], 's1'),    # wrong, with probability 0 for the true class: clipped
    (0, [1.0, 0.0, 0.0], 'a'),     # right, with probability 1: clipped
    (0, [0.9, 0.05, 0.05], 's4'),  # right
    (0, [0.8, 0.1, 0.1], 's4'),    # right
]
SEEN = ('a', 'b', 's1')


def fixture(dtype=np.float64):
    labels = [c[0] for c in CLIPS]
    scores = np.array([c[1] for c in CLIPS], dtype=dtype)
    devices = [c[2] for c in CLIPS]
    return labels, scores, devices


def reference(labels, scores, devices, seen):
    """The figures with plain loops, from the definitions."""
    eps = float(np.finfo(scores.dtype).eps)
    num_classes = len(scores[0])
    right, loss = [], []
    for label, row in zip(labels, scores):
        best = 0
        for c in range(num_classes):
            if row[c] > row[best]:
                best = c
        right.append(1.0 if best == label else 0.0)
        loss.append(-math.log(min(max(float(row[label]), eps), 1 - eps)))

    def mean(values):
        return sum(values) / len(values)

    def class_mean(values, keep):
        per_class = []
        for c in range(num_classes):
            picked = [v for v, y, k in zip(values, labels, keep) if y == c and k]
            per_class.append(mean(picked) if picked else math.nan)
        return per_class, mean([v for v in per_class if not math.isnan(v)])

    every = [True] * len(labels)
    out = {'class_acc': class_mean(right, every)[0], 'macro_acc': class_mean(right, every)[1],
           'log_loss': mean(loss), 'class_log_loss': class_mean(loss, every)[0],
           'macro_log_loss': class_mean(loss, every)[1], 'device_acc': {}, 'device_macro_acc': {},
           'device_log_loss': {}, 'device_count': {}}
    for device in sorted(set(devices)):
        keep = [d == device for d in devices]
        out['device_count'][device] = sum(keep)
        out['device_acc'][device] = mean([r for r, k in zip(right, keep) if k])
        out['device_macro_acc'][device] = class_mean(right, keep)[1]
        out['device_log_loss'][device] = mean([v for v, k in zip(loss, keep) if k])
    out['seen_acc'] = mean([r for r, d in zip(right, devices) if d in seen])
    out['unseen_acc'] = mean([r for r, d in zip(right, devices) if d not in seen])
    return out


def test_scene_metrics_equal_the_definitions_on_a_small_fixture():
    labels, scores, devices = fixture()
    result = metrics.scene_metrics(labels, scores, devices, SEEN)
    expected = reference(labels, scores, devices, SEEN)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12), key
    # By hand: classes 0, 1, 2 have 4/5, 2/3, 1/3 right; 7 of 11 clips are right.
    assert result['class_acc'] == pytest.approx([4 / 5, 2 / 3, 1 / 3])
    assert result['macro_acc'] == pytest.approx((4 / 5 + 2 / 3 + 1 / 3) / 3)
    assert result['macro_acc'] != pytest.approx(7 / 11)
    # Device s4: 2 of 4 clips right, but of its classes only class 0 (2/2; classes 1 and 2: 0/1).
    assert result['device_acc'] == pytest.approx({'a': 1.0, 'b': 0.5, 's1': 0.5, 's4': 0.5})
    assert result['device_macro_acc'] == pytest.approx({'a': 1.0, 'b': 0.5, 's1': 0.5, 's4': 1 / 3})
    assert result['device_count'] == {'a': 3, 'b': 2, 's1': 2, 's4': 4}
    assert result['seen_acc'] == pytest.approx(5 / 7) and result['unseen_acc'] == pytest.approx(2 / 4)
    assert result['unseen_devices'] == ['s4']
    # The probability 0 of clip 7 is clipped to eps: -ln(eps) enters the mean.
    assert result['device_log_loss']['s1'] == pytest.approx((-math.log(0.6) - math.log(np.finfo(float).eps)) / 2)
    json.dumps(result)   # plain Python values


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_log_loss_is_sklearns(dtype):
    labels, scores, devices = fixture(dtype)
    result = metrics.scene_metrics(labels, scores, devices)
    try:
        from sklearn.metrics import log_loss
    except ImportError:   # the formula: mean of -ln(clip(p_true, eps, 1 - eps))
        eps = np.finfo(dtype).eps
        expected = np.mean([-math.log(min(max(float(scores[i][y]), eps), 1 - eps)) for i, y in enumerate(labels)])
    else:
        expected = log_loss(labels, scores, labels=[0, 1, 2])
    assert result['log_loss'] == pytest.approx(expected, rel=1e-6)


def test_unseen_and_seen_split_follows_seen_devices():
    labels, scores, devices = fixture()
    every_seen = metrics.scene_metrics(labels, scores, devices, ('a', 'b', 's1', 's4'))
    assert every_seen['seen_acc'] == pytest.approx(7 / 11)
    assert math.isnan(every_seen['unseen_acc']) and every_seen['unseen_devices'] == []
    # A seen device missing from the set changes nothing; only devices not named are unseen.
    other = metrics.scene_metrics(labels, scores, devices, ['a', 's1', 'c'])
    assert other['unseen_devices'] == ['b', 's4']
    assert other['seen_acc'] == pytest.approx(4 / 5) and other['unseen_acc'] == pytest.approx(3 / 6)
    without = metrics.scene_metrics(labels, scores, devices)
    assert 'seen_acc' not in without and 'unseen_acc' not in without
    assert 'device_acc' not in metrics.scene_metrics(labels, scores)


def test_a_device_with_one_class_only():
    labels = [0, 0, 1, 1, 1]
    scores = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.4, 0.6]]
    devices = ['c', 'c', 'd', 'd', 'd']   # c records class 0 only, d class 1 only
    result = metrics.scene_metrics(labels, scores, devices, ('c',))
    assert result['device_acc'] == pytest.approx({'c': 1.0, 'd': 2 / 3})
    assert result['device_macro_acc'] == pytest.approx({'c': 1.0, 'd': 2 / 3})
    assert result['class_acc'] == pytest.approx([1.0, 2 / 3])
    # A class without clips has no accuracy; the average runs over the classes with clips.
    absent = metrics.scene_metrics([0, 0], [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]], ['c', 'c'])
    assert absent['class_acc'][0] == 0.5 and math.isnan(absent['class_acc'][1]) and absent['macro_acc'] == 0.5


def test_errors_name_the_argument():
    labels, scores, devices = fixture()
    with pytest.raises(ArgumentError, match=r'devices must name the recording device of each of the 11 clips'):
        metrics.scene_metrics(labels, scores, devices[:-1])
    with pytest.raises(ArgumentError, match=r'labels must be \[N\] = \[11\]'):
        metrics.scene_metrics(labels[:-1], scores, devices)
    with pytest.raises(ArgumentError, match=r'a softmax, not logits\): finite and at least 0'):
        metrics.scene_metrics(labels, np.log(scores + 1e-3), devices)
    with pytest.raises(ArgumentError, match=r'rows sum to 1 \(a softmax, not logits\); row 0 sums to 5'):
        metrics.scene_metrics(labels, 5 * scores, devices)
    with pytest.raises(ArgumentError, match=r'labels must be in \[0, 3\)'):
        metrics.scene_metrics([3] + labels[1:], scores, devices)
    with pytest.raises(ArgumentError, match='seen_devices must be a list or tuple'):
        metrics.scene_metrics(labels, scores, devices, 'abc')
    with pytest.raises(ArgumentError, match="result has no 'device_count'"):
        metrics.scene_table(metrics.scene_metrics(labels, scores))


def test_table_lists_devices_groups_and_classes():
    labels, scores, devices = fixture()
    result = metrics.scene_metrics(labels, scores, devices, SEEN)
    text = metrics.scene_table(result, ['airport', 'bus', 'tram'])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip() and line[0] != '-'}
    assert rows['s4'] == ['*', '4', '50.00', '33.33', f'{result["device_log_loss"]["s4"]:.3f}']
    assert rows['a'] == ['3', '100.00', '100.00', f'{result["device_log_loss"]["a"]:.3f}']
    assert rows['seen'][:2] == ['7', '71.43'] and rows['unseen'][:2] == ['4', '50.00']
    seen_loss = sum(result['device_log_loss'][d] * result['device_count'][d] for d in SEEN) / 7
    assert rows['seen'][3] == f'{seen_loss:.3f}'
    assert rows['all'] == ['11', '63.64', '60.00', f'{result["log_loss"]:.3f}']
    assert rows['airport'] == ['80.00'] and rows['tram'] == ['33.33']
    assert text.splitlines()[-1].split() == ['macro', 'average', '60.00']


def test_default_and_fitting_compare_metrics():
    class Plain:
        multi_label = False

    class Scenes(Plain):
        devices = ['a', 'b']

    class ScenesWithSplit(Scenes):
        seen_devices = ('a',)

    assert metrics.default_metric(Plain()) == 'acc'
    assert metrics.default_metric(Scenes()) == 'macro_acc'
    metrics.check_metric_fits('macro_acc', Scenes(), 'eval')
    metrics.check_metric_fits('unseen_acc', ScenesWithSplit(), 'eval')
    with pytest.raises(ArgumentError, match=r"compare_metrics='macro_acc' is measured on a dev set that names "
                                            r"`devices`"):
        metrics.check_metric_fits('macro_acc', Plain(), 'eval')
    with pytest.raises(ArgumentError, match='`seen_devices`'):
        metrics.check_metric_fits('seen_acc', Scenes(), 'eval')


def test_best_epoch_follows_macro_accuracy_and_the_smallest_log_loss():
    state = {'epoch': 0, 'best_metric': None, 'best_epoch': None, 'history': []}
    # Epoch 1 has the better clip accuracy, epoch 2 the better class-averaged accuracy and log loss.
    results = [{'loss': 1.0, 'metrics': {'acc': 0.8, 'macro_acc': 0.5, 'log_loss': 0.9}},
               {'loss': 1.1, 'metrics': {'acc': 0.7, 'macro_acc': 0.6, 'log_loss': 0.7}},
               {'loss': 0.9, 'metrics': {'acc': 0.75, 'macro_acc': 0.55, 'log_loss': 0.8}}]
    for name, best in (('macro_acc', 2), ('log_loss', 2), ('acc', 1), ('loss', 3)):
        run = state
        for epoch, result in enumerate(results, start=1):
            run, _ = record_epoch(run, epoch, {'loss': 1.0}, result, name)
        assert run['best_epoch'] == best, name


SR = 32000


def make_folder(root, clips_per_class, seed):
    """Two separable classes: a low tone and high-passed noise, as in test_trainer."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR // 2) / SR
    for i in range(clips_per_class):
        tone = 0.3 * rng.uniform(0.3, 1) * np.sin(2 * np.pi * rng.uniform(300, 500) * t)
        hiss = np.diff(rng.standard_normal(t.size) * rng.uniform(0.05, 0.2), prepend=0.0)
        for name, wave in (('tone', tone), ('hiss', hiss)):
            (root / name).mkdir(parents=True, exist_ok=True)
            sf.write(root / name / f'{i:02d}.wav', wave.astype('float32'), SR)
    return root


class Recorder(TrainingLog):
    def __init__(self):
        self.tags = {}

    def scalar(self, tag, value, step):
        self.tags[tag] = value


def scene_folder(root, devices, seen_devices=None):
    """An AudioFolder that names its clips' recording devices, as a TAU22 split does."""
    data = AudioFolder(root, mode='dev', duration=0.5)
    data.devices = devices
    if seen_devices is not None:
        data.seen_devices = seen_devices
    return data


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp('scenes')
    return make_folder(base / 'train', 3, seed=1), make_folder(base / 'dev', 3, seed=2)


def build(train_set):
    paddle.seed(7)
    model = calm(Module('panns_cnn6', label_map=['hiss', 'tone'], pretrained=False))
    prime_batchnorm(model, np.stack([train_set[i][0] for i in range(len(train_set))]))
    # A small step: scores stay far from 0 and 1, so the log loss compares without clipping.
    return model, paddle.optimizer.Adam(learning_rate=1e-5, parameters=model.parameters())


def test_trainer_reports_scene_scores_and_picks_best_model_by_macro_accuracy(folders, tmp_path):
    train_set = scene_folder(folders[0], ['a', 'b', 's1'] * 2, ('a', 'b', 's1'))
    dev_set = scene_folder(folders[1], ['a', 'b', 's4'] * 2, ('a', 'b', 's1'))
    model, optimizer = build(train_set)
    trainer = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'ckpt'))
    trainer.log = log = Recorder()
    state = trainer.train(train_set, epochs=2, batch_size=6, eval_dataset=dev_set)
    assert trainer.compare_metrics == state['compare_metrics'] == 'macro_acc'
    history = state['history']
    assert {'acc', 'macro_acc', 'log_loss', 'macro_log_loss', 'seen_acc', 'unseen_acc'} <= set(history[-1]['eval'])
    values = [h['eval']['macro_acc'] for h in history]
    assert state['best_metric'] == max(values) and state['best_epoch'] == 1 + values.index(max(values))
    assert {'eval/macro_acc', 'eval/log_loss', 'eval/seen_acc', 'eval/device_acc/s4'} <= set(log.tags)
    saved = json.loads((tmp_path / 'ckpt' / 'best_model' / 'metrics.json').read_text())
    assert saved['epoch'] == state['best_epoch'] and saved['macro_acc'] == state['best_metric']
    assert set(saved['device_acc']) == {'a', 'b', 's4'}

    # The figures are those of the clips' scores as predict gives them, in item order, with the
    # dataset's devices.
    result = trainer.evaluate(dev_set, batch_size=4)['metrics']
    predictions = model.predict([path for path, _ in dev_set.items])
    scores = np.array([[scores[label] for label in model.labels] for scores in predictions])
    targets = [dev_set.target(i) for i in range(len(dev_set))]
    expected = metrics.scene_metrics(targets, scores, dev_set.devices, dev_set.seen_devices)
    assert result['device_count'] == {'a': 2, 'b': 2, 's4': 2} and result['unseen_devices'] == ['s4']
    for key in ('macro_acc', 'log_loss', 'seen_acc', 'unseen_acc'):
        assert result[key] == pytest.approx(expected[key], abs=1e-4), key
    assert result['device_acc'] == pytest.approx(expected['device_acc'], abs=1e-6)
    assert result['device_log_loss'] == pytest.approx(expected['device_log_loss'], abs=1e-4)
    assert 's4 *' in metrics.scene_table(result, model.labels)


def test_trainer_keeps_an_explicit_choice_and_checks_the_devices(folders, tmp_path):
    train_set = scene_folder(folders[0], ['a', 'b', 's1'] * 2, ('a', 'b', 's1'))
    model, optimizer = build(train_set)
    trainer = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'ckpt'), use_vdl=False, compare_metrics='acc')
    state = trainer.train(train_set, epochs=1, batch_size=6,
                          eval_dataset=scene_folder(folders[1], ['a', 'b', 's4'] * 2, ('a',)))
    assert trainer.compare_metrics == state['compare_metrics'] == 'acc'
    assert state['best_metric'] == state['history'][0]['eval']['acc']
    with pytest.raises(DatasetError, match=r'names 5 recording devices \(its `devices`\) for 6 clips'):
        trainer.evaluate(scene_folder(folders[1], ['a'] * 5))   # one clip's device missing
    # A device-free dev set has no macro_acc to compare; seen/unseen need seen_devices.
    for name, dev_set, needs in (('macro_acc', AudioFolder(folders[1], mode='dev', duration=0.5), '`devices`'),
                                 ('unseen_acc', scene_folder(folders[1], ['a'] * 6), '`seen_devices`')):
        other = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / name), use_vdl=False, compare_metrics=name)
        with pytest.raises(ArgumentError, match=needs):
            other.train(train_set, epochs=1, batch_size=6, eval_dataset=dev_set)


def test_a_frozen_backbone_evaluation_scores_the_devices_too(folders, tmp_path):
    dev_set = scene_folder(folders[1], ['a', 'b', 's4'] * 2, ('a', 'b'))
    model, optimizer = build(dev_set)
    frozen = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'ckpt'), use_vdl=False, freeze_backbone=True,
                     embedding_cache=str(tmp_path / 'embeddings'))
    result = frozen.evaluate(dev_set, batch_size=4)['metrics']
    whole = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'whole'), use_vdl=False).evaluate(dev_set)
    assert result['device_count'] == {'a': 2, 'b': 2, 's4': 2}
    assert result['device_log_loss'] == pytest.approx(whole['metrics']['device_log_loss'], abs=1e-4)
    assert result['macro_acc'] == whole['metrics']['macro_acc']
