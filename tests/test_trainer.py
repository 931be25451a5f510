"""Trainer: learning, resume, best_model, VisualDL and checkpoint contents on generated audio."""
import json
import os

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import calm, prime_batchnorm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.errors import CheckpointError
from paddle_soundcls.datasets import AudioFolder
from paddle_soundcls.training import AugmentConfig

SR = 32000


def make_folder(root, clips_per_class, seed):
    """Two separable classes: a low tone and high-passed noise bursts, with random level and timing."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    for i in range(clips_per_class):
        tone = 0.3 * rng.uniform(0.3, 1) * np.sin(2 * np.pi * rng.uniform(300, 500) * t)
        hiss = rng.standard_normal(SR) * rng.uniform(0.05, 0.2)
        hiss = np.diff(hiss, prepend=0.0)                      # tilt the noise to high frequencies
        floor = 0.01 * rng.standard_normal(SR)
        for name, wave in (('tone', tone), ('hiss', hiss)):
            os.makedirs(root / name, exist_ok=True)
            sf.write(root / name / f'{i:02d}.wav', (wave + floor).astype('float32'), SR)
    return root


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp('data')
    return (AudioFolder(make_folder(base / 'train', 8, seed=1), mode='train', duration=1.0),
            AudioFolder(make_folder(base / 'dev', 4, seed=2), mode='dev', duration=1.0))


def build(train_set, lr=1e-3):
    paddle.seed(123)
    model = calm(Module('panns_cnn6', label_map=['hiss', 'tone'], pretrained=False))
    prime_batchnorm(model, np.stack([train_set[i][0] for i in range(len(train_set))]))
    optimizer = paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters())
    return model, optimizer


def test_learns_a_separable_task_and_writes_its_files(data, tmp_path):
    train_set, dev_set = data
    model, optimizer = build(train_set)
    trainer = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'ckpt'), keep_last=None)
    before = trainer.evaluate(dev_set, batch_size=8)
    state = trainer.train(train_set, epochs=3, batch_size=8, eval_dataset=dev_set, log_interval=1)
    history = state['history']
    assert history[-1]['train']['loss'] < history[0]['train']['loss']
    assert history[-1]['eval']['loss'] < before['loss']
    assert state['best_metric'] == max(h['eval']['acc'] for h in history) >= 0.875
    ckpt = tmp_path / 'ckpt'
    for epoch in (1, 2, 3):
        for name in ('model.pdparams', 'model.pdopt', 'meta.json', 'trainer.json'):
            assert (ckpt / f'epoch_{epoch}' / name).is_file()
    best = ckpt / 'best_model'
    metrics = json.loads((best / 'metrics.json').read_text())
    assert metrics['epoch'] == state['best_epoch']
    assert (best / 'confusion_matrix.csv').is_file() and (best / 'confusion_matrix.png').is_file()
    # best_model holds the weights of the best epoch.
    best_params = paddle.load(str(best / 'model.pdparams'))
    epoch_params = paddle.load(str(ckpt / f'epoch_{state["best_epoch"]}' / 'model.pdparams'))
    for key in best_params:
        np.testing.assert_array_equal(best_params[key].numpy(), epoch_params[key].numpy())
    assert any(name.startswith('vdlrecords') for name in os.listdir(ckpt / 'visualization'))
    # The checkpoint alone rebuilds the classifier with its labels.
    restored = Module('panns_cnn6', load_checkpoint=str(best))
    assert restored.labels == ['hiss', 'tone']
    path = train_set.items[0][0]
    assert list(restored.predict([path])[0]) == list(restored.predict([path])[0])


def test_resume_matches_an_uninterrupted_run(data, tmp_path):
    train_set, dev_set = data
    model, optimizer = build(train_set)
    full = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'full'), use_vdl=False).train(
        train_set, epochs=2, batch_size=8, eval_dataset=dev_set)
    full_params = model.state_dict()

    model, optimizer = build(train_set)
    Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'cut'), use_vdl=False).train(
        train_set, epochs=1, batch_size=8, eval_dataset=dev_set)
    # A new process: fresh model and optimizer, same checkpoint_dir.
    model, optimizer = build(train_set)
    resumed = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'cut'), use_vdl=False).train(
        train_set, epochs=2, batch_size=8, eval_dataset=dev_set)
    assert [h['epoch'] for h in resumed['history']] == [1, 2]
    assert resumed['history'][1]['eval'] == pytest.approx(full['history'][1]['eval'], abs=1e-6)
    assert resumed['history'][1]['train'] == pytest.approx(full['history'][1]['train'], abs=1e-6)
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), full_params[key].numpy(), rtol=1e-5, atol=1e-6)


def test_augmentation_and_schedules_run(data, tmp_path):
    from paddle_soundcls.training.schedules import warmup_cosine
    train_set, dev_set = data
    paddle.seed(0)
    model = calm(Module('panns_cnn6', label_map=['hiss', 'tone'], pretrained=False))
    lr = warmup_cosine(1e-3, total_steps=4, warmup_steps=2)
    optimizer = paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters())
    augment = AugmentConfig(time_masks=1, time_mask_width=10, freq_masks=1, freq_mask_width=4, mixup_alpha=0.4,
                            gain_db=3.0, noise_snr_db=30.0)
    state = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'aug'), use_vdl=False, augment=augment,
                    loss='class_balanced', label_smoothing=0.1).train(train_set, epochs=2, batch_size=8)
    assert np.isfinite(state['history'][-1]['train']['loss'])
    assert lr.last_epoch == 4  # stepped once per batch


def test_wrong_rate_or_class_count_is_refused(tmp_path, data):
    train_set, _ = data
    model, optimizer = build(train_set)
    other_rate = AudioFolder(train_set.root, mode='train', duration=1.0, sample_rate=16000)
    with pytest.raises(ValueError, match='sample_rate=32000'):
        Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'a')).train(other_rate)
    model3 = Module('panns_cnn6', num_class=3, pretrained=False)
    opt3 = paddle.optimizer.Adam(parameters=model3.parameters())
    with pytest.raises(ValueError, match='label_map=dataset.labels'):
        Trainer(model3, opt3, checkpoint_dir=str(tmp_path / 'b')).train(train_set)


def test_checkpoint_dir_of_another_run_is_refused(data, tmp_path):
    train_set, _ = data
    model, optimizer = build(train_set)
    Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'run'), use_vdl=False).train(train_set, epochs=1,
                                                                                        batch_size=8)
    other = Module('panns_cnn10', label_map=train_set.labels, pretrained=False)
    with pytest.raises(CheckpointError, match='another run'):
        Trainer(other, paddle.optimizer.Adam(parameters=other.parameters()), checkpoint_dir=str(tmp_path / 'run'),
                use_vdl=False).train(train_set, epochs=2, batch_size=8)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    train_set, _ = data
    model, optimizer = build(train_set)
    ce = paddle.nn.CrossEntropyLoss()
    calls = []

    def loss(logits, target):  # goes NaN on the 3rd batch, i.e. epoch 2 step 1
        calls.append(1)
        value = ce(logits, target)
        return value * float('nan') if len(calls) == 3 else value

    trainer = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'nan'), use_vdl=False, loss=loss)
    trainer.train(train_set, epochs=1, batch_size=8)
    good = paddle.load(str(tmp_path / 'nan' / 'epoch_1' / 'model.pdparams'))
    with pytest.raises(FloatingPointError, match='epoch 2, step 1'):
        trainer.train(train_set, epochs=2, batch_size=8)
    assert not (tmp_path / 'nan' / 'epoch_2').exists()
    kept = paddle.load(str(tmp_path / 'nan' / 'epoch_1' / 'model.pdparams'))
    for key in good:
        np.testing.assert_array_equal(kept[key].numpy(), good[key].numpy())


def test_a_log_file_gets_plain_lines_not_progress_bar_frames(tmp_path, data):
    """Output that is not a terminal (a log file, CI) gets no carriage-return progress frames,
    and one line per epoch."""
    import subprocess
    import sys
    import textwrap
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train, dev = data
    code = textwrap.dedent(f'''
        import sys; sys.path.insert(0, {os.path.join(repo, 'tests')!r})
        import paddle
        from helpers import small_module
        from paddle_soundcls import Trainer
        from paddle_soundcls.datasets import AudioFolder
        train = AudioFolder({train.root!r}, mode='train', duration=1.0)
        dev = AudioFolder({dev.root!r}, mode='dev', duration=1.0)
        model = small_module(label_map=train.labels)
        opt = paddle.optimizer.SGD(learning_rate=0.01, parameters=model.parameters())
        Trainer(model, opt, checkpoint_dir={str(tmp_path / 'ckpt')!r}, use_vdl=False).train(
            train, epochs=2, batch_size=4, eval_dataset=dev)
    ''')
    with open(tmp_path / 'log.txt', 'w') as log:
        proc = subprocess.run([sys.executable, '-c', code], stdout=log, stderr=subprocess.STDOUT, timeout=300,
                              env=dict(os.environ, PYTHONPATH=repo))
    text = (tmp_path / 'log.txt').read_text()
    assert proc.returncode == 0, text[-3000:]
    assert '\r' not in text
    assert [line.split(' - ', 1)[1][:7] for line in text.splitlines() if ' - epoch ' in line and 'acc=' in line
            and 'step' not in line] == ['epoch 1', 'epoch 2']


def test_a_schedule_given_to_the_trainer_is_stepped_saved_and_resumed(data, tmp_path):
    """Trainer(..., lr_scheduler=...) steps the schedule once per batch (the optimizer runs on it),
    saves it with the optimizer's state and resumes it; Trainer(model, optimizer) with the schedule
    inside the optimizer does the same (test_augmentation_and_schedules_run)."""
    from paddle_soundcls.training.schedules import warmup_cosine
    train_set, _ = data

    def run(ckpt, epochs):
        model, optimizer = build(train_set, lr=0.5)   # a fixed rate, replaced by the schedule
        schedule = warmup_cosine(1e-3, total_steps=4, warmup_steps=2)
        trainer = Trainer(model, optimizer, checkpoint_dir=str(ckpt), use_vdl=False, lr_scheduler=schedule)
        trainer.train(train_set, epochs=epochs, batch_size=8)
        return schedule, model

    schedule, model = run(tmp_path / 'a', 2)
    assert schedule.last_epoch == 4
    run(tmp_path / 'b', 1)
    resumed, resumed_model = run(tmp_path / 'b', 2)
    assert resumed.last_epoch == 4 and resumed.get_lr() == schedule.get_lr()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(resumed_model.state_dict()[key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match='lr_scheduler must be a paddle.optimizer.lr.LRScheduler'):
        Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), lr_scheduler=0.1)
    # A run with a constant rate cannot be continued by one with a schedule: a clear refusal, not
    # Paddle's assertion about the missing scheduler state.
    constant, constant_optimizer = build(train_set)
    Trainer(constant, constant_optimizer, checkpoint_dir=str(tmp_path / 'c'), use_vdl=False).train(
        train_set, epochs=1, batch_size=8)
    with pytest.raises(CheckpointError, match='constant learning rate.*schedule.*new checkpoint_dir'):
        run(tmp_path / 'c', 2)


def test_unreadable_files_are_refused_naming_the_trainers_option(tmp_path):
    root = make_folder(tmp_path / 'data', 2, seed=4)
    (root / 'tone' / 'broken.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEjunk')
    train_set = AudioFolder(str(root), mode='train', duration=1.0)
    model, optimizer = build(AudioFolder(str(make_folder(tmp_path / 'ok', 1, seed=5)), mode='train', duration=1.0))
    trainer = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'ckpt'), use_vdl=False)
    with pytest.raises(ValueError, match=r'(?s)broken\.wav.*Trainer\(\.\.\., skip_bad_files=True\).*--skip-bad-files'):
        trainer.train(train_set, epochs=1, batch_size=4)
    with pytest.warns(UserWarning, match='leaving out 1 unusable'):
        Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'ckpt'), use_vdl=False,
                skip_bad_files=True).train(train_set, epochs=1, batch_size=4)
