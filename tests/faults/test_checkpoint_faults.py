"""Checkpoints that do not fit, are cut short, or are hostile pickles: refused with an error
naming the file and what to do, and a hostile file never gets to run its command."""
import io
import json
import os
import pickle
import shutil

import numpy as np
import paddle
import pytest

from faultkit import ROOT
from helpers import small_module, spec_with_url
from paddle_soundcls import Module, Trainer, cache, cli, fileio
from paddle_soundcls.checkpoints import pdparams, schema
from paddle_soundcls.errors import CheckpointError, UnsafeCheckpointError
from paddle_soundcls.models import registry
from paddle_soundcls.datasets import AudioFolder

TORCH_DATA = os.path.join(ROOT, 'tests', 'data', 'torch')
MARKER = 'hostile_marker'


class _RunsACommand:
    """Pickles as a call of os.system: what a hostile checkpoint holds."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_pickle(directory, padding=0):
    """A state dict whose unpickling would create `directory`/hostile_marker."""
    state = {'backbone.bn0.weight': np.ones(64, 'float32'),
             'fc.weight': _RunsACommand(f'touch {os.path.join(directory, MARKER)}')}
    return pickle.dumps(state, protocol=4) + b'\0' * padding  # pickle stops reading at its STOP opcode


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A 2-class CNN6 checkpoint directory (model.pdparams + meta.json) and the same weights as a bare file."""
    base = tmp_path_factory.mktemp('ckpt_faults')
    module = small_module(label_map=['cat', 'dog'])
    module.save(str(base / 'cnn6_2class'))
    shutil.copy(base / 'cnn6_2class' / 'model.pdparams', base / BARE)
    return base


# ----- checkpoints of another model or class count -----

BARE = 'bare_cnn6_2class.pdparams'
MISFITS = [
    # (checkpoint, Module arguments, what the message says)
    ('cnn6_2class', dict(name='panns_cnn10'), "use name='panns_cnn6'"),
    ('cnn6_2class', dict(name='panns_cnn6', num_class=5), 'has 2 classes, but 5 were asked for'),
    ('cnn6_2class', dict(name='panns_cnn6', label_map=['cat', 'cow']), 'leave label_map out'),
    (BARE, dict(name='panns_cnn10'), 'backbone.conv_block1.conv1.weight: checkpoint [64, 1, 5, 5]'),
    (BARE, dict(name='panns_cnn14'), 'does not fit panns_cnn14'),
    (BARE, dict(name='panns_cnn6', num_class=5), 'fc.weight: checkpoint [512, 2] vs model [512, 5]'),
]


@pytest.mark.parametrize('source, kwargs, says', MISFITS, ids=[f'{s}-{"-".join(map(str, k.values()))}'
                                                               for s, k, _ in MISFITS])
def test_checkpoint_of_another_model_or_class_count(saved, source, kwargs, says):
    path = str(saved / source)
    with pytest.raises(CheckpointError) as info:
        Module(load_checkpoint=path, **kwargs)
    assert path in str(info.value) and says in str(info.value)


def test_cli_export_of_another_model_is_one_line(saved, tmp_path, capsys):
    ckpt = str(saved / 'cnn6_2class')
    assert cli.main(['export', '--checkpoint', ckpt, '--model', 'panns_cnn10', '--output', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ckpt in err and '--model panns_cnn6' in err
    assert not (tmp_path / 'x').exists()


# ----- cut short -----

CUTS = [pytest.param(0, id='empty'), pytest.param(2, id='2-bytes'), pytest.param(0.5, id='half'),
        pytest.param(-1, id='all-but-the-last-byte')]


def cut(src, dst, keep):
    data = open(src, 'rb').read()
    n = len(data) - 1 if keep == -1 else int(keep * len(data)) if isinstance(keep, float) else keep
    with open(dst, 'wb') as f:
        f.write(data[:n])
    return str(dst)


@pytest.mark.parametrize('keep', CUTS)
def test_truncated_pdparams_is_named(saved, tmp_path, keep):
    bare = cut(saved / BARE, tmp_path / 'cut.pdparams', keep)
    directory = tmp_path / 'ckpt'
    shutil.copytree(saved / 'cnn6_2class', directory)
    in_dir = cut(saved / 'cnn6_2class' / 'model.pdparams', directory / 'model.pdparams', keep)
    for source, path in ((bare, bare), (str(directory), in_dir)):
        with pytest.raises(CheckpointError) as info:
            Module('panns_cnn6', load_checkpoint=source)
        assert f'cannot read checkpoint {path}' in str(info.value) and 'damaged' in str(info.value)


def test_cli_predict_with_a_truncated_checkpoint_is_one_line(saved, tmp_path, capsys):
    directory = tmp_path / 'ckpt'
    shutil.copytree(saved / 'cnn6_2class', directory)
    path = cut(saved / 'cnn6_2class' / 'model.pdparams', directory / 'model.pdparams', 0.5)
    clip = tmp_path / 'clip.wav'
    import soundfile as sf
    sf.write(str(clip), np.zeros(16000, 'float32'), 16000)
    assert cli.main(['predict', str(directory), str(clip)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err


@pytest.mark.parametrize('damage', ['cut', 'not-json-object', 'fields-missing'])
def test_damaged_meta_json_is_named(saved, tmp_path, damage):
    directory = tmp_path / 'ckpt'
    shutil.copytree(saved / 'cnn6_2class', directory)
    meta = directory / 'meta.json'
    text = meta.read_text()
    meta.write_text({'cut': text[:len(text) // 2], 'not-json-object': '[1, 2]',
                     'fields-missing': json.dumps({'format': schema.META_FORMAT, 'model': 'panns_cnn6'})}[damage])
    with pytest.raises(CheckpointError) as info:
        Module('panns_cnn6', load_checkpoint=str(directory))
    assert str(meta) in str(info.value)


def test_damaged_pretrained_weights_in_the_cache_say_to_delete_them(server, monkeypatch):
    from paddle_soundcls.models.panns import ARCHITECTURES
    url = server.url + '/panns_cnn6.pdparams'
    monkeypatch.setitem(registry._MODELS, 'panns_cnn6', spec_with_url('panns_cnn6', url))
    buffer = io.BytesIO()
    paddle.save(ARCHITECTURES['cnn6']().state_dict(), buffer)
    good = buffer.getvalue()
    cached = os.path.join(cache.cache_dir(), 'panns_cnn6.pdparams')
    with open(cached, 'wb') as f:
        f.write(good[:-100])  # cut short, but within the size the check allows
    with pytest.raises(CheckpointError) as info:
        Module('panns_cnn6', task=None)
    message = str(info.value)
    assert f'Delete {cached} and run again' in message and url in message
    assert server.requests == []
    os.remove(cached)
    server.serve('/panns_cnn6.pdparams', good)
    assert Module('panns_cnn6', task=None).num_class == 527


# ----- hostile pickles -----

def test_hostile_pdparams_is_refused_and_never_runs(tmp_path, saved):
    bare = tmp_path / 'model.pdparams'
    bare.write_bytes(hostile_pickle(tmp_path))
    directory = tmp_path / 'ckpt'
    shutil.copytree(saved / 'cnn6_2class', directory)
    (directory / 'model.pdparams').write_bytes(hostile_pickle(tmp_path))
    for source in (bare, directory):
        with pytest.raises(UnsafeCheckpointError, match='refused.*posix.system|refused.*nt.system'):
            Module('panns_cnn6', load_checkpoint=str(source))
        assert not (tmp_path / MARKER).exists()
    with pytest.raises(UnsafeCheckpointError):
        pdparams.load_params(str(bare))
    assert not (tmp_path / MARKER).exists()


def test_hostile_file_in_the_weights_cache_is_refused(tmp_path, monkeypatch):
    cfg = registry.get_spec('panns_cnn6').weights
    monkeypatch.setitem(registry._MODELS, 'panns_cnn6', spec_with_url('panns_cnn6', 'http://127.0.0.1:9/x'))
    data = hostile_pickle(tmp_path)
    with open(os.path.join(cache.cache_dir(), 'panns_cnn6.pdparams'), 'wb') as f:
        f.write(data + b'\0' * (cfg.size_range[0] - len(data)))  # the size the check expects
    with pytest.raises(UnsafeCheckpointError, match='Delete'):
        Module('panns_cnn6', task=None)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize('model', ['panns_cnn6', 'efficientat_mn04'])
@pytest.mark.parametrize('name', ['hostile.pth', 'hostile_legacy.pth'])
def test_hostile_torch_checkpoint_given_as_load_checkpoint(tmp_path, monkeypatch, name, model):
    """The converter refuses these (tests/test_converter.py); Module must not run them either, and
    says why: read as the PyTorch files they are, their pickle asks for os.system."""
    monkeypatch.chdir(tmp_path)  # where their command would create converter_hostile_marker
    with pytest.raises(UnsafeCheckpointError, match=r'refused.*(posix|nt)\.system.*could run code') as info:
        Module(model, task=None, load_checkpoint=os.path.join(TORCH_DATA, name))
    assert name in str(info.value)
    assert os.listdir(tmp_path) == []


EFFICIENTAT_PT = os.path.join(ROOT, 'tests', 'data', 'efficientat', 'tiny_mn.pt')
OTHER_FAMILY = [
    # (PyTorch file, Module arguments, what the message says): read, then refused by the family's filter
    (EFFICIENTAT_PT, dict(name='panns_cnn6', task=None), 'another model'),
    (os.path.join(TORCH_DATA, 'tiny_cnn6.pth'), dict(name='efficientat_mn04', task=None), 'another model family'),
    (EFFICIENTAT_PT, dict(name='cpmobile', num_class=2), 'another model family'),
    # The example: a (small) CNN14 file is read and found to be made for other features.
    (os.path.join(TORCH_DATA, 'tiny_cnn14.pth'), dict(name='panns_cnn14', task=None), 'other front-end settings'),
    # Same family, other size: the first tensors that do not fit are named.
    (EFFICIENTAT_PT, dict(name='efficientat_mn04', task=None), 'does not fit efficientat_mn04'),
]


@pytest.mark.parametrize('path, kwargs, says', OTHER_FAMILY,
                         ids=[f'{os.path.basename(p)}-{k["name"]}' for p, k, _ in OTHER_FAMILY])
def test_torch_checkpoint_of_another_model(path, kwargs, says):
    with pytest.raises(CheckpointError) as info:
        Module(load_checkpoint=path, **kwargs)
    assert path in str(info.value) and says in str(info.value)


@pytest.mark.parametrize('keep', CUTS)
@pytest.mark.parametrize('name', ['tiny_cnn14.pth', 'tiny_cnn14_legacy.pth'])
def test_truncated_torch_checkpoint_is_named(tmp_path, name, keep):
    path = cut(os.path.join(TORCH_DATA, name), tmp_path / name, keep)
    with pytest.raises(CheckpointError) as info:
        Module('panns_cnn14', task=None, load_checkpoint=path)
    message = str(info.value)
    assert path in message and 'damaged' in message
    if keep not in (0, 2):  # long enough to be told a PyTorch file: its own reader says what is wrong
        assert 'is damaged or incomplete' in message and 'download it again' in message


def test_damaged_torch_weights_in_the_cache_say_to_delete_them(tmp_path, monkeypatch):
    import dataclasses
    url = 'http://127.0.0.1:9/mn04_as_mAP_432.pt'  # never asked: the file is in the cache
    spec = registry.get_spec('efficientat_mn04')
    cached = os.path.join(cache.cache_dir(), spec.weights.filename)
    cut(EFFICIENTAT_PT, cached, 0.5)
    monkeypatch.setitem(registry._MODELS, 'efficientat_mn04', dataclasses.replace(
        spec, weights=dataclasses.replace(spec.weights, url=url, size_range=None)))
    with pytest.raises(CheckpointError) as info:
        Module('efficientat_mn04', task=None)
    message = str(info.value)
    assert 'is damaged or incomplete' in message and f'Delete {cached} and run again' in message and url in message


# ----- the trainer's own checkpoints -----

@pytest.fixture
def run_dir(tmp_path, saved):
    """A checkpoint_dir whose last complete epoch, epoch_1, holds the files the trainer writes."""
    import soundfile as sf
    data = tmp_path / 'data'
    for label in ('cat', 'dog'):
        (data / label).mkdir(parents=True)
        for i in range(2):
            sf.write(str(data / label / f'{i}.wav'), np.random.default_rng(i).standard_normal(16000) * 0.1, 16000)
    ckpt = tmp_path / 'ckpt'
    module = Module('panns_cnn6', load_checkpoint=str(saved / 'cnn6_2class'))
    optimizer = paddle.optimizer.Adam(parameters=module.parameters())
    dataset = AudioFolder(data, duration=0.5)
    Trainer(module, optimizer, checkpoint_dir=str(ckpt), use_vdl=False).train(dataset, epochs=1, batch_size=4)
    assert sorted(os.listdir(ckpt / 'epoch_1')) == ['meta.json', 'model.pdopt', 'model.pdparams', 'trainer.json']
    return ckpt, module, dataset


def resume(run_dir):
    ckpt, module, dataset = run_dir
    optimizer = paddle.optimizer.Adam(parameters=module.parameters())
    return Trainer(module, optimizer, checkpoint_dir=str(ckpt), use_vdl=False).train(dataset, epochs=2, batch_size=4)


def test_hostile_file_in_a_checkpoint_dir_never_runs(run_dir, tmp_path):
    ckpt = run_dir[0]
    (ckpt / 'epoch_1' / 'model.pdparams').write_bytes(hostile_pickle(tmp_path))
    with pytest.raises(CheckpointError):
        resume(run_dir)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize('name', ['model.pdparams', 'model.pdopt'])
def test_truncated_file_in_a_checkpoint_dir_is_named(run_dir, name):
    ckpt = run_dir[0]
    path = ckpt / 'epoch_1' / name
    cut(path, path, 0.5)
    with pytest.raises(CheckpointError, match=str(path)):
        resume(run_dir)


class _Crash(BaseException):
    """Stands for the process dying at this point."""


def test_crash_between_the_two_renames_without_atomic_exchange(saved, tmp_path, monkeypatch):
    """Where directories cannot be exchanged in one step, replace_dir renames the old one to
    `.old` first: a crash before the new one is renamed into place leaves only `.old`, which
    loading and the next save both use."""
    target = tmp_path / 'best_model'
    shutil.copytree(saved / 'cnn6_2class', target)
    before = Module('panns_cnn6', load_checkpoint=str(target))
    monkeypatch.setattr(fileio, '_exchange', lambda a, b: False)
    real_replace = os.replace

    def replace(src, dst):
        if os.fspath(dst) == str(target):  # target -> target.old is done; the new one is not in place
            raise _Crash()
        return real_replace(src, dst)
    other = small_module(label_map=['cat', 'dog'])
    monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(_Crash):
        other.save(str(target))
    monkeypatch.setattr(os, 'replace', real_replace)
    assert not target.exists() and (tmp_path / 'best_model.old').is_dir()
    restored = Module('panns_cnn6', load_checkpoint=str(target))  # read from best_model.old
    for key, value in before.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key].numpy(), value.numpy())
    other.save(str(target))
    assert sorted(os.listdir(tmp_path)) == ['best_model']
    np.testing.assert_array_equal(Module('panns_cnn6', load_checkpoint=str(target)).fc.weight.numpy(),
                                  other.fc.weight.numpy())
