"""PyTorch PANNs checkpoint reader and converter, and our backbones against PaddleSpeech's.

The files under tests/data/torch/ were written by real PyTorch (tests/data/make_torch_checkpoints.py);
tests/data/paddlespeech_reference.npz by PaddleSpeech's own model code
(tests/data/make_paddlespeech_reference.py). Neither PyTorch nor PaddleSpeech is needed here.
"""
import collections
import importlib.util
import io
import os
import pickle
import pickletools
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_soundcls.checkpoints import pdparams, torchfile
from paddle_soundcls.checkpoints.files import file_format, read_params, save_pdparams
from paddle_soundcls.checkpoints.torchfile import TorchCheckpointError
from paddle_soundcls.errors import CheckpointError, UnsafeCheckpointError
from paddle_soundcls.features.config import FrontendConfig
from paddle_soundcls.models.panns import (ARCHITECTURES, MEL_KEY, STFT_KEYS, ConversionError, build_backbone,
                                          check_mel_filters, convert_panns_state)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, 'tests', 'data')
TORCH_DATA = os.path.join(DATA, 'torch')
CLI = os.path.join(ROOT, 'tools', 'convert_panns_torch.py')
HOSTILE_MARKER = 'converter_hostile_marker'  # what hostile.pth's pickle would create in the working directory


@pytest.fixture(scope='module')
def ref():
    with np.load(os.path.join(TORCH_DATA, 'reference.npz')) as f:
        return dict(f)


@pytest.fixture(scope='module')
def full_size():
    """Full-size backbones by name, each built once: building CNN14 takes a second or two."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = ARCHITECTURES[arch]()
        return cache[arch]
    return get


def tiny_backbone(ref, arch):
    return build_backbone(arch, [int(c) for c in ref[f'{arch}/channels']], int(ref[f'{arch}/emb_size']),
                          int(ref[f'{arch}/n_mels']))


def tiny_frontend(ref, arch):
    return FrontendConfig(n_mels=int(ref[f'{arch}/n_mels']))


def librosa_melw(sr=32000, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0):
    """torchlibrosa's melW: librosa's filters, transposed to [n_freq, n_mels]."""
    import librosa
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T


def torch_style_state(arch, melw=None):
    """The key list of an official full-size PyTorch checkpoint, as zero arrays that take no memory.

    Built from our backbone in PyTorch's conventions: running_mean / running_var, a
    num_batches_tracked per BatchNorm, Linear weights [out, in], and the front-end buffers.
    """
    layer = build_backbone(arch, lazy=True)
    state = {}
    for key, value in layer.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith('_mean'):
            key = key[:-len('_mean')] + 'running_mean'
            state[key.replace('running_mean', 'num_batches_tracked')] = np.zeros((), np.int64)
        elif key.endswith('_variance'):
            key = key[:-len('_variance')] + 'running_var'
        elif key in ('fc1.weight', 'fc_audioset.weight'):
            shape = shape[::-1]
        state[key] = np.broadcast_to(np.float32(0), shape)
    for key in STFT_KEYS:
        state[key] = np.broadcast_to(np.float32(0), (513, 1, 1024))
    state[MEL_KEY] = librosa_melw() if melw is None else melw
    return state


def write_zip_checkpoint(path, data_pkl, storages=(), byteorder='little'):
    """A zip laid out as torch.save does, with the given data.pkl and storages."""
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('ckpt/data.pkl', data_pkl)
        zf.writestr('ckpt/byteorder', byteorder)
        zf.writestr('ckpt/version', '3\n')
        for key, raw in storages:
            zf.writestr(f'ckpt/data/{key}', raw)
    return path


LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_SYS_INFO = {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {'short': 2, 'int': 4, 'long': 8}}


def write_legacy_checkpoint(path, obj_pkl, keys=(), storages=(), version=1001,
                            sys_info_pkl=pickle.dumps(LEGACY_SYS_INFO, protocol=2)):
    """A file laid out as torch.save(..., _use_new_zipfile_serialization=False) does.

    obj_pkl: the pickle of the saved object; keys: the storage keys as listed after it;
    storages: (element count to write, raw little-endian bytes) for each listed key.
    """
    parts = [pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2), pickle.dumps(version, protocol=2), sys_info_pkl,
             obj_pkl, pickle.dumps(list(keys), protocol=2)]
    for count, raw in storages:
        parts += [count.to_bytes(8, 'little', signed=True), raw]
    with open(path, 'wb') as f:
        f.write(b''.join(parts))
    return path


def pickled_str(text):
    raw = text.encode()
    return b'X' + len(raw).to_bytes(4, 'little') + raw


def pickled_int(value):
    return b'J' + value.to_bytes(4, 'little', signed=True)


def legacy_tensor_ops(key, numel, offset, size, stride, view=None):
    """Pickle opcodes for torch._utils._rebuild_tensor(storage, offset, size, stride) (the name used before
    _rebuild_tensor_v2) of a float32 storage with the legacy persistent id
    ('storage', torch.FloatStorage, key, 'cpu', numel, view)."""
    def ints(values):
        return b'(' + b''.join(pickled_int(v) for v in values) + b't'
    view_ops = b'N'
    if view is not None:
        view_ops = b'(' + pickled_str(view[0]) + pickled_int(view[1]) + pickled_int(view[2]) + b't'
    pid = (b'(' + pickled_str('storage') + b'ctorch\nFloatStorage\n' + pickled_str(key) + pickled_str('cpu')
           + pickled_int(numel) + view_ops + b'tQ')
    return b'ctorch._utils\n_rebuild_tensor\n(' + pid + pickled_int(offset) + ints(size) + ints(stride) + b'tR'


def skip_pickles(stream, count):
    """Move `stream` past its next `count` pickles, without running them."""
    for _ in range(count):
        for _ in pickletools.genops(stream):
            pass


def object_pickle_ops(path):
    """(opcode name, argument) of the pickle of the saved object, read without running it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            name, = [n for n in zf.namelist() if n.endswith('/data.pkl')]
            stream = io.BytesIO(zf.read(name))
    else:
        with open(path, 'rb') as f:
            stream = io.BytesIO(f.read())
        skip_pickles(stream, 3)  # magic number, format version, machine facts
    return [(op.name, arg) for op, arg, _ in pickletools.genops(stream)]


# ---------------------------------------------------------------------------------------- reader

@pytest.mark.parametrize('name', ['tensors.pth', 'tensors_legacy.pth'])
def test_reader_gives_exactly_the_saved_tensors(ref, name):
    tensors = torchfile.load(os.path.join(TORCH_DATA, name))
    expected = {k.split('/', 1)[1]: v for k, v in ref.items() if k.startswith('tensors/')}
    assert list(tensors) == list(expected)
    for name, want in expected.items():
        got = tensors[name]
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags['C_CONTIGUOUS'], name


# The legacy file holds the same state dict as tiny_cnn14.pth, so the same reference applies.
MODEL_FILES = [('cnn14', 'tiny_cnn14.pth'), ('cnn6', 'tiny_cnn6.pth'), ('cnn14', 'tiny_cnn14_legacy.pth')]


@pytest.mark.parametrize('arch, name', MODEL_FILES)
def test_reader_on_model_checkpoints(ref, arch, name):
    state = torchfile.load_state_dict(os.path.join(TORCH_DATA, name))
    keys = [str(k) for k in ref[f'{arch}/keys']]
    assert list(state) == keys
    for key, shape, sums in zip(keys, ref[f'{arch}/shapes'], ref[f'{arch}/sums']):
        got = state[key]
        assert list(got.shape) == [int(s) for s in shape if s >= 0], key
        flat = got.astype(np.float64).ravel()
        got_sums = [flat.sum(), (flat * np.linspace(1.0, 2.0, flat.size)).sum()]
        np.testing.assert_allclose(got_sums, sums, rtol=1e-12, atol=1e-12, err_msg=key)
    assert state['bn0.num_batches_tracked'].dtype == np.int64


@pytest.mark.parametrize('name', ['hostile.pth', 'hostile_legacy.pth'])
def test_reader_refuses_hostile_pickle(tmp_path, monkeypatch, name):
    path = os.path.join(TORCH_DATA, name)
    # The file really is hostile: its pickle calls os.system (pickled as posix.system or nt.system).
    ops = object_pickle_ops(path)
    assert any(op == 'GLOBAL' and arg.split(' ')[1] == 'system' for op, arg in ops)
    assert any(arg == f'touch {HOSTILE_MARKER}' for _, arg in ops)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=name.replace('.', r'\.') + r': refused.*system.*could run code'):
        torchfile.load_state_dict(path)
    assert not (tmp_path / HOSTILE_MARKER).exists()


@pytest.mark.parametrize('legacy', [False, True])
@pytest.mark.parametrize('module, name', [('builtins', 'eval'), ('subprocess', 'check_output'),
                                          ('torch', 'load'), ('numpy.core.multiarray', '_reconstruct')])
def test_reader_refuses_any_other_global(tmp_path, module, name, legacy):
    # GLOBAL module.name, then call it with one string argument.
    data_pkl = b'\x80\x02c' + f'{module}\n{name}\n'.encode() + b'X\x01\x00\x00\x001\x85R.'
    if legacy:
        path = write_legacy_checkpoint(str(tmp_path / 'bad.pth'), data_pkl)
    else:
        path = write_zip_checkpoint(str(tmp_path / 'bad.pth'), data_pkl)
    with pytest.raises(UnsafeCheckpointError, match=f'{module}.{name}'):
        torchfile.load(path)
    if legacy:
        # The pickles before the saved object are held to the same rules.
        path = write_legacy_checkpoint(str(tmp_path / 'bad_header.pth'), b'\x80\x02]q\x00.', sys_info_pkl=data_pkl)
        with pytest.raises(UnsafeCheckpointError, match=f'{module}.{name}'):
            torchfile.load(path)


def test_legacy_reader_reports_truncated_files(tmp_path):
    with open(os.path.join(TORCH_DATA, 'tiny_cnn14_legacy.pth'), 'rb') as f:
        raw = f.read()
    path = str(tmp_path / 'truncated.pth')
    # Where the saved object's pickle and the storage list end: the storages follow.
    stream = io.BytesIO(raw)
    skip_pickles(stream, 4)
    obj_end = stream.tell()
    skip_pickles(stream, 1)
    keys_end = stream.tell()
    # Cut in the saved object's pickle, in the storage list, at or in a storage's count, in its bytes:
    # every one gives the same kind of error, not a crash or a half-read state dict.
    for size in (200, obj_end + 3, keys_end, keys_end + 6, len(raw) // 2, len(raw) - 1):
        with open(path, 'wb') as f:
            f.write(raw[:size])
        with pytest.raises(TorchCheckpointError, match=r'truncated\.pth is damaged or incomplete.*download it again'):
            torchfile.load(path)
    with open(path, 'wb') as f:
        f.write(raw[:len(raw) // 2])
    with pytest.raises(TorchCheckpointError, match=r'storage \d+ has \d+ of its \d+ bytes'):
        torchfile.load(path)


def test_legacy_reader_checks_storages(tmp_path):
    root = np.arange(8, dtype='<f4').tobytes()
    # A tensor on a view of the storage (elements 2..5, as very old files have them) and a strided one.
    obj_pkl = (b'\x80\x02(' + legacy_tensor_ops('r', 8, 1, [2], [2], view=('v', 2, 4))
               + legacy_tensor_ops('r', 8, 0, [4], [2]) + b'l.')
    path = write_legacy_checkpoint(str(tmp_path / 'ok.pth'), obj_pkl, ['r'], [(8, root)])
    on_view, strided = torchfile.load(path)
    np.testing.assert_array_equal(on_view, [3, 5])
    np.testing.assert_array_equal(strided, [0, 2, 4, 6])

    def error_for(keys=('r',), storages=((8, root),), pkl=obj_pkl, version=1001):
        with pytest.raises(TorchCheckpointError) as info:
            torchfile.load(write_legacy_checkpoint(str(tmp_path / 'bad.pth'), pkl, keys, storages, version))
        return str(info.value)

    assert 'storage count mismatch' in error_for(keys=['r', 'x'], storages=[(8, root), (1, root[:4])])
    assert 'storage count mismatch' in error_for(keys=[], storages=[])
    assert 'storage count mismatch' in error_for(keys=['r', 'r'], storages=[(8, root), (8, root)])
    assert 'storage r holds 7 elements, but its tensors expect 8' in error_for(storages=[(7, root)])
    assert 'unknown version 1000' in error_for(version=1000)
    huge = b'\x80\x02' + legacy_tensor_ops('r', 2 ** 30, 0, [1], [1]) + b'.'
    assert 'more than the whole file' in error_for(pkl=huge)
    assert 'is damaged or incomplete (it ends before storage r)' in error_for(storages=[])
    past_end = b'\x80\x02' + legacy_tensor_ops('r', 8, 0, [1], [1], view=('v', 6, 4)) + b'.'
    assert 'bad storage view' in error_for(pkl=past_end)


def test_reader_reports_damaged_files(tmp_path):
    with open(os.path.join(TORCH_DATA, 'tiny_cnn14.pth'), 'rb') as f:
        raw = f.read()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(TorchCheckpointError, match=r'truncated\.pth is damaged or incomplete'):
        torchfile.load(str(truncated))

    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    with pytest.raises(TorchCheckpointError, match='not a PyTorch checkpoint'):
        torchfile.load(str(text))

    plain_pickle = tmp_path / 'plain.pkl'
    plain_pickle.write_bytes(pickle.dumps({'fc1.bias': [1.0]}, protocol=2))
    with pytest.raises(TorchCheckpointError, match='not a PyTorch checkpoint'):
        torchfile.load(str(plain_pickle))

    plain_zip = tmp_path / 'plain.pth'
    with zipfile.ZipFile(plain_zip, 'w') as zf:
        zf.writestr('readme.txt', 'hello')
    with pytest.raises(TorchCheckpointError, match='not a PyTorch checkpoint'):
        torchfile.load(str(plain_zip))

    with pytest.raises(TorchCheckpointError, match='cannot read'):
        torchfile.load(str(tmp_path / 'missing.pth'))


def test_reader_checks_storage_sizes_and_layouts(tmp_path):
    # A pickle naming storage '0' as 4 floats while the entry holds 3.
    pid = b'(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ'
    data_pkl = (b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(' + pid
                + b'K\x00K\x04\x85K\x01\x85\x89)tR.')
    path = write_zip_checkpoint(str(tmp_path / 'short.pth'), data_pkl, [('0', np.zeros(3, '<f4').tobytes())])
    with pytest.raises(TorchCheckpointError, match='holds 12 bytes'):
        torchfile.load(path)
    path = write_zip_checkpoint(str(tmp_path / 'ok.pth'), data_pkl, [('0', np.arange(4, dtype='<f4').tobytes())])
    np.testing.assert_array_equal(torchfile.load(path), np.arange(4, dtype=np.float32))
    path = write_zip_checkpoint(str(tmp_path / 'big.pth'), data_pkl, [('0', np.arange(4, dtype='>f4').tobytes())],
                                byteorder='big')
    np.testing.assert_array_equal(torchfile.load(path), np.arange(4, dtype=np.float32))

    # Strides that would read past the storage are refused, not followed.
    storage = torchfile._Storage(np.arange(6, dtype=np.float32), bfloat16=False)
    with pytest.raises(TorchCheckpointError, match='past the end'):
        torchfile._rebuild_tensor(storage, 0, (2, 3), (3, 2))
    with pytest.raises(TorchCheckpointError, match='past the end'):
        torchfile._rebuild_tensor(storage, 4, (3,), (1,))


# ------------------------------------------------------------------------------------- converter

@pytest.mark.parametrize('arch, name', MODEL_FILES)
def test_converted_weights_reproduce_pytorch(ref, arch, name):
    torch_state = torchfile.load_state_dict(os.path.join(TORCH_DATA, name))
    model = tiny_backbone(ref, arch)
    state = convert_panns_state(torch_state, model, tiny_frontend(ref, arch))
    assert list(state) == list(model.state_dict())
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected
    # Linear weights arrive transposed, BatchNorm statistics under Paddle's names.
    np.testing.assert_array_equal(state['fc_audioset.weight'], torch_state['fc_audioset.weight'].T)
    np.testing.assert_array_equal(state['bn0._variance'], torch_state['bn0.running_var'])

    model.eval()
    with paddle.no_grad():
        embedding = model.forward_features(paddle.to_tensor(ref[f'{arch}/features'])[:, 0])  # [batch, 1, frames, mels]
        clipwise = F.sigmoid(model.fc_audioset(embedding))
    assert float(ref[f'{arch}/embedding'].max()) > 0.1  # the comparison is not of zeros
    np.testing.assert_allclose(embedding.numpy(), ref[f'{arch}/embedding'], atol=1e-4, rtol=0)
    np.testing.assert_allclose(clipwise.numpy(), ref[f'{arch}/clipwise'], atol=1e-4, rtol=0)


def test_converter_names_unknown_missing_and_misshapen_keys(ref):
    torch_state = torchfile.load_state_dict(os.path.join(TORCH_DATA, 'tiny_cnn14.pth'))
    model, frontend = tiny_backbone(ref, 'cnn14'), tiny_frontend(ref, 'cnn14')

    def error_for(state):
        with pytest.raises(ConversionError) as info:
            convert_panns_state(state, model, frontend, source='tiny_cnn14.pth')
        return str(info.value)

    extra = dict(torch_state, **{'att_block.att.weight': np.zeros(3, np.float32)})
    assert "unknown keys ['att_block.att.weight']" in error_for(extra)
    stray_counter = dict(torch_state, **{'conv_block9.bn1.num_batches_tracked': np.zeros((), np.int64)})
    assert 'conv_block9.bn1.num_batches_tracked' in error_for(stray_counter)
    missing = {k: v for k, v in torch_state.items() if k != 'conv_block2.bn1.running_var'}
    assert "missing keys ['conv_block2.bn1.running_var']" in error_for(missing)
    misshapen = dict(torch_state, **{'fc1.weight': torch_state['fc1.weight'].T})
    assert 'fc1.weight is [8, 4], expected [4, 8]' in error_for(misshapen)
    # The real checkpoints give a different architecture away by missing and misshapen keys.
    message = error_for(torchfile.load_state_dict(os.path.join(TORCH_DATA, 'tiny_cnn6.pth')))
    assert 'conv_block1.conv2.weight' in message and 'conv_block1.conv1.weight is [4, 1, 5, 5]' in message


def test_converter_strips_data_parallel_prefix(ref):
    torch_state = torchfile.load_state_dict(os.path.join(TORCH_DATA, 'tiny_cnn6.pth'))
    model = tiny_backbone(ref, 'cnn6')
    plain = convert_panns_state(torch_state, model, tiny_frontend(ref, 'cnn6'))
    prefixed = convert_panns_state({'module.' + k: v for k, v in torch_state.items()}, model,
                                   tiny_frontend(ref, 'cnn6'))
    assert list(plain) == list(prefixed)


def test_mel_filter_check_against_librosa():
    check_mel_filters(librosa_melw())  # the PANNs 32 kHz settings pass
    with pytest.raises(ConversionError, match=r'n_fft 512 and 64 mel bins.*other front-end settings'):
        check_mel_filters(librosa_melw(sr=16000, n_fft=512, fmax=8000))  # the 16 kHz PANNs variants
    with pytest.raises(ConversionError, match=r'differ from ours.*other front-end settings'):
        check_mel_filters(librosa_melw(fmax=16000))
    with pytest.raises(ConversionError, match='16 kHz'):
        convert_panns_state(torch_style_state('cnn10', melw=librosa_melw(sr=16000, n_fft=512, fmax=8000)),
                            'cnn10')


@pytest.mark.parametrize('arch', ['cnn14', 'cnn10', 'cnn6'])
def test_full_size_key_mapping(full_size, arch):
    state = convert_panns_state(torch_style_state(arch), arch)
    model = full_size(arch)
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected
    assert {k: list(v.shape) for k, v in state.items()} == {k: list(v.shape) for k, v in model.state_dict().items()}


def test_converted_file_loads_into_module(tmp_path):
    from paddle_soundcls import Module
    torch_state = torch_style_state('cnn6')
    torch_state['fc_audioset.bias'] = np.linspace(-1, 1, 527, dtype=np.float32)
    torch_state['fc1.weight'] = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)  # [out, in]
    path = save_pdparams(convert_panns_state(torch_state, 'cnn6'), str(tmp_path / 'panns_cnn6.pdparams'))
    assert [p.name for p in tmp_path.iterdir()] == ['panns_cnn6.pdparams']  # no temporary left behind
    module = Module('panns_cnn6', task=None, load_checkpoint=path)
    np.testing.assert_array_equal(module.backbone.fc_audioset.bias.numpy(), torch_state['fc_audioset.bias'])
    np.testing.assert_array_equal(module.backbone.fc1.weight.numpy(), torch_state['fc1.weight'].T)


# ------------------------------------------------------------------ writing files as torch.save does

def torch_save(obj, path, legacy=False):
    """Write `obj` (dicts, OrderedDicts, str, int and numpy arrays) as torch.save would, without PyTorch.

    Arrays become tensors on storages of their own: `_rebuild_tensor_v2(storage, 0, size, stride,
    False, OrderedDict())` with the persistent id ('storage', torch.<Type>Storage, key, 'cpu',
    numel), plus a view of None in the legacy format; the zip format keeps each storage as
    ckpt/data/<key>, the legacy one appends them after the pickles (write_*_checkpoint above).
    """
    storage_types = {np.dtype('float32'): 'FloatStorage', np.dtype('float16'): 'HalfStorage',
                     np.dtype('int64'): 'LongStorage'}
    storages = []

    def ints(values):
        return b'(' + b''.join(pickled_int(int(v)) for v in values) + b't'

    def ops(value):
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value)
            key = str(len(storages))
            storages.append((key, value))
            pid = (b'(' + pickled_str('storage') + f'ctorch\n{storage_types[value.dtype]}\n'.encode()
                   + pickled_str(key) + pickled_str('cpu') + pickled_int(value.size) + (b'N' if legacy else b'')
                   + b'tQ')
            strides = [s // value.itemsize for s in value.strides]
            return (b'ctorch._utils\n_rebuild_tensor_v2\n(' + pid + pickled_int(0) + ints(value.shape) + ints(strides)
                    + b'\x89ccollections\nOrderedDict\n)R' + b'tR')
        if isinstance(value, dict):
            empty = b'ccollections\nOrderedDict\n)R' if isinstance(value, collections.OrderedDict) else b'}'
            return empty + b'(' + b''.join(ops(k) + ops(v) for k, v in value.items()) + b'u'
        if isinstance(value, str):
            return pickled_str(value)
        assert type(value) is int, type(value)
        return pickled_int(value)

    pkl = b'\x80\x02' + ops(obj) + b'.'
    raw = [(key, value.astype(value.dtype.newbyteorder('<')).tobytes()) for key, value in storages]
    if legacy:
        return write_legacy_checkpoint(path, pkl, [k for k, _ in storages], [(v.size, r) for (_, v), (_, r)
                                                                               in zip(storages, raw)])
    return write_zip_checkpoint(path, pkl, raw)


def test_torch_save_writer_is_read_back(tmp_path):
    state = collections.OrderedDict([('a.weight', np.arange(6, dtype=np.float32).reshape(2, 3)),
                                     ('a.num_batches_tracked', np.array(7, np.int64))])
    for legacy, real in ((False, 'tiny_cnn14.pth'), (True, 'tiny_cnn14_legacy.pth')):
        path = torch_save({'model': state, 'iteration': 3}, str(tmp_path / f'w{legacy}.pth'), legacy)
        got = torchfile.load(path)
        assert got['iteration'] == 3 and list(got['model']) == list(state)
        for key, value in state.items():
            assert got['model'][key].dtype == value.dtype
            np.testing.assert_array_equal(got['model'][key], value)
        # It names no global that PyTorch's own file of the same kind does not.
        real_globals = {arg for op, arg in object_pickle_ops(os.path.join(TORCH_DATA, real)) if op == 'GLOBAL'}
        assert {arg for op, arg in object_pickle_ops(path) if op == 'GLOBAL'} <= real_globals


def test_file_format_is_told_by_content_not_name(tmp_path):
    state = {'a.weight': np.arange(4, dtype=np.float32)}
    files = {'paddle.pt': 'pdparams', 'zip.pdparams': 'torch-zip', 'legacy.pdparams': 'torch-legacy',
             'legacy4.bin': 'torch-legacy'}
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(tmp_path / 'paddle.pt'))
    torch_save(state, str(tmp_path / 'zip.pdparams'))
    torch_save(state, str(tmp_path / 'legacy.pdparams'), legacy=True)
    # torch.save(..., pickle_protocol=4): the magic number's pickle is framed.
    raw = (tmp_path / 'legacy.pdparams').read_bytes()
    head = pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)
    (tmp_path / 'legacy4.bin').write_bytes(pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=4) + raw[len(head):])
    for name, fmt in files.items():
        path = str(tmp_path / name)
        assert file_format(path) == fmt, name
        got = read_params(path)
        assert list(got) == list(state) and np.array_equal(np.asarray(got['a.weight']), state['a.weight']), name
    # Neither kind: left to the Paddle reader, whose error names the file.
    for name, data in (('empty.pt', b''), ('text.pt', b'not a checkpoint'), ('PK.pt', b'PK'),
                       ('npy.pt', b'\x93NUMPY\x01\x00')):
        (tmp_path / name).write_bytes(data)
        assert file_format(str(tmp_path / name)) == 'pdparams'
        with pytest.raises(CheckpointError, match=rf'(?s)cannot read checkpoint .*{name}.*damaged'):
            read_params(str(tmp_path / name))


# ------------------------------------------------- release files of registered models, full size

# The layout of the official release files, from our network's structure alone (the reference
# mapping the loaded parameters are checked against): PyTorch's BatchNorm buffers
# running_mean / running_var and a num_batches_tracked counter, Linear weights [out, in].
TORCH_BN = {'_mean': 'running_mean', '_variance': 'running_var'}


def official_torch_layout(backbone):
    """{torch key: (our key, transposed)} for the tensors of `backbone`, and the BatchNorm layers' counters."""
    linear = {f'{name}.weight' for name, sub in backbone.named_sublayers() if isinstance(sub, paddle.nn.Linear)}
    mapping, counters = {}, []
    for key in backbone.state_dict():
        layer, _, attr = key.rpartition('.')
        if attr in TORCH_BN:
            mapping[f'{layer}.{TORCH_BN[attr]}'] = (key, False)
            if attr == '_mean':
                counters.append(f'{layer}.num_batches_tracked')
        else:
            mapping[key] = (key, key in linear)
    return mapping, counters


RELEASES = ['panns_cnn6', 'efficientat_mn04']


@pytest.fixture(scope='module')
def releases(tmp_path_factory):
    """For each model in RELEASES, random weights written as its release file would hold them: in the
    zip and the legacy format, and (as the other way to load them) as a .pdparams in our names."""
    from paddle_soundcls import Module
    base = tmp_path_factory.mktemp('releases')
    rng = np.random.default_rng(0)
    out = {}
    for name in RELEASES:
        module = Module(name, task=None, pretrained=False, seed=1)
        ours = {}
        for key, value in module.backbone.state_dict().items():
            value = value.numpy()
            # Statistics, scales and biases a loader must not mix up: none left at its initial value.
            if key.endswith('_variance'):
                value = rng.uniform(0.5, 1.5, value.shape)
            elif key.endswith(('_mean', '.bias')) or (value.ndim == 1 and key.endswith('.weight')):
                value = value + rng.normal(0, 0.1, value.shape)
            if key.startswith('bn0.'):  # PANNs: bn0 normalises log-mel values, about -40 +- 20 dB
                value = {'_mean': -40.0, '_variance': 400.0}.get(key[4:], 1.0) + rng.normal(0, 0.1, value.shape)
            ours[key] = np.asarray(value, np.float32)
        mapping, counters = official_torch_layout(module.backbone)
        torch_state = collections.OrderedDict((torch_key, ours[key].T.copy() if transposed else ours[key])
                                              for torch_key, (key, transposed) in mapping.items())
        torch_state.update((key, np.array(1234, np.int64)) for key in counters)
        files = {}
        if name.startswith('panns_'):
            # The official files: {'model': state_dict, 'iteration': n}, with the front end's buffers.
            torch_state[MEL_KEY] = librosa_melw().astype(np.float32)
            for key in STFT_KEYS:
                torch_state[key] = np.zeros((513, 1, 1024), np.float32)
            files['zip'] = torch_save({'model': torch_state, 'iteration': 660000}, str(base / f'{name}.pth'))
            files['legacy'] = torch_save({'model': torch_state}, str(base / f'{name}_legacy.pth'), legacy=True)
        else:
            # EfficientAT's: a bare state dict. The legacy one as saved from inside nn.DataParallel.
            files['zip'] = torch_save(torch_state, str(base / f'{name}.pt'))
            files['legacy'] = torch_save(collections.OrderedDict(('module.' + k, v) for k, v in torch_state.items()),
                                         str(base / f'{name}_legacy.pt'), legacy=True)
        files['pdparams'] = str(base / f'{name}.pdparams')
        paddle.save({k: paddle.to_tensor(v) for k, v in ours.items()}, files['pdparams'])
        out[name] = dict(files=files, torch_state=torch_state, mapping=mapping)
    return out


def expected_params(release):
    """What the release file holds in our names, by the reference mapping."""
    return {key: (release['torch_state'][torch_key].T if transposed else release['torch_state'][torch_key])
            for torch_key, (key, transposed) in release['mapping'].items()}


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
@pytest.mark.parametrize('name', RELEASES)
def test_module_loads_release_files(releases, name, layout):
    from paddle_soundcls import Module
    release = releases[name]
    path = release['files'][layout]
    assert file_format(path) == f'torch-{layout}'
    expected = expected_params(release)
    tagger = Module(name, task=None, load_checkpoint=path)
    loaded = tagger.backbone.state_dict()
    assert set(loaded) == set(expected)
    for key, want in expected.items():
        np.testing.assert_array_equal(loaded[key].numpy(), want, err_msg=key)
    classifier = Module(name, num_class=3, load_checkpoint=path)  # the backbone, a new head
    for key, value in classifier.backbone.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=key)


@pytest.mark.parametrize('name', RELEASES)
def test_release_file_predicts_as_the_same_weights_in_paddle(releases, name):
    from paddle_soundcls import Module
    files = releases[name]['files']
    rng = np.random.default_rng(5)
    clips = [0.1 * rng.standard_normal(32000).astype(np.float32),
             np.sin(2 * np.pi * 440 * np.arange(48000) / 32000).astype(np.float32)]
    got = Module(name, task=None, load_checkpoint=files['zip']).predict(clips, sample_rate=32000, engine='dygraph')
    want = Module(name, task=None, load_checkpoint=files['pdparams']).predict(clips, sample_rate=32000,
                                                                             engine='dygraph')
    for g, w in zip(got, want):
        assert list(g) == list(w)
        np.testing.assert_allclose(list(g.values()), list(w.values()), rtol=0, atol=1e-6)
    scores = np.array([list(w.values()) for w in want])
    assert scores.std() > 1e-3 and np.abs(scores[0] - scores[1]).max() > 1e-4  # not a comparison of constants


# ------------------------------------------------------------------------------------------- CLI

def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
@pytest.mark.parametrize('name', RELEASES)
def test_convert_any_registered_model(releases, tmp_path, capsys, name, layout):
    from paddle_soundcls import cli
    release = releases[name]
    src = tmp_path / f'release {layout}.pt'  # a space in the name, as users' paths have
    shutil.copy(release['files'][layout], src)
    out = tmp_path / 'out' / f'{name}.pdparams'
    assert cli.main(['convert', '--input', str(src), '--output', str(out), '--model', name]) == 0
    report = capsys.readouterr().out
    expected = expected_params(release)
    written = pdparams.load_params(str(out))
    assert list(written) == list(releases[name]['mapping'][k][0] for k in releases[name]['mapping'])
    for key, want in expected.items():
        np.testing.assert_array_equal(written[key], want, err_msg=key)
    counters = sum(k.endswith('num_batches_tracked') for k in release['torch_state'])
    assert f'read {len(release["torch_state"])} tensors' in report and f'wrote {len(expected)} tensors' in report
    assert f'dropped {counters} BatchNorm num_batches_tracked counters' in report
    if name.startswith('panns_'):
        assert 'dropped 3 tensors' in report and MEL_KEY in report
    assert f"Module('{name}', task='tagging'" in report


def test_convert_and_load_a_family_without_release_files(tmp_path, capsys):
    """CP-Mobile publishes no weights here, but its filter takes the DCASE baseline's Lightning layout
    (`model.` prefix, its own classifier `feed_forward`): both doors take such a PyTorch file."""
    from paddle_soundcls import cli
    from paddle_soundcls import Module
    source = Module('cpmobile', num_class=2, pretrained=False, seed=2).backbone
    rng = np.random.default_rng(2)
    ours = {k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith('_variance') else v.numpy() + rng.normal(0, 0.1, v.shape))
            .astype(np.float32) for k, v in source.state_dict().items()}
    mapping, counters = official_torch_layout(source)
    torch_state = collections.OrderedDict((f'model.{t}', ours[k]) for t, (k, _) in mapping.items())
    torch_state.update((f'model.{k}', np.array(5, np.int64)) for k in counters)
    torch_state['model.feed_forward.0.weight'] = np.zeros((10, source.emb_size, 1, 1), np.float32)
    torch_state['model.feed_forward.1.bias'] = np.zeros(10, np.float32)
    path = torch_save({'state_dict': torch_state}, str(tmp_path / 'baseline.ckpt'))
    out = str(tmp_path / 'cpmobile.pdparams')
    assert cli.main(['convert', '--input', path, '--output', out, '--model', 'cpmobile']) == 0
    report = capsys.readouterr().out
    assert 'left out 2 tensors cpmobile has no parameter for: feed_forward.0.weight, feed_forward.1.bias' in report
    written = pdparams.load_params(out)
    assert set(written) == set(ours)
    loaded = Module('cpmobile', num_class=10, load_checkpoint=path).backbone.state_dict()
    for key, want in ours.items():
        np.testing.assert_array_equal(written[key], want, err_msg=key)
        np.testing.assert_array_equal(loaded[key].numpy(), want, err_msg=key)


def test_convert_tool_takes_the_old_names(releases, tmp_path):
    """tools/convert_panns_torch.py runs `paddle-soundcls convert`; --model cnn6 still means panns_cnn6."""
    out = tmp_path / 'cnn6.pdparams'
    result = run_cli('--input', releases['panns_cnn6']['files']['legacy'], '--output', str(out), '--model', 'cnn6',
                     cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '--model cnn6 is deprecated; use --model panns_cnn6' in result.stderr
    written = pdparams.load_params(str(out))
    for key, want in expected_params(releases['panns_cnn6']).items():
        np.testing.assert_array_equal(written[key], want, err_msg=key)
    from paddle_soundcls.models.builder import convert_file
    with pytest.warns(FutureWarning, match="'cnn6' is deprecated; use 'panns_cnn6'"):
        convert_file(releases['panns_cnn6']['files']['zip'], str(tmp_path / 'again.pdparams'), 'cnn6')


def test_convert_refuses_files_of_another_model(releases, tmp_path, capsys):
    from paddle_soundcls import cli
    out = tmp_path / 'out.pdparams'
    cases = [(releases['panns_cnn6']['files']['zip'], 'efficientat_mn04', 'another model family'),
             (releases['efficientat_mn04']['files']['zip'], 'panns_cnn6', 'another model'),
             (releases['panns_cnn6']['files']['zip'], 'panns_cnn10', 'another model'),
             (os.path.join(DATA, 'efficientat', 'tiny_mn.pt'), 'efficientat_mn04', 'another model'),
             (releases['efficientat_mn04']['files']['zip'], 'cnn99', 'registered models: ')]
    for path, model, says in cases:
        assert cli.main(['convert', '--input', path, '--output', str(out), '--model', model]) == 2, model
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
        assert model == 'cnn99' or path in err
        assert not out.exists()


def test_cli_fails_clearly(tmp_path):
    out = tmp_path / 'out.pdparams'
    for name in ('hostile.pth', 'hostile_legacy.pth'):
        result = run_cli('--input', os.path.join(TORCH_DATA, name), '--output', str(out), '--model', 'panns_cnn14',
                         cwd=str(tmp_path))
        assert result.returncode == 2 and 'error:' in result.stderr and 'refused' in result.stderr
        assert not out.exists() and not (tmp_path / HOSTILE_MARKER).exists()


# ------------------------------------------------------------------------- PaddleSpeech reference

def _paddlespeech_recorder():
    spec = importlib.util.spec_from_file_location('make_paddlespeech_reference',
                                                  os.path.join(DATA, 'make_paddlespeech_reference.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('arch', ['cnn14', 'cnn10', 'cnn6'])
def test_backbones_match_paddlespeech(full_size, arch):
    recorder = _paddlespeech_recorder()
    with np.load(os.path.join(DATA, 'paddlespeech_reference.npz')) as f:
        want_embedding, want_scores = f[f'{arch}/embedding'], f[f'{arch}/scores']
    model = full_size(arch)
    index = recorder.ARCHS.index(arch)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected = model.set_state_dict(recorder.seeded_weights(shapes, index))
    assert not missing and not unexpected
    model.eval()
    with paddle.no_grad():
        embedding = model.forward_features(paddle.to_tensor(recorder.seeded_features(100 + index))[:, 0])
        scores = F.sigmoid(model.fc_audioset(embedding))
    np.testing.assert_allclose(embedding.numpy(), want_embedding, atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-4, rtol=0)


def test_half_precision_release_files_load_as_the_float32_network(releases, tmp_path):
    """A release file saved in float16 loads (as `convert` takes it), each weight the float32 of its
    half value; a tensor that is not floating point is refused by name, not by Paddle's assertion."""
    from paddle_soundcls import Module
    release = releases['efficientat_mn04']
    half = collections.OrderedDict((k, v.astype(np.float16) if v.dtype == np.float32 else v)
                                   for k, v in release['torch_state'].items())
    path = torch_save(half, str(tmp_path / 'mn04_half.pt'))
    tagger = Module('efficientat_mn04', task=None, load_checkpoint=path)
    loaded = tagger.backbone.state_dict()
    for key in loaded:
        torch_key, transposed = _inverse(release['mapping'], key)
        want = half[torch_key].astype(np.float32)
        np.testing.assert_array_equal(loaded[key].numpy(), want.T if transposed else want, err_msg=key)
    broken = collections.OrderedDict(release['torch_state'])
    first = next(k for k in broken if k.endswith('.weight'))
    broken[first] = np.ones(broken[first].shape, np.int64)
    path = torch_save(broken, str(tmp_path / 'mn04_int.pt'))
    with pytest.raises(CheckpointError, match=f'{re.escape(path)}: tensor .* holds int64 values'):
        Module('efficientat_mn04', task=None, load_checkpoint=path)


def _inverse(mapping, key):
    """(torch key, transposed) of our parameter `key` in a reference mapping."""
    return next((torch_key, transposed) for torch_key, (ours, transposed) in mapping.items() if ours == key)


def test_compressed_storages_are_refused_before_they_are_inflated(tmp_path):
    """torch.save stores storages uncompressed; a deflated one (1 KB claiming 100 MB) is refused unread."""
    pkl = (b'\x80\x02' + b'ctorch._utils\n_rebuild_tensor_v2\n(' + b'(' + pickled_str('storage')
           + b'ctorch\nFloatStorage\n' + pickled_str('0') + pickled_str('cpu') + pickled_int(25_000_000) + b'tQ'
           + pickled_int(0) + b'(' + pickled_int(25_000_000) + b't(' + pickled_int(1) + b't'
           + b'\x89ccollections\nOrderedDict\n)R' + b'tR.')
    path = str(tmp_path / 'bomb.pt')
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('ckpt/data.pkl', pkl)
        zf.writestr('ckpt/byteorder', 'little')
        zf.writestr(zipfile.ZipInfo('ckpt/data/0'), bytes(100_000_000), compress_type=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 200_000
    with pytest.raises(TorchCheckpointError, match='is compressed, which torch.save never does'):
        torchfile.load(path)
