"""What the Trainer measures is what predict, the exports, the runtime and the command line return:
multi-label scoring, label names, clips of any length, mode switches, class weights, schedules,
seeds, and the smaller cases (keep_last, integer PCM, the tagger's dropout, compare_metrics)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import calm, prime_batchnorm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioFolder, CSVDataset
from paddle_soundcls.deploy import Predictor
from paddle_soundcls.export import export_static
from paddle_soundcls.training.losses import class_balanced_weights
from paddle_soundcls.training.schedules import steps_per_epoch
from signals import noise, tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000


def write(path, wave, sr=SR):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wave, sr)
    return path


def two_classes(root, seconds, seed):
    """'hiss' (noise) and 'tone' clips of the given lengths; returns the root."""
    rng = np.random.default_rng(seed)
    for i, length in enumerate(seconds):
        write(str(root / 'tone' / f'{i:02d}.wav'), tone(rng.uniform(300, 900), length) + noise(length, amp=0.01, seed=i))
        write(str(root / 'hiss' / f'{i:02d}.wav'), noise(length, amp=rng.uniform(0.05, 0.3), seed=100 + i))
    return root


def small(labels=('hiss', 'tone'), **kwargs):
    return calm(Module('panns_cnn6', label_map=list(labels), pretrained=False, seed=0, **kwargs))


# ----- 1. multi-label models score with sigmoids everywhere -----

@pytest.fixture(scope='module')
def multilabel(tmp_path_factory):
    root = tmp_path_factory.mktemp('multi')
    rows = []
    for i in range(4):
        rows.append({'path': os.path.basename(write(str(root / f'{i}.wav'), noise(1.0, seed=i))),
                     'label': 'dog;rain;car'})
    with open(root / 'labels.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, ['path', 'label'])
        writer.writeheader()
        writer.writerows(rows)
    data = CSVDataset(str(root / 'labels.csv'), mode='dev', duration=1.0, label_separator=';')
    model = calm(Module('panns_cnn6', label_map=data.labels, multi_label=True, pretrained=False, seed=0))
    # Every clip gets logit +8 for every label: all three tags, sure of each.
    model.set_state_dict({'fc.weight': np.zeros([512, 3], 'float32'), 'fc.bias': np.full([3], 8.0, 'float32')})
    return root, data, model


def test_multilabel_scores_are_sigmoids_in_training_predict_export_and_runtime(multilabel, tmp_path):
    root, data, model = multilabel
    trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'))
    result = trainer.evaluate(data, batch_size=2)
    assert result['metrics']['f1_micro'] == 1.0 and result['metrics']['mAP'] == 1.0
    sure = 1 / (1 + np.exp(-8.0))
    path = os.path.join(root, '0.wav')
    [scores] = model.predict([path])
    assert set(scores) == {'car', 'dog', 'rain'}
    np.testing.assert_allclose(list(scores.values()), [sure] * 3, rtol=1e-5)
    assert list(model.predict([path], threshold=0.5)[0]) == list(scores)           # every tag applies
    model.save(str(tmp_path / 'saved'))
    assert json.loads((tmp_path / 'saved' / 'meta.json').read_text())['multi_label'] is True
    restored = Module('panns_cnn6', load_checkpoint=str(tmp_path / 'saved'))
    assert restored.multi_label
    np.testing.assert_allclose(list(restored.predict([path])[0].values()), [sure] * 3, rtol=1e-5)
    export_static(restored, tmp_path / 'export', opset=13)
    meta = json.loads((tmp_path / 'export' / 'export.json').read_text())
    assert meta['multi_label'] is True and meta['output']['activation'] == 'sigmoid'
    runtime = Predictor(tmp_path / 'export')
    np.testing.assert_allclose(list(runtime.predict([path])[0].values()), [sure] * 3, rtol=1e-4)
    assert runtime.predict([path], threshold=0.9999)[0] == {}  # none reaches it: an empty result


def test_multilabel_data_needs_a_multilabel_model(multilabel, tmp_path):
    _, data, _ = multilabel
    single = calm(Module('panns_cnn6', label_map=data.labels, pretrained=False))
    trainer = Trainer(single, paddle.optimizer.Adam(parameters=single.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'))
    with pytest.raises(ValueError, match='multi_label=True'):
        trainer.evaluate(data)


# ----- 2. label names and order are checked -----

def test_swapped_label_names_are_refused(tmp_path):
    data = AudioFolder(str(two_classes(tmp_path / 'data', [1.0, 1.0], seed=0)), mode='dev', duration=1.0)
    assert data.labels == ['hiss', 'tone']
    model = small(labels=('tone', 'hiss'))
    trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'))
    with pytest.raises(ValueError, match=r"(?s)dataset: \['hiss', 'tone'\].*model: +\['tone', 'hiss'\].*label_map"):
        trainer.train(data, epochs=1)


# ----- 3. one rule for clips of any length -----

@pytest.fixture(scope='module')
def variable_length(tmp_path_factory):
    """A model trained on 2-s clips and a dev set of clips from 1 to 10 s, with its export."""
    root = tmp_path_factory.mktemp('lengths')
    train = AudioFolder(str(two_classes(root / 'train', [2.0] * 4, seed=1)), mode='train', duration=2.0)
    dev = AudioFolder(str(two_classes(root / 'dev', [1.0, 1.5, 2.0, 3.3, 6.0, 10.0], seed=2)), mode='dev',
                      duration=2.0)
    model = small()
    prime_batchnorm(model, np.stack([train[i][0] for i in range(len(train))]))
    trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()),
                      use_vdl=False, checkpoint_dir=str(root / 'ckpt'))
    trainer.train(train, epochs=1, batch_size=4)
    assert model.clip_seconds == 2.0
    model.save(str(root / 'model'))
    export_static(model, root / 'export', opset=13)
    return root, trainer, model, dev


def accuracy(results, dev):
    truth = [dev.labels[target] for _, target in dev.items]
    return float(np.mean([max(r, key=r.get) == t for r, t in zip(results, truth)]))


def test_evaluate_predict_runtime_and_cli_agree_on_clips_of_any_length(variable_length):
    root, trainer, model, dev = variable_length
    paths = [path for path, _ in dev.items]
    evaluated = trainer.evaluate(dev, batch_size=3)['metrics']['acc']
    predicted = model.predict(paths, engine='dygraph')
    fast = model.predict(paths, engine='onnxruntime')
    runtime = Predictor(root / 'export').predict(paths)
    proc = subprocess.run([sys.executable, '-m', 'paddle_soundcls.cli', 'predict', str(root / 'export')] + paths,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = [json.loads(line)['scores'] for line in proc.stdout.splitlines()]
    for results in (predicted, fast, runtime, cli):
        assert accuracy(results, dev) == evaluated
        for a, b in zip(predicted, results):
            np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-4)
    # The 10-s clip is scored as the mean of its five 2-s windows, the 1-s one padded to 2 s.
    ten = [p for p in paths if sf.info(p).duration == 10.0][0]
    wave = sf.read(ten, dtype='float32')[0]
    windows = model.predict([wave], SR, window=2.0, engine='dygraph')[0]['timeline']
    mean = {k: np.mean([w['scores'][k] for w in windows]) for k in model.labels}
    whole = model.predict([ten], engine='dygraph')[0]
    np.testing.assert_allclose([whole[k] for k in mean], [mean[k] for k in mean], atol=1e-6)


def test_eval_loss_does_not_depend_on_batch_size(variable_length):
    _, trainer, _, dev = variable_length
    losses = [trainer.evaluate(dev, batch_size=b)['loss'] for b in (1, 4, 16)]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)


# ----- 4. frozen backbone, then full fine-tuning, in one checkpoint directory -----

def test_linear_probe_then_full_fine_tuning_continues(tmp_path):
    data = AudioFolder(str(two_classes(tmp_path / 'data', [1.0] * 3, seed=3)), mode='train', duration=1.0)
    ckpt = str(tmp_path / 'ckpt')
    model = small()
    probe = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                    checkpoint_dir=ckpt, freeze_backbone=True, embedding_cache=str(tmp_path / 'emb'))
    probe.train(data, epochs=1, batch_size=4)
    assert json.loads(open(os.path.join(ckpt, 'epoch_1', 'trainer.json')).read())['freeze_backbone'] is True
    model = small()
    full = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False, checkpoint_dir=ckpt)
    state = full.train(data, epochs=2, batch_size=4)
    assert state['epoch'] == 2 and state['freeze_backbone'] is False
    assert np.isfinite(state['history'][-1]['train']['loss'])


# ----- 5. class-balanced weights come from the training set -----

def test_class_balanced_weights_come_from_the_training_set(tmp_path):
    train = AudioFolder(str(two_classes(tmp_path / 'train', [1.0] * 3, seed=4)), mode='train', duration=1.0)
    os.remove(tmp_path / 'train' / 'hiss' / '00.wav')   # train: 2 hiss, 3 tone
    train = AudioFolder(str(tmp_path / 'train'), mode='train', duration=1.0)
    dev = AudioFolder(str(two_classes(tmp_path / 'dev', [1.0] * 3, seed=5)), mode='dev', duration=1.0)
    os.remove(tmp_path / 'dev' / 'tone' / '00.wav')     # dev: 3 hiss, 2 tone
    dev = AudioFolder(str(tmp_path / 'dev'), mode='dev', duration=1.0)
    model = small()
    trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), loss='class_balanced')
    trainer.evaluate(dev)
    trainer.train(train, epochs=1, batch_size=4)
    np.testing.assert_allclose(trainer.loss_fn.class_weights.numpy(), class_balanced_weights([2, 3]), rtol=1e-6)


# ----- 6. schedules are sized for the number of processes -----

def example_train():
    sys.path.insert(0, os.path.join(REPO, 'examples', 'esc50'))
    try:
        import train as example
    finally:
        sys.path.pop(0)
    return example


def test_example_schedule_counts_the_processes(monkeypatch):
    example = example_train()
    monkeypatch.setattr(paddle.distributed, 'get_world_size', lambda: 2)
    assert steps_per_epoch(100, 8) == 7 and steps_per_epoch(100, 8, world_size=1) == 13
    args = example.parse_args(['--scheduler', 'warmup_cosine', '--epochs', '3', '--batch-size', '8',
                               '--warmup-steps', '2',
                               '--learning-rate', '0.01'])
    model = small()
    optimizer = example.build_optimizer(args, model, 100)
    schedule = optimizer._learning_rate
    for _ in range(3 * 7 - 1):   # the steps a 2-process Trainer takes in 3 epochs
        schedule.step()
    assert schedule.get_lr() == pytest.approx(schedule.rate(3 * 7 - 1))
    assert schedule.total_steps == 21



def test_a_short_run_of_the_examples_fits_or_names_the_warm_up(capsys):
    """--epochs 1 with the demo's default warm-up (10 steps) in a run of 8 steps: the warm-up is
    shortened to the run, with a note; an explicit --warmup-steps longer than the run is refused
    naming the flag."""
    example = example_train()
    args = example.parse_args(['--scheduler', 'warmup_cosine', '--epochs', '1', '--batch-size', '8',
                               '--learning-rate', '0.01'])
    schedule = example.build_optimizer(args, small(), 64, default_warmup=10)._learning_rate
    assert schedule.total_steps == 8 and schedule.warmup_steps == 8
    assert 'default warm-up of 10 steps is longer than this run' in capsys.readouterr().out
    args = example.parse_args(['--scheduler', 'warmup_cosine', '--epochs', '1', '--batch-size', '8',
                               '--learning-rate', '0.01', '--warmup-steps', '10'])
    with pytest.raises(ValueError, match=r'--warmup-steps 10 is longer than this run \(1 epoch of 8 steps = 8 '
                                         r'steps\): pass --warmup-steps 8'):
        example.build_optimizer(args, small(), 64, default_warmup=10)


def test_the_examples_print_no_third_party_noise_and_use_no_cli_helpers(tmp_path):
    """Paddle's import warns 'No ccache found'; the example scripts hide it as the CLI does, with
    the helpers of paddle_soundcls.scripts (not cli.py's)."""
    for name in ('train.py', 'distill.py', 'predict.py'):
        with open(os.path.join(REPO, 'examples', 'esc50', name), encoding='utf-8') as f:
            assert 'paddle_soundcls.cli' not in f.read(), name
    small().save(str(tmp_path / 'ckpt'))
    sf.write(tmp_path / 'clip.wav', noise(1.0, seed=3, amp=0.1), 32000)
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'examples', 'esc50', 'predict.py'), '--checkpoint',
                           str(tmp_path / 'ckpt'), str(tmp_path / 'clip.wav')], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])['file'] == str(tmp_path / 'clip.wav')
    assert 'ccache' not in proc.stderr

# ----- 7. the same command gives the same run -----

def test_identical_runs_give_identical_weights(tmp_path):
    data = AudioFolder(str(two_classes(tmp_path / 'data', [1.0] * 3, seed=6)), mode='train', duration=1.0)
    results = []
    for run in ('a', 'b'):
        paddle.seed(1000 + ord(run))  # whatever the global state, the Module's seed decides
        model = Module('panns_cnn6', label_map=data.labels, pretrained=False, seed=7)
        trainer = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                          checkpoint_dir=str(tmp_path / run), seed=3)
        state = trainer.train(data, epochs=2, batch_size=4)
        results.append((state['history'], {k: v.numpy() for k, v in model.state_dict().items()}))
    assert results[0][0] == results[1][0]
    for key, value in results[0][1].items():
        np.testing.assert_array_equal(value, results[1][1][key])


# ----- smaller cases -----

def test_keep_last_must_keep_one(tmp_path):
    model = small()
    with pytest.raises(ValueError, match='keep_last'):
        Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), keep_last=0,
                checkpoint_dir=str(tmp_path / 'ckpt'))


def test_compare_metrics_is_checked_before_training_and_on_resume(tmp_path):
    model = small()
    with pytest.raises(ValueError, match='compare_metrics must be one of'):
        Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), compare_metrics='accuracy',
                checkpoint_dir=str(tmp_path / 'x'))
    data = AudioFolder(str(two_classes(tmp_path / 'data', [1.0] * 2, seed=8)), mode='train', duration=1.0)
    ckpt = str(tmp_path / 'ckpt')
    Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False, checkpoint_dir=ckpt,
            compare_metrics='acc').train(data, epochs=1, batch_size=4, eval_dataset=data)
    model = small()
    again = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False, checkpoint_dir=ckpt,
                    compare_metrics='macro_f1')
    with pytest.raises(ValueError, match="by 'acc'"):
        again.train(data, epochs=2, batch_size=4, eval_dataset=data)
    multi = Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                    checkpoint_dir=str(tmp_path / 'y'), compare_metrics='mAP')
    with pytest.raises(ValueError, match='not measured on single-label data'):
        multi.train(data, epochs=1, batch_size=4)


def test_integer_pcm_is_centred():
    model = small()
    pcm8 = np.clip(np.round(tone(440, 1.0) * 127 + 128), 0, 255).astype(np.uint8)
    pcm16 = np.round(tone(440, 1.0) * 32767).astype(np.int16)
    as_float = (pcm8.astype(np.float64) - 128) / 128
    a = model.predict([pcm8], SR)[0]
    b = model.predict([as_float.astype(np.float32)], SR)[0]
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-6)
    c = model.predict([pcm16], SR)[0]
    d = model.predict([(pcm16 / 32768).astype(np.float32)], SR)[0]
    np.testing.assert_allclose([c[k] for k in c], [d[k] for k in c], atol=1e-6)


def test_tagging_head_reads_the_embedding_without_dropout():
    tagger = calm(Module('panns_cnn6', task='tagging', pretrained=False, seed=0))
    tagger.train()
    embedding = paddle.to_tensor(np.random.default_rng(0).random((2, 512)).astype('float32'))
    first, second = tagger.forward_head(embedding).numpy(), tagger.forward_head(embedding).numpy()
    np.testing.assert_array_equal(first, second)  # no dropout between the embedding and fc_audioset
    expected = embedding.numpy() @ tagger.backbone.fc_audioset.weight.numpy() + tagger.backbone.fc_audioset.bias.numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
