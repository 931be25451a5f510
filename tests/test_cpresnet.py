"""CP-ResNet against recordings of CPJKU's own PyTorch code (tests/data/make_cpresnet_reference.py:
the DCASE 2022 network at half width with seeded weights, plain and with the DCASE 2020 code's
frequency-damped convolutions, on the DCASE 2023 teachers' front end): front end, outputs,
parameter counts and kernels of the full-width networks for every rho, the checkpoint layouts,
the receptive field measured by gradients, and the export. Neither PyTorch nor CPJKU's code is
needed here."""
import dataclasses
import json
import os
from functools import partial

import numpy as np
import paddle
import pytest

from paddle_soundcls import Module
from paddle_soundcls.checkpoints.files import save_pdparams
from paddle_soundcls.errors import ArgumentError, CheckpointError, NoHeadError
from paddle_soundcls.features import LogMel, mel
from paddle_soundcls.models import registry
from paddle_soundcls.models.builder import torch_bn_name
from paddle_soundcls.models.cpresnet import (
    CPRESNET_FRONTEND, FRAME_GEOMETRY, TEACHER, CPResNet, DampedConv2D, build, checkpoint_filter,
    classifier_from_feed_forward, damping_mask, kernel_sizes, receptive_field)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'cpresnet')
MODELS = ['cpresnet', 'cpresnet_damped']
with open(os.path.join(DATA, 'reference.json')) as _f:
    META = json.load(_f)
# The recorded networks: the teacher's settings at half width (base 16, 18 channels cut from stage 3).
FIXTURE = dict(TEACHER, base_channels=META['fixture']['base_channels'],
               cut_channels_s3=META['fixture']['cut_channels_s3'])
CLASSES = META['fixture']['n_classes']


def fixture_arch(name):
    return dict(FIXTURE, damped=name == 'cpresnet_damped')


@pytest.fixture(scope='module')
def ref():
    with np.load(os.path.join(DATA, 'reference.npz')) as f:
        return dict(f)


def torch_state(name):
    with np.load(os.path.join(DATA, f'{name}.npz')) as f:
        return dict(f)


def loaded(name):
    """Our network at the fixture's settings with the recorded weights, through checkpoint_filter."""
    arch = fixture_arch(name)
    state = checkpoint_filter(torch_state(name), f'{name}.npz', arch=arch)
    assert sorted(k for k in state if k.startswith('feed_forward.')) == [
        'feed_forward.0.weight', 'feed_forward.1._mean', 'feed_forward.1._variance', 'feed_forward.1.bias',
        'feed_forward.1.weight']
    model = CPResNet(**arch)
    missing, unexpected = model.set_state_dict(
        {k: v.astype(np.float32) for k, v in state.items() if not k.startswith('feed_forward.')})
    assert missing == [] and unexpected == []
    model.eval()
    return model


def trainable(layer):
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if not p.stop_gradient)


def head_logits(name, embedding):
    head = classifier_from_feed_forward(torch_state(name))
    return embedding @ head['fc.weight'] + head['fc.bias']


# --- front end --------------------------------------------------------------------------------

def test_frontend_matches_the_teachers_augment_mel_stft(ref):
    waves = ref['waves'].astype(np.float32) / 32768
    assert ref['features'].shape == (2, CPRESNET_FRONTEND.num_frames(waves.shape[1]), 256) == (2, 32, 256)
    ours = np.stack([mel.logmel(w, CPRESNET_FRONTEND) for w in waves])      # the Paddle-free runtime's
    np.testing.assert_allclose(ours, ref['features'], atol=1e-4)
    on_device = LogMel(CPRESNET_FRONTEND)(paddle.to_tensor(waves)).numpy()  # the Module's
    np.testing.assert_allclose(on_device, ref['features'], atol=1e-4)
    # fmax=None with a 1 kHz fmax augmentation range: 16 kHz - 500 Hz in evaluation mode.
    mel_settings = META['mel']
    assert CPRESNET_FRONTEND.f_max == mel_settings['sr'] // 2 - mel_settings['fmax_aug_range'] // 2
    assert (CPRESNET_FRONTEND.n_fft, CPRESNET_FRONTEND.win_length, CPRESNET_FRONTEND.hop_length) == (
        mel_settings['n_fft'], mel_settings['win_length'], mel_settings['hopsize'])


# --- the network against the recordings ---------------------------------------------------------

@pytest.mark.parametrize('name', MODELS)
def test_outputs_match_upstream(name, ref):
    model = loaded(name)
    x = paddle.to_tensor(ref['features'])
    with paddle.no_grad():
        embedding = model.forward_features(x).numpy()
        frames = model.forward_frames(x).numpy()
    assert embedding.shape == (2, model.emb_size) == (2, 46)
    np.testing.assert_allclose(embedding, ref[f'embedding_{name}'], atol=1e-4)
    assert frames.shape == ref[f'frames_{name}'].shape == (2, 7, 46)
    np.testing.assert_allclose(frames, ref[f'frames_{name}'], atol=1e-4)
    np.testing.assert_allclose(head_logits(name, embedding), ref[f'logits_{name}'], atol=1e-4)
    # The two clips differ, so the comparison is not of a constant.
    assert np.abs(ref[f'logits_{name}'][0] - ref[f'logits_{name}'][1]).max() > 0.1


def test_damping_changes_the_outputs(ref):
    """The damped recording's weights in the plain network give other logits: the damping is computed."""
    arch = fixture_arch('cpresnet')
    state = checkpoint_filter(torch_state('cpresnet_damped'), 'damped.npz', arch=arch)
    plain = CPResNet(**arch)
    plain.set_state_dict({k: v.astype(np.float32) for k, v in state.items() if not k.startswith('feed_forward.')})
    plain.eval()
    with paddle.no_grad():
        embedding = plain.forward_features(paddle.to_tensor(ref['features'])).numpy()
    assert np.abs(head_logits('cpresnet_damped', embedding) - ref['logits_cpresnet_damped']).max() > 0.05


@pytest.mark.parametrize('name', MODELS)
def test_module_gives_upstream_logits(name, ref, tmp_path, monkeypatch):
    """CPJKU's PyTorch state dict (its names, its classifier folded into the Module's head by
    classifier_from_feed_forward) loaded by Module(load_checkpoint=...): the original's logits."""
    spec = registry.get_spec(name)
    arch = fixture_arch(name)
    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(
        spec, build=partial(build, arch), emb_size=46, checkpoint_filter=partial(checkpoint_filter, arch=arch)))
    state = torch_state(name)
    path = str(tmp_path / 'upstream.pdparams')
    save_pdparams({**state, **classifier_from_feed_forward(state)}, path)
    module = Module(name, num_class=CLASSES, load_checkpoint=path)
    with paddle.no_grad():
        logits = module(paddle.to_tensor(ref['features'])).numpy()
    np.testing.assert_allclose(logits, ref[f'logits_{name}'], atol=1e-4)


@pytest.mark.parametrize('name', MODELS)
def test_batch_independence(name, ref):
    model = loaded(name)
    x = np.concatenate([ref['features'], ref['features'][::-1] * 0.5 - 0.3])
    with paddle.no_grad():
        batch = model.forward_frames(paddle.to_tensor(x)).numpy()
        single = np.concatenate([model.forward_frames(paddle.to_tensor(x[i:i + 1])).numpy() for i in range(len(x))])
    np.testing.assert_allclose(batch, single, atol=1e-5)


# --- sizes: the full-width networks against CPJKU's code -----------------------------------------

@pytest.mark.parametrize('name', MODELS)
def test_parameter_count_matches_upstream(name):
    counts = META['params_full_width']
    spec = registry.get_spec(name)
    backbone = spec.build(audioset_head=False)
    assert trainable(backbone) == counts[f'{name}_backbone'] == 126744
    # Theirs has its 10-class classifier (1x1 conv 92 -> 10 without bias + BatchNorm(10): 940); ours a Linear (930).
    assert counts[name] - counts[f'{name}_backbone'] == 92 * 10 + 2 * 10
    module = Module(name, num_class=10, pretrained=False)
    assert trainable(module) == counts[f'{name}_backbone'] + 92 * 10 + 10
    # The DCASE 2023 teachers' get_model() builds this network.
    assert counts['cpresnet_teacher_2023'] == counts['cpresnet']
    assert spec.emb_size == backbone.emb_size == 92


def test_macs_match_the_dcase_count():
    """The package's complexity report against torchinfo on CPJKU's network (the DCASE organisers' count,
    helpers/nessi.py), for 1 s: the same but for the head. Theirs applies its 1x1 conv classifier at
    every position of the 15 x 10 map before averaging (and counts its BatchNorm); ours averages
    first, then one Linear with bias."""
    from paddle_soundcls.analysis.complexity import complexity
    nessi = META['nessi_1s']
    report = complexity('cpresnet', seconds=(1,))
    assert report['clips'][0]['frames'] == nessi['input_size'][3] == 43
    theirs_head = 92 * 10 * 15 * 10 + 2 * 10
    ours_head = 92 * 10 + 10
    assert report['clips'][0]['macs'] - ours_head + theirs_head == nessi['macs'] == 28840396
    assert report['params']['backbone'] + 92 * 10 + 2 * 10 == nessi['params']
    assert report['macs_per_second'] < 30e6 and nessi['params'] <= 128_000   # within the DCASE 2022/2023 limits


@pytest.mark.parametrize('rho', sorted(int(r) for r in META['conv_kernels_by_rho']))
def test_kernels_for_every_rho_match_upstream(rho):
    """CPJKU's get_model(rho=...) at full width: every convolution's weight shape, ours the same."""
    expected = {k: v for k, v in META['conv_kernels_by_rho'][str(rho)].items() if not k.startswith('feed_forward.')}
    model = CPResNet(**dict(TEACHER, rho=rho))
    ours = {torch_bn_name(k): list(v.shape) for k, v in model.state_dict().items()
            if len(v.shape) == 4}
    assert ours == expected


def test_kernel_schedule():
    """In network order from stage 1's second block, the n-th convolution is 3x3 from rho = n + 2 on."""
    order = [(1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    for rho in range(0, 14):
        kernels = [k for stage, block in order for k in kernel_sizes(rho, stage, block)]
        assert kernels == [3 if rho >= n + 2 else 1 for n in range(10)]
        assert kernel_sizes(rho, 1, 1) == (3, 1)
        assert kernel_sizes(rho, 1, 3) == (1, 1)   # beyond the schedule: 1x1 (the DCASE 2023 code's default)


# --- receptive field and damping ----------------------------------------------------------------

def gradient_extent(model, frames, n_mels=256):
    """(mel bins, frames) of input on which one central unit of the last feature map depends."""
    x = paddle.to_tensor(np.random.default_rng(1).uniform(0.5, 1.5, (1, frames, n_mels)).astype("float32"))
    x.stop_gradient = False
    fmap = model.feature_map(x)
    fmap[0, :, fmap.shape[2] // 2, fmap.shape[3] // 2].sum().backward()
    grad = np.abs(x.grad.numpy()[0])            # [frames, mel bins]
    used_frames = np.nonzero(grad.sum(axis=1))[0]
    used_bins = np.nonzero(grad.sum(axis=0))[0]
    return used_bins[-1] - used_bins[0] + 1, used_frames[-1] - used_frames[0] + 1


@pytest.mark.parametrize('rho, damped, expected', [(8, False, (155, 55)), (4, False, (91, 39)), (8, True, (155, 55)),
                                                   (2, False, (43, 23))])
def test_receptive_field(rho, damped, expected):
    assert receptive_field(rho) == expected
    paddle.seed(0)
    model = CPResNet(**dict(TEACHER, rho=rho, damped=damped))
    # Fixup zeroes every block's second conv, which would cut the main path: give every weight a value.
    for p in model.parameters():
        if len(p.shape) == 4:
            p.set_value(paddle.rand(p.shape) + 0.1)
    # A max pooling passes gradient to one input of its window only, which one depending on the input:
    # average poolings of the same windows measure the field of the layout itself.
    for name, layer in list(model.stage1.named_children()):
        if isinstance(layer, paddle.nn.MaxPool2D):
            window = (2, 2) if name == 'maxpool0_0' else (2, 1)
            model.stage1._sub_layers[name] = paddle.nn.AvgPool2D(window, window)
    model.eval()
    assert model.receptive_field == expected
    assert gradient_extent(model, 200, n_mels=320) == expected


def test_damping_mask():
    """The DCASE 2020 code's Conv2dDamped: linear from 1 at the centre row to 0.01 at the ends, over
    frequency (the kernel's height) only."""
    np.testing.assert_allclose(damping_mask(3)[0, 0, :, 0], [0.01, 1.0, 0.01], rtol=1e-6)
    np.testing.assert_allclose(damping_mask(5)[0, 0, :, 0], [0.01, 0.505, 1.0, 0.505, 0.01], rtol=1e-6)
    np.testing.assert_array_equal(damping_mask(1), np.ones((1, 1, 1, 1)))
    # A damped conv equals a plain one holding the damped weight.
    paddle.seed(1)
    damped = DampedConv2D(2, 3, 3, padding=1, groups=1)
    plain = paddle.nn.Conv2D(2, 3, 3, padding=1, bias_attr=False)
    plain.weight.set_value(damped.weight * paddle.to_tensor(damping_mask(3)))
    x = paddle.rand([2, 2, 9, 7])
    np.testing.assert_allclose(damped(x).numpy(), plain(x).numpy(), atol=1e-6)
    assert list(damped.state_dict()) == ['weight']     # the mask is no parameter, as in the original


def test_fixup_initialisation():
    """The original's initialisation: each block's second conv starts at zero, the first from
    N(0, 2 / (k * k * out) / blocks), in_c He-normal over its fan-in."""
    paddle.seed(0)
    model = CPResNet()
    state = model.state_dict()
    assert all(not state[k].numpy().any() for k in state if k.endswith('conv2.weight'))
    w = state['stage3.block1.conv1.weight'].numpy()      # 3x3, 92 outputs, 4 blocks
    assert abs(w.std() - np.sqrt(2.0 / (9 * 92) / 4)) < 0.05 * np.sqrt(2.0 / (9 * 92) / 4)
    assert abs(state['in_c.0.weight'].numpy().std() - np.sqrt(2.0 / 25)) < 0.1 * np.sqrt(2.0 / 25)


# --- registry, checkpoints, errors ----------------------------------------------------------------

@pytest.mark.parametrize('name', MODELS)
def test_registered_spec(name):
    spec = registry.get_spec(name)
    assert spec.weights is None and spec.frontend == CPRESNET_FRONTEND and spec.frame_geometry == FRAME_GEOMETRY
    assert (FRAME_GEOMETRY.stride, FRAME_GEOMETRY.offset) == (4, 2.0)
    model = spec.build(audioset_head=False)
    assert model.damped == (name == 'cpresnet_damped')
    assert any(isinstance(s, DampedConv2D) for s in model.sublayers()) == model.damped
    model.eval()
    x = paddle.zeros([1, CPRESNET_FRONTEND.num_frames(32000), 256])    # 1 s: 43 frames
    with paddle.no_grad():
        assert list(model.feature_map(x).shape) == [1, 92, 15, 10]
    shortest = paddle.zeros([1, CPRESNET_FRONTEND.num_frames(int(spec.min_seconds * 32000)), 256])
    with paddle.no_grad():
        assert model.forward_frames(shortest).shape[1] >= 1


def test_checkpoint_layouts():
    paddle.seed(3)
    ours = {k: v.numpy() for k, v in CPResNet().state_dict().items()}
    spec = registry.get_spec('cpresnet')
    # Our own layout, as it is.
    out = spec.checkpoint_filter(ours, 'ours.pdparams')
    assert set(out) == set(ours)
    # CPJKU's: PyTorch BatchNorm names, inside the DCASE 2022 Lightning module beside a PaSST teacher.
    torch_layout = {torch_bn_name(k): v for k, v in ours.items()}
    torch_layout['in_c.1.num_batches_tracked'] = np.array(7, dtype=np.int64)
    torch_layout['feed_forward.0.weight'] = np.zeros((10, 92, 1, 1), np.float32)
    lightning = {'net.' + k: v for k, v in torch_layout.items()}
    lightning['teacher_net.cls_token'] = np.zeros((1, 1, 768), np.float32)
    for state in (torch_layout, lightning, {'model.' + k: v for k, v in torch_layout.items()}):
        out = spec.checkpoint_filter(state, 'upstream.ckpt')
        assert set(out) == set(ours) | {'feed_forward.0.weight'}
        for name, value in ours.items():
            np.testing.assert_array_equal(out[name], value)
    with pytest.raises(CheckpointError, match=r"other\.pdparams: 'stages\.s1\.b1\.block\.0\.0\.weight' is not a "
                                              r"parameter of a CP-ResNet"):
        spec.checkpoint_filter({'stages.s1.b1.block.0.0.weight': np.zeros((8, 1, 1, 1))}, 'other.pdparams')
    deeper = dict(torch_layout, **{'stage1.block3.conv1.weight': np.zeros((32, 32, 1, 1), np.float32)})
    with pytest.raises(CheckpointError, match=r"deep\.pt: 'stage1\.block3\.conv1\.weight' is not a parameter of this "
                                              r"CP-ResNet \(rho 8, blocks \(2, 1, 1\)\)"):
        spec.checkpoint_filter(deeper, 'deep.pt')
    with pytest.raises(CheckpointError, match='no complete feed_forward classifier'):
        classifier_from_feed_forward(torch_layout)


def test_no_pretrained_weights_and_no_tagging_head():
    with pytest.raises(ValueError, match='cpresnet has no pretrained weights; pass pretrained=False'):
        Module('cpresnet', num_class=3)
    with pytest.raises(ValueError, match='no AudioSet tagging head'):
        Module('cpresnet_damped', task='tagging', pretrained=False)
    with pytest.raises(ArgumentError, match='no AudioSet head'):
        build(TEACHER, audioset_head=True)
    with pytest.raises(NoHeadError, match='no AudioSet head'):
        build(TEACHER).forward_head(paddle.zeros([1, 92]))


@pytest.mark.parametrize('settings, message', [
    (dict(n_blocks=(0, 1, 1)), 'n_blocks must be three block counts'),
    (dict(n_blocks=(2, 1)), 'n_blocks must be three block counts'),
    (dict(cut_channels_s3=128), r'stage channels \[32, 64, 0\]'),
    (dict(channels_multiplier=1.5), 'positive whole numbers'),
    (dict(groups=(1, 3, 1)), r'groups \(1, 3, 1\) must divide'),
])
def test_settings_errors(settings, message):
    with pytest.raises(ArgumentError, match=message):
        CPResNet(**dict(TEACHER, **settings))


def test_stage3_may_be_removed():
    model = CPResNet(**dict(TEACHER, n_blocks=(2, 1, 0)))
    assert model.emb_size == 64
    with paddle.no_grad():
        assert list(model.forward_features(paddle.zeros([2, 43, 256])).shape) == [2, 64]


# --- export ---------------------------------------------------------------------------------------

class _Scene(paddle.nn.Layer):
    """Backbone + the original's classifier folded into a Linear: features -> logits."""

    def __init__(self, name):
        super().__init__()
        self.backbone = loaded(name)
        head = classifier_from_feed_forward(torch_state(name))
        self.fc = paddle.nn.Linear(*head['fc.weight'].shape)
        self.fc.weight.set_value(head['fc.weight'])
        self.fc.bias.set_value(head['fc.bias'])

    def forward(self, features):
        return self.fc(self.backbone.forward_features(features))


def test_export_parity(tmp_path, ref):
    """paddle.jit.save + paddle2onnx (the package's export path) of the damped network, whose damping
    is computed in the graph: Paddle Inference and onnxruntime give the original's logits, at other
    batch sizes and clip lengths too."""
    import onnxruntime as ort
    from paddle_soundcls.export.onnx import convert
    from paddle_soundcls.export.static import save_static
    net = _Scene('cpresnet_damped')
    net.eval()
    save_static(net, 256, str(tmp_path))
    session = ort.InferenceSession(convert(str(tmp_path)).SerializeToString(), providers=['CPUExecutionProvider'])
    static = paddle.jit.load(str(tmp_path / 'inference'))
    static.eval()
    features = ref['features']
    longer = np.concatenate([features, features[::-1]], axis=1)    # 64 frames: time is dynamic too
    for batch in [features[1:2], features, longer]:
        batch = np.ascontiguousarray(batch)
        with paddle.no_grad():
            expected = net(paddle.to_tensor(batch)).numpy()
            from_static = static(paddle.to_tensor(batch)).numpy()
        np.testing.assert_allclose(from_static, expected, atol=1e-5)
        np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: batch})[0], expected, atol=1e-5)
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: features})[0],
                               ref['logits_cpresnet_damped'], atol=1e-4)


def test_a_damaged_feed_forward_classifier_is_refused_by_name():
    good = torch_state(sorted(n[:-4] for n in os.listdir(DATA) if n.endswith('.npz') and n != 'reference.npz')[0])
    conv = good['feed_forward.0.weight']
    for change, message in (
            ({'feed_forward.0.weight': np.repeat(np.repeat(conv, 3, axis=2), 3, axis=3)}, r'is a 1x1 convolution'),
            ({'feed_forward.1.bias': good['feed_forward.1.bias'][:-1]}, r'feed_forward\.1\.bias has shape'),
            ({'feed_forward.1.running_var': -np.abs(good['feed_forward.1.running_var'])}, r'negative variance')):
        with pytest.raises(CheckpointError, match=message):
            classifier_from_feed_forward({**good, **change})
