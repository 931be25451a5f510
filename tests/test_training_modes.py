"""The training modes agree with what they claim: strong-label targets on the network's own frames
(every registered model), the contrastive views of mixup runs, the loss a run asks for, the
evaluation of strong-label training by its events, and inference that leaves Paddle's global
device alone."""
import csv

import numpy as np
import paddle
import pytest
import soundfile as sf

import paddle_soundcls
from helpers import calm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.models import registry
from paddle_soundcls.datasets import AudioDataset, AudioFolder, StrongLabelDataset
from paddle_soundcls.datasets.strong import frame_targets
from paddle_soundcls.deploy import event_metrics
from paddle_soundcls.training import AugmentConfig, embeddings, losses, modes, steps
from paddle_soundcls.training import teacher as teacher_lib
from signals import chirp, noise
from test_consistency import two_classes

SR = 32000
LABELS = ['chirp', 'siren']
MODELS = paddle_soundcls.list_models()
# One model per family (the first registered), for the checks that build networks.
FAMILIES = sorted({registry.get_spec(name).family: name for name in reversed(MODELS)}.values())


def hop_seconds(spec):
    return spec.frontend.hop_length / spec.frontend.sample_rate


# ----- strong-label targets sit on the network's frames -----

@pytest.mark.parametrize('name', MODELS)
def test_strong_label_targets_are_the_network_frames_whose_span_holds_the_event(name):
    """Network frame j is centred on front-end frame offset + j * stride and spans stride frames
    around it (the family's frame geometry); its target is on exactly when an event overlaps
    that span. Events are drawn at random, keeping away (by one front-end frame) from span edges,
    where the half-hop rounding of the 10-ms targets decides."""
    spec = registry.get_spec(name)
    geometry, hop = spec.frame_geometry, hop_seconds(spec)
    fine_frames = int(round(10.0 / hop))
    count = fine_frames // geometry.stride   # about what the networks give for a 10-s clip
    centres = geometry.offset + geometry.stride * np.arange(count)
    starts, ends = (centres - geometry.stride / 2) * hop, (centres + geometry.stride / 2) * hop
    edges = np.concatenate([starts, ends])
    rng = np.random.default_rng(7)
    for _ in range(20):
        events = []
        while len(events) < 3:
            onset = rng.uniform(0, 9.5)
            offset = onset + rng.uniform(0.02, 1.0)
            if offset < 10.0 and np.min(np.abs(edges[:, None] - [onset, offset])) > hop:
                events.append((onset, offset, LABELS[len(events) % 2]))
        fine = frame_targets(events, fine_frames, hop, LABELS)
        pooled = steps.network_targets(_SpecOnly(spec), fine[None], count).numpy()[0]
        expected = np.zeros((count, len(LABELS)), np.float32)
        for onset, offset, label in events:
            expected[(starts < offset) & (ends > onset), LABELS.index(label)] = 1.0
        np.testing.assert_array_equal(pooled, expected, err_msg=f'{name}: {events}')


class _SpecOnly:
    """What steps.network_targets reads of a Module: its spec and front end."""

    def __init__(self, spec):
        self.spec, self.frontend_cfg = spec, spec.frontend


@pytest.mark.parametrize('name', FAMILIES)
def test_the_trainer_pools_targets_to_the_frames_the_network_gives(name, tmp_path, monkeypatch):
    """A real forward pass of each family: the strong-label step pools the targets to as many
    frames as the network makes for the clip, and those frames cover the clip as the geometry says
    (one every `stride` front-end frames, the last centred inside the clip)."""
    model = Module(name, label_map=LABELS, multi_label=True, pooling='max', pretrained=False, seed=0)
    step = steps.StrongStep(steps.TrainingNet(model), None, losses.build_loss('bce'), model)
    hop = hop_seconds(model.spec)
    fine_frames = int(round(2.0 / hop))
    targets = np.stack([frame_targets([(0.3, 1.1, 'chirp')], fine_frames, hop, LABELS)] * 2)
    pooled_to = []
    real = steps.network_targets
    monkeypatch.setattr(steps, 'network_targets', lambda m, t, count, place=None: pooled_to.append(count) or
                        real(m, t, count, place))
    waves = paddle.to_tensor(noise(2.0, seed=1, amp=0.1)[None].repeat(2, axis=0).astype('float32'))
    features = model.frontend(waves)
    _, loss = step.forward(features, paddle.to_tensor(targets))
    assert np.isfinite(float(loss))
    with paddle.no_grad():
        model.eval()
        count = model.frame_logits(features).shape[1]
    geometry, frontend_frames = model.spec.frame_geometry, features.shape[1]
    assert pooled_to == [count]
    # Within a stride, plus the first frame's offset (a patch network's last patch must fit whole).
    assert abs(count * geometry.stride - frontend_frames) <= geometry.stride + geometry.offset
    assert model.spec.frame_geometry.centres(count)[-1] < frontend_frames


# ----- SupCon with mixup -----

@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp('modes')
    return AudioFolder(str(two_classes(root / 'train', [1.0, 1.0, 1.0], seed=1)), mode='train', duration=1.0)


def small(labels=('hiss', 'tone'), seed=0, **kwargs):
    return calm(Module('panns_cnn6', label_map=list(labels), pretrained=False, seed=seed, **kwargs))


def test_contrastive_views_are_augmentations_of_their_own_clips_with_their_labels(clips, tmp_path, monkeypatch):
    model = small()
    trainer = Trainer(model, paddle.optimizer.SGD(learning_rate=0.01, parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), supcon_weight=0.5,
                      augment=AugmentConfig(mixup_alpha=0.4, time_masks=1, time_mask_width=5))
    trainer._prepare(clips, 'train')
    step = trainer.step
    assert isinstance(step, steps.SupConStep)
    waves = paddle.to_tensor(np.stack([clips[i][0] for i in range(len(clips))]))
    target = paddle.to_tensor(np.array([clips.target(i) for i in range(len(clips))]))
    task, mixed_target, _ = step.inputs([waves, target], np.random.default_rng(0))
    views, labels = step.views(waves, target, task, key=(0, 1, 1, 0))
    n = len(clips)
    np.testing.assert_array_equal(labels.numpy(), np.concatenate([target.numpy()] * 2))
    clean = model.frontend(waves).numpy()
    for view in (views[:n].numpy(), views[n:].numpy()):
        for i in range(n):
            same = np.all(view[i] == clean[i], axis=1)      # frames equal to clip i's own features
            assert same.sum() >= clean.shape[1] - 5, i      # all but a time mask of <= 5 frames
    # The task loss sees the mixed clips (soft targets), the contrastive loss the two views with
    # their labels, in one forward pass through the wrapped network.
    seen = {}
    real_net, real_supcon = step.net, step.supcon
    monkeypatch.setattr(step, 'net', lambda x, output='logits': seen.setdefault('net', x) is None or
                        real_net(x, output))
    monkeypatch.setattr(step, 'supcon', lambda e, y: seen.setdefault('labels', y) is None or real_supcon(e, y))
    step.forward(task, mixed_target, None, views, labels)
    np.testing.assert_array_equal(seen['net'].numpy(), np.concatenate([task.numpy(), views.numpy()]))
    np.testing.assert_array_equal(seen['labels'].numpy(), labels.numpy())


# ----- the asked loss, on every kind of data -----

@pytest.mark.parametrize('loss', ['ce', 'class_balanced', 'focal', 'class_balanced_focal'])
def test_softmax_losses_are_refused_for_multi_label_models(loss):
    for model in (small(multi_label=True), small(multi_label=True, pooling='max')):
        with pytest.raises(ValueError, match=f"loss='{loss}' is a loss over a softmax.*use loss='bce'"):
            Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), loss=loss)
    with pytest.raises(ValueError, match="unknown loss 'bse'"):
        Trainer(small(), paddle.optimizer.SGD(parameters=small().parameters()), loss='bse')


def strong_set(root, mode='train', clips=4, seconds=3.0, duration=2.0, frame_hop=0.01):
    """Quiet noise with a 0.6-s chirp at a known time in each clip, and the events.csv."""
    root.mkdir(exist_ok=True)
    rows = []
    for i in range(clips):
        wave = noise(seconds, amp=0.01, seed=60 + i)
        onset = 0.5 + 0.4 * i
        wave[int(onset * SR):int((onset + 0.6) * SR)] += chirp(700, 2500, 0.6, amp=0.5)
        sf.write(root / f'{i}.wav', wave, SR)
        rows.append({'filename': f'{i}.wav', 'onset': onset, 'offset': onset + 0.6, 'label': 'chirp'})
    with open(root / 'events.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, ['filename', 'onset', 'offset', 'label'])
        writer.writeheader()
        writer.writerows(rows)
    return StrongLabelDataset(str(root / 'events.csv'), mode=mode, duration=duration, labels=LABELS,
                              frame_hop_seconds=frame_hop)


class CountingBCE(losses.BCEWithLogitsLoss):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, logits, target):
        self.shapes.append(list(logits.shape))
        return super().forward(logits, target)


def test_strong_label_training_uses_the_asked_loss(tmp_path):
    data = strong_set(tmp_path / 'data')
    model = small(labels=LABELS, multi_label=True, pooling='max')
    loss = CountingBCE()
    trainer = Trainer(model, paddle.optimizer.SGD(learning_rate=0.01, parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), loss=loss)
    trainer.train(data, epochs=1, batch_size=4)   # no dev set: every call is a training step
    frames = model.frame_logits(model.frontend(paddle.to_tensor(data[0][0][None]))).shape[1]
    assert loss.shapes == [[4 * frames, len(LABELS)]]   # the frame logits of the batch, frame by frame


# ----- evaluation of strong-label training: events, and the clip scores of the frames -----

def test_strong_label_training_needs_decision_level_pooling(tmp_path):
    data = strong_set(tmp_path / 'data')
    model = small(labels=LABELS, multi_label=True)
    trainer = Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'))
    with pytest.raises(ValueError, match=r"decision-level pooling \(pooling='max' or 'linear_softmax'\).*"
                                         r"pooling='embedding'"):
        trainer.train(data, epochs=1)


def test_strong_label_training_is_evaluated_and_chosen_by_its_events(tmp_path):
    train, dev = strong_set(tmp_path / 'data'), strong_set(tmp_path / 'data', mode='dev')
    model = small(labels=LABELS, multi_label=True, pooling='max')
    trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=3e-3, parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), keep_last=None, seed=1)
    state = trainer.train(train, epochs=2, batch_size=4, eval_dataset=dev)
    assert trainer.compare_metrics == 'event_f1'   # the default with event times in the dev set
    history = state['history']
    scores = [h['eval']['event_f1'] for h in history]
    assert state['best_metric'] == max(scores) and history[state['best_epoch'] - 1]['eval']['event_f1'] == max(scores)
    # The reported figures are those of the events detect() finds in the whole dev recordings,
    # with 2 TP / (n_ref + n_est) as F1.
    from paddle_soundcls.checkpoints.pdparams import load_params
    model.set_state_dict(load_params(str(tmp_path / 'ckpt' / 'epoch_2' / 'model.pdparams')))
    paths = [path for path, _ in dev.items]
    found = model.detect(paths)
    truth = {path: dev.events[path] for path in paths}
    estimates = {path: r['events'] for path, r in zip(paths, found)}
    durations = {path: sf.info(path).duration for path in paths}
    for kind, result in (('event', event_metrics.event_based_metrics(truth, estimates, LABELS)),
                         ('segment', event_metrics.segment_based_metrics(truth, estimates, LABELS,
                                                                         durations=durations))):
        micro = result['micro']
        assert history[-1]['eval'][f'{kind}_f1'] == pytest.approx(2 * micro['tp'] / (micro['n_ref'] + micro['n_est']))
        assert {f'{kind}_precision', f'{kind}_recall', f'{kind}_f1_macro'} <= set(history[-1]['eval'])
    assert 'mAP' in history[-1]['eval']   # the clip-level figures stay
    # Its clip scores are its pooled frame scores.
    wave = dev[0][0]
    with paddle.no_grad():
        frames = model.frame_scores(model.frontend(paddle.to_tensor(wave[None]))).numpy()[0]
    clip = model.predict([wave], SR, engine='dygraph')[0]
    np.testing.assert_allclose([clip[label] for label in LABELS], frames.max(axis=0), atol=1e-5)


def test_event_metrics_as_compare_metrics_need_a_dev_set_with_event_times(tmp_path):
    model = small(labels=LABELS, multi_label=True, pooling='max')
    train = strong_set(tmp_path / 'data')
    weak_dev = AudioDataset([(path, (0,)) for path, _ in train.items], LABELS, mode='dev', duration=2.0,
                            multi_label=True)   # clip labels only
    trainer = Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), compare_metrics='segment_f1')
    with pytest.raises(ValueError, match=r"compare_metrics='segment_f1' is measured on a dev set with event times"):
        trainer.train(train, epochs=1, eval_dataset=weak_dev)
    with pytest.raises(ValueError, match='compare_metrics must be one of'):
        Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), compare_metrics='event_F1')


# ----- inference never changes the process's device -----

def test_inference_leaves_the_global_device_as_it_is(tmp_path, clips, monkeypatch):
    model = small()
    teacher = small(seed=3)
    few = AudioFolder(str(two_classes(tmp_path / 'few', [1.0], seed=2)), mode='train', duration=1.0)  # 2 clips
    gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    trainer = Trainer(model, paddle.optimizer.SGD(learning_rate=0.01, parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), teacher=teacher, teacher_cache=str(tmp_path / 't'),
                      use_gpu=gpu)   # on a GPU: predict's default use_gpu=False used to switch the run to the CPU
    before = paddle.get_device()
    calls = []
    real = paddle.set_device
    monkeypatch.setattr(paddle, 'set_device', lambda device: calls.append(device) or real(device))
    wave = clips[0][0]
    checks = {
        'predict (dygraph, < 4 clips)': lambda: model.predict([wave], SR),
        'predict (onnxruntime or its fallback)': lambda: model.predict([wave] * 4, SR),
        'predict (windows)': lambda: model.predict([wave], SR, window=0.5),
        'detect': lambda: model.detect([wave], SR),
        'stream': lambda: (lambda s: (s.push(wave), s.close()))(model.stream(SR, window=1.0, hop=0.5)),
        'frame_scorer': lambda: model.frame_scorer().window_scores(wave),
        'evaluate': lambda: trainer.evaluate(clips, batch_size=2),
        'embeddings (dygraph)': lambda: embeddings.DygraphEngine(model)(np.zeros((1, 101, 64), np.float32)),
        'teacher pass': lambda: teacher_lib.teacher_logits(trainer.teacher, few, str(tmp_path / 't')),
        'train with a teacher': lambda: trainer.train(few, epochs=1, batch_size=2),
    }
    for name, call in checks.items():
        call()
        assert calls == [] and paddle.get_device() == before, f'{name} changed the device: {calls}'
    if not paddle.is_compiled_with_cuda():
        for name, call in (('predict', lambda: model.predict([wave], SR, use_gpu=True)),
                           ('detect', lambda: model.detect([wave], SR, use_gpu=True))):
            with pytest.raises(RuntimeError, match='use_gpu=True, but this PaddlePaddle build has no CUDA'):
                call()
            assert calls == [] and paddle.get_device() == before, name


# ----- the one table of modes that do not combine -----

AUG = AugmentConfig(gain_db=3.0)
# Every row of modes.CONFLICTS, as a run that has both sides: (Module kwargs, Trainer kwargs, the
# training data: None (refused when the Trainer is made), 'strong' (event times), 'multi'
# (multi-label clips), 'two processes').
RUNS = {
    ('supcon', 'frozen'): ({}, dict(supcon_weight=0.5, freeze_backbone=True, augment=AUG), None),
    ('strong', 'frozen'): (dict(multi_label=True), dict(freeze_backbone=True), 'strong'),
    ('strong', 'supcon'): (dict(multi_label=True), dict(supcon_weight=0.5, augment=AUG), 'strong'),
    ('strong', 'teacher'): (dict(multi_label=True, pooling='max'), dict(teacher='teacher'), 'strong'),
    ('strong', 'mixup'): (dict(multi_label=True, pooling='max'), dict(augment=AugmentConfig(mixup_alpha=0.2)),
                          'strong'),
    ('supcon', 'data_parallel'): ({}, dict(supcon_weight=0.5, augment=AUG), 'two processes'),
    ('supcon', 'multi_label'): (dict(multi_label=True), dict(supcon_weight=0.5, augment=AUG), 'multi'),
    ('frozen', 'tagging'): (dict(task=None), dict(freeze_backbone=True), None),
    ('frozen', 'decision_pooling'): (dict(multi_label=True, pooling='max'), dict(freeze_backbone=True), None),
    ('frozen', 'augment'): ({}, dict(freeze_backbone=True, augment=AUG), None),
    ('supcon', 'decision_pooling'): (dict(multi_label=True, pooling='max'), dict(supcon_weight=0.5, augment=AUG),
                                     None),
    ('supcon', 'no_augment'): ({}, dict(supcon_weight=0.5), None),
    ('strong', 'embedding_pooling'): (dict(multi_label=True), {}, 'strong'),
    ('domain', 'frozen'): ({}, dict(domain_adversarial_weight=0.5, freeze_backbone=True), None),
    ('domain', 'supcon'): ({}, dict(domain_adversarial_weight=0.5, supcon_weight=0.5, augment=AUG), None),
    ('domain', 'mixup'): ({}, dict(domain_adversarial_weight=0.5, augment=AugmentConfig(mixup_alpha=0.2)), None),
    ('domain', 'decision_pooling'): (dict(multi_label=True, pooling='max'), dict(domain_adversarial_weight=0.5),
                                     None),
    ('domain', 'no_devices'): ({}, dict(domain_adversarial_weight=0.5), 'no devices'),
    ('domain', 'one_device'): ({}, dict(domain_adversarial_weight=0.5), 'one device'),
}


def test_every_row_of_the_mode_table_has_a_run_below():
    assert sorted(RUNS) == sorted((mode, other) for mode, other, _, _ in modes.CONFLICTS)


@pytest.mark.parametrize('pair', list(RUNS), ids='-'.join)
def test_modes_that_do_not_combine_are_refused_with_the_tables_message(pair, tmp_path, monkeypatch):
    """Each refusal is the table's one message, '<mode> <why>, so it does not combine with <other>:
    <what to do>', naming the settings that turned both on, and comes before any work."""
    module_kwargs, trainer_kwargs, data = RUNS[pair]
    [(why, fix)] = [(w, f) for m, o, w, f in modes.CONFLICTS if (m, o) == pair]
    names = {'supcon': 'supcon_weight > 0', 'frozen': 'freeze_backbone=True', 'teacher': 'teacher',
             'strong': 'event times', 'mixup': 'mixup_alpha=0.2', 'data_parallel': '2 processes',
             'multi_label': 'multi-label data', 'tagging': "task='tagging'", 'decision_pooling': "pooling='max'",
             'augment': 'augmentation (on: gain_db)', 'no_augment': 'without augmentation',
             'embedding_pooling': "pooling='embedding'", 'domain': 'domain_adversarial_weight > 0',
             'no_devices': 'without devices', 'one_device': 'of one device'}
    labels = LABELS if 'multi_label' in module_kwargs else ['hiss', 'tone']
    if 'task' in module_kwargs:
        model = Module('panns_cnn6', pretrained=False, **module_kwargs)
    else:
        model = small(labels=labels, **module_kwargs)
    if trainer_kwargs.get('teacher') == 'teacher':
        trainer_kwargs = {**trainer_kwargs, 'teacher': small(labels=labels, seed=1, **module_kwargs)}
    if data == 'two processes':
        monkeypatch.setattr(paddle.distributed, 'get_world_size', lambda: 2)

    def run():
        trainer = Trainer(model, paddle.optimizer.SGD(parameters=model.parameters()), use_vdl=False,
                          checkpoint_dir=str(tmp_path / 'ckpt'), **trainer_kwargs)
        if data in ('strong', 'multi', 'one device', 'no devices'):
            train = strong_set(tmp_path / 'data')
            if data == 'multi':
                train = AudioDataset([(path, (0,)) for path, _ in train.items], LABELS, mode='train',
                                     duration=2.0, multi_label=True)
            if data in ('one device', 'no devices'):
                train = AudioDataset([(path, i % 2) for i, (path, _) in enumerate(train.items)], labels,
                                     mode='train', duration=2.0)
                if data == 'one device':
                    train.devices = ['a'] * len(train)
            trainer.train(train, epochs=1)

    with pytest.raises(ValueError) as info:
        run()
    message = str(info.value)
    mode, other = pair
    assert f' {why}, so it does not combine with ' in message and message.endswith(f': {fix}'), message
    assert message.index(names[mode]) < message.index(' so it does not combine') < message.index(names[other])
    assert not (tmp_path / 'ckpt').exists()
