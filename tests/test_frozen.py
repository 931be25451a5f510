"""Frozen-backbone fine-tuning: the embedding cache (reuse, invalidation, freshness, resume after
an interruption), training the head on cached embeddings, and what the checkpoint is good for."""
import os

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import calm, prime_batchnorm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioFolder
from paddle_soundcls.errors import ArgumentError, CheckpointError
from paddle_soundcls.training import AugmentConfig, embeddings
from test_trainer import SR, make_folder

LABELS = ['hiss', 'tone']


def build(train_set, seed=123):
    """CNN6 with random weights but BatchNorm statistics of this data, as a pretrained network has."""
    paddle.seed(seed)
    model = calm(Module('panns_cnn6', label_map=LABELS, pretrained=False))
    return prime_batchnorm(model, np.stack([train_set[i][0] for i in range(len(train_set))]))


@pytest.fixture
def folders(tmp_path):
    return make_folder(tmp_path / 'train', 8, seed=1), make_folder(tmp_path / 'dev', 4, seed=2)


def vectors(cached):
    """The cached embeddings of an EmbeddingDataset of centre crops, [clips, emb_size]."""
    assert all(len(e) == 1 for e in cached.embeddings)  # one segment per training clip
    return np.stack([e[0] for e in cached.embeddings])


class Spy:
    """Wraps the embedding engine: counts the clips it embeds, and can fail after `fail_after` clips."""

    def __init__(self, monkeypatch, fail_after=None):
        self.clips, self.fail_after = 0, fail_after
        real = embeddings.build_engine
        monkeypatch.setattr(embeddings, 'build_engine', lambda module: self.wrap(real(module)))

    def wrap(self, engine):
        def run(features):
            if self.fail_after is not None and self.clips + len(features) > self.fail_after:
                raise KeyboardInterrupt('interrupted by the test')
            self.clips += len(features)
            return engine(features)
        run.name = engine.name
        return run


def fresh_embedding(model, dataset, index):
    """The backbone's embedding of the centre crop of clip `index`, in Paddle dygraph."""
    dev = AudioFolder(dataset.root, mode='dev', duration=dataset.duration)
    with paddle.no_grad():
        model.eval()
        feats = model.frontend(paddle.to_tensor(dev[index][0][None]))
        return model.forward_features(feats).numpy()[0]


def test_cache_is_reused_and_recomputes_exactly_what_changed(folders, monkeypatch):
    train_root, _ = folders
    train_set = AudioFolder(train_root, mode='train', duration=1.0)
    model = build(train_set)
    spy = Spy(monkeypatch)
    first = embeddings.embed_dataset(model, train_set, batch_size=4)
    assert spy.clips == len(train_set) == 16
    assert vectors(first).shape == (16, model.backbone.emb_size)
    second = embeddings.embed_dataset(model, train_set)
    assert spy.clips == 16  # nothing recomputed
    np.testing.assert_array_equal(vectors(second), vectors(first))
    assert [int(t) for t in second.targets] == [t for _, t in train_set.items]

    # Another file under the same name: that one clip is recomputed, and its embedding is not stale.
    path = train_set.items[3][0]
    sf.write(path, (0.2 * np.sin(2 * np.pi * 2000 * np.arange(SR) / SR)).astype('float32'), SR)
    changed = embeddings.embed_dataset(model, train_set)
    assert spy.clips == 17
    assert not np.allclose(vectors(changed)[3], vectors(first)[3], atol=1e-3)
    np.testing.assert_allclose(vectors(changed)[3], fresh_embedding(model, train_set, 3), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.delete(vectors(changed), 3, 0), np.delete(vectors(first), 3, 0))

    # Another clip length: all recomputed, centre-cropped although the dataset is in train mode.
    shorter = AudioFolder(train_root, mode='train', duration=0.6)
    cropped = embeddings.embed_dataset(model, shorter)
    assert spy.clips == 17 + 16
    for i in (0, 9):
        np.testing.assert_allclose(vectors(cropped)[i], fresh_embedding(model, shorter, i), rtol=1e-4, atol=1e-4)

    # Other backbone weights: all recomputed. The head's weights do not matter.
    model.fc.weight.set_value(model.fc.weight * 2)
    embeddings.embed_dataset(model, train_set)
    assert spy.clips == 33
    conv = model.backbone.conv_block1.conv1.weight
    conv.set_value(conv * 1.01)
    embeddings.embed_dataset(model, train_set)
    assert spy.clips == 33 + 16

    # Audio decoded otherwise (another resampler, another libsndfile): all recomputed.
    from paddle_soundcls import audio
    monkeypatch.setattr(audio, 'RESAMPLER_VERSION', audio.RESAMPLER_VERSION + 1)
    embeddings.embed_dataset(model, train_set)
    assert spy.clips == 49 + 16
    monkeypatch.setattr(sf, '__libsndfile_version__', 'another')
    embeddings.embed_dataset(model, train_set)
    assert spy.clips == 65 + 16


def test_an_interrupted_pass_resumes_without_recomputing(folders, monkeypatch):
    train_root, _ = folders
    train_set = AudioFolder(train_root, mode='train', duration=1.0)
    model = build(train_set)
    spy = Spy(monkeypatch, fail_after=8)
    with pytest.raises(KeyboardInterrupt):
        embeddings.embed_dataset(model, train_set, batch_size=4)
    assert spy.clips == 8
    spy.fail_after = None
    done = embeddings.embed_dataset(model, train_set, batch_size=4)
    assert spy.clips == 16  # only the 8 missing ones
    root = embeddings.cache_root()
    leftovers = [f for _, _, files in os.walk(root) for f in files if f.endswith('.tmp')]
    assert leftovers == []
    for i in (0, 7, 8, 15):
        np.testing.assert_allclose(vectors(done)[i], fresh_embedding(model, train_set, i), rtol=1e-4, atol=1e-4)


def test_dygraph_fallback_gives_the_same_embeddings(folders, monkeypatch, tmp_path):
    train_root, _ = folders
    train_set = AudioFolder(train_root, mode='dev', duration=1.0)
    model = build(train_set)
    fast = embeddings.embed_dataset(model, train_set, root=str(tmp_path / 'a'))

    def broken(*args, **kwargs):
        raise RuntimeError('no converter for this op')
    from paddle_soundcls.export import onnx_cache
    monkeypatch.setattr(onnx_cache, 'cached_onnx', broken)
    assert isinstance(embeddings.build_engine(model), embeddings.DygraphEngine)
    slow = embeddings.embed_dataset(model, train_set, root=str(tmp_path / 'b'))
    np.testing.assert_allclose(vectors(slow), vectors(fast), rtol=1e-4, atol=1e-4)


def test_frozen_training_gives_an_ordinary_checkpoint(folders, monkeypatch, tmp_path):
    train_root, dev_root = folders
    train_set = AudioFolder(train_root, mode='train', duration=1.0)
    dev_set = AudioFolder(dev_root, mode='dev', duration=1.0)
    model = build(train_set)
    spy = Spy(monkeypatch)
    ckpt = tmp_path / 'ckpt'
    optimizer = paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())
    backbone_before = {k: v.numpy().copy() for k, v in model.backbone.state_dict().items()}
    state = Trainer(model, optimizer, checkpoint_dir=str(ckpt), freeze_backbone=True).train(
        train_set, epochs=4, batch_size=4, eval_dataset=dev_set)
    assert spy.clips == 24  # 16 training + 8 evaluation clips, once
    history = state['history']
    assert history[-1]['train']['loss'] < history[0]['train']['loss']
    assert state['best_metric'] >= 0.875
    for key, value in model.backbone.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), backbone_before[key])
    best = ckpt / 'best_model'
    assert (best / 'metrics.json').is_file() and (ckpt / 'epoch_4' / 'trainer.json').is_file()

    # A new run resumes after epoch 4 and reuses every cached embedding.
    model = build(train_set)
    resumed = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters()),
                      checkpoint_dir=str(ckpt), freeze_backbone=True, use_vdl=False).train(
        train_set, epochs=5, batch_size=4, eval_dataset=dev_set)
    assert [h['epoch'] for h in resumed['history']] == [1, 2, 3, 4, 5]
    assert spy.clips == 24

    # Module.predict on the checkpoint gives the scores of the head on the cached embeddings.
    restored = Module('panns_cnn6', load_checkpoint=str(best))
    cached = embeddings.embed_dataset(restored, dev_set, cut='segments')  # as the Trainer evaluates
    assert spy.clips == 24
    with paddle.no_grad():
        expected = restored.scores(restored.fc(paddle.to_tensor(vectors(cached)))).numpy()
    paths = [path for path, _ in dev_set.items]
    for engine in ('dygraph', 'onnxruntime'):
        results = restored.predict(paths, batch_size=4, engine=engine)
        got = np.array([[result[label] for label in LABELS] for result in results])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    trainer = Trainer(restored, paddle.optimizer.Adam(parameters=restored.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'eval'), freeze_backbone=True)
    assert trainer.evaluate(dev_set, batch_size=4)['metrics']['acc'] == pytest.approx(
        float(np.mean(expected.argmax(axis=1) == [t for _, t in dev_set.items])))

    # Full fine-tuning continues from the checkpoint: one step moves the backbone too.
    model = Module('panns_cnn6', load_checkpoint=str(best))
    before = model.backbone.conv_block4.conv1.weight.numpy().copy()
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())
    state = Trainer(model, optimizer, checkpoint_dir=str(tmp_path / 'full'), use_vdl=False).train(
        train_set, epochs=1, batch_size=16)
    assert np.isfinite(state['history'][0]['train']['loss'])
    assert not np.allclose(model.backbone.conv_block4.conv1.weight.numpy(), before)
    assert spy.clips == 24  # full fine-tuning does not use the cache


@pytest.mark.parametrize('augment', [AugmentConfig(gain_db=3.0), AugmentConfig(noise_snr_db=20.0),
                                     AugmentConfig(time_masks=2, time_mask_width=10), AugmentConfig(mixup_alpha=0.2)])
def test_augmentation_is_refused(augment):
    model = calm(Module('panns_cnn6', label_map=LABELS, pretrained=False))
    with pytest.raises(ValueError, match='freeze_backbone=True trains on embeddings computed once per clip'):
        Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), freeze_backbone=True, augment=augment)


def test_tagging_head_and_other_datasets_are_refused(folders):
    tagger = Module('panns_cnn6', task=None, pretrained=False)
    with pytest.raises(ValueError, match="task='sound-cls'"):
        Trainer(tagger, paddle.optimizer.Adam(parameters=tagger.parameters()), freeze_backbone=True)
    model = calm(Module('panns_cnn6', label_map=LABELS, pretrained=False))
    waves = [(np.zeros(SR, dtype='float32'), np.int64(0))] * 4
    with pytest.raises(ArgumentError, match='AudioDataset'):
        embeddings.embed_dataset(model, waves)


def test_frozen_epochs_hold_the_head_and_the_backbone_is_written_once(folders, monkeypatch, tmp_path):
    """An epoch of a frozen-backbone run costs what the head costs: its model.pdparams holds the
    head, and the unchanging backbone is written once for the run, named in trainer.json. Resuming
    gives the whole model (whatever backbone the new process built), exactly as an uninterrupted
    run; epochs written as whole models (the layout before) resume too; best_model is whole."""
    import json

    from paddle_soundcls import fileio, load_module
    from paddle_soundcls.checkpoints.pdparams import load_params
    train_root, dev_root = folders
    train_set = AudioFolder(train_root, mode='train', duration=1.0)
    dev_set = AudioFolder(dev_root, mode='dev', duration=1.0)
    writes = []
    real_atomic_write = fileio.atomic_write
    monkeypatch.setattr(fileio, 'atomic_write',
                        lambda path, write: writes.append(path) or real_atomic_write(path, write))

    def run(ckpt, epochs, model=None):
        model = model or build(train_set)
        state = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters()),
                        checkpoint_dir=str(ckpt), freeze_backbone=True, use_vdl=False, keep_last=None).train(
            train_set, epochs=epochs, batch_size=4, eval_dataset=dev_set)
        return state, {k: v.numpy() for k, v in model.state_dict().items()}

    straight, weights = run(tmp_path / 'a', 4)
    backbone_keys = {k for k in weights if k.startswith('backbone.')}
    head_keys = set(weights) - backbone_keys
    assert head_keys == {'fc.weight', 'fc.bias'}
    ckpt = tmp_path / 'b'
    run(ckpt, 3)
    [name] = os.listdir(ckpt / 'backbones')
    written = [str(ckpt / 'backbones' / name)]
    assert [w for w in writes if w.startswith(str(ckpt / 'backbones'))] == written   # once, not per epoch
    backbone = load_params(str(ckpt / 'backbones' / name))
    assert set(backbone) == backbone_keys
    for key in backbone_keys:
        np.testing.assert_array_equal(backbone[key], weights[key])   # the backbone never trained
    for epoch in (1, 2, 3):
        assert set(load_params(str(ckpt / f'epoch_{epoch}' / 'model.pdparams'))) == head_keys
        state = json.loads((ckpt / f'epoch_{epoch}' / 'trainer.json').read_text())
        assert state['backbone_file'] == f'backbones/{name}'
    epoch_bytes = sum(f.stat().st_size for f in (ckpt / 'epoch_3').iterdir())
    assert epoch_bytes < 0.01 * (ckpt / 'backbones' / name).stat().st_size

    # A new process whose Module has other backbone weights resumes the whole saved model.
    paddle.seed(99)
    other = calm(Module('panns_cnn6', label_map=LABELS, pretrained=False))
    resumed, resumed_weights = run(ckpt, 4, model=other)
    assert resumed['history'] == straight['history']
    for key, value in weights.items():
        np.testing.assert_array_equal(resumed_weights[key], value, err_msg=key)
    assert [w for w in writes if w.startswith(str(ckpt / 'backbones'))] == written   # still once

    def assert_loads_whole(directory, head):
        for restored in (Module('panns_cnn6', load_checkpoint=str(directory)), load_module(str(directory))):
            params = {k: v.numpy() for k, v in restored.state_dict().items()}
            for key in backbone_keys:
                np.testing.assert_array_equal(params[key], backbone[key])
            for key in head_keys:
                np.testing.assert_array_equal(params[key], head[key])

    # best_model is the whole model, wherever it is loaded.
    assert_loads_whole(ckpt / 'best_model',
                       load_params(str(ckpt / f'epoch_{resumed["best_epoch"]}' / 'model.pdparams')))
    # An epoch of a frozen run loads as the whole model too (its head over the backbone it names),
    # and a missing backbone file is named.
    epoch_dir = ckpt / 'epoch_2'
    assert_loads_whole(epoch_dir, load_params(str(epoch_dir / 'model.pdparams')))
    moved = ckpt / 'moved.pdparams'
    os.replace(ckpt / 'backbones' / name, moved)
    with pytest.raises(CheckpointError, match=r'head of a frozen-backbone run; its backbone, .*backbones.* is missing'):
        Module('panns_cnn6', load_checkpoint=str(epoch_dir))
    os.replace(moved, ckpt / 'backbones' / name)

    # Epochs of whole models (as frozen runs wrote them before) resume as they did.
    old = tmp_path / 'c'
    run(old, 3)
    for epoch in (1, 2, 3):
        directory = old / f'epoch_{epoch}'
        whole = {**load_params(str(old / 'backbones' / name)), **load_params(str(directory / 'model.pdparams'))}
        paddle.save({k: paddle.to_tensor(v) for k, v in whole.items()}, str(directory / 'model.pdparams'))
        state = json.loads((directory / 'trainer.json').read_text())
        del state['backbone_file']
        (directory / 'trainer.json').write_text(json.dumps(state))
    for file in (old / 'backbones').iterdir():
        file.unlink()
    (old / 'backbones').rmdir()
    paddle.seed(98)
    resumed, resumed_weights = run(old, 4, model=calm(Module('panns_cnn6', label_map=LABELS, pretrained=False)))
    assert resumed['history'] == straight['history']
    for key, value in weights.items():
        np.testing.assert_array_equal(resumed_weights[key], value, err_msg=key)


def test_a_backbone_file_goes_with_the_last_epoch_that_names_it(folders, tmp_path):
    """Full fine-tuning continued in a frozen run's checkpoint_dir saves whole models; once the
    frozen epochs are pruned, their backbone file goes too."""
    train_root, _ = folders
    train_set = AudioFolder(train_root, mode='train', duration=1.0)
    model = build(train_set)
    ckpt = tmp_path / 'ckpt'
    Trainer(model, paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters()),
            checkpoint_dir=str(ckpt), freeze_backbone=True, use_vdl=False, keep_last=1).train(
        train_set, epochs=2, batch_size=8)
    assert sorted(os.listdir(ckpt)) == ['backbones', 'epoch_2']
    Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()),
            checkpoint_dir=str(ckpt), use_vdl=False, keep_last=1).train(train_set, epochs=3, batch_size=16)
    assert sorted(os.listdir(ckpt)) == ['epoch_3']
    restored = Module('panns_cnn6', load_checkpoint=str(ckpt / 'epoch_3'))   # a whole model again
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key].numpy(), value.numpy())
