"""The ResNet-on-log-mel family (models/resnet.py): paddle.vision's ResNet-18/34 with a one-channel
stem. Its state dicts, its pretrained download and its refusals; the generic tests of
tests/test_models.py cover forward, both tasks, checkpoint round trips and export."""
import dataclasses
import hashlib
import io
import os
import time

import numpy as np
import paddle
import pytest

import paddle_soundcls.models.resnet as resnet  # registers resnet18_mel and resnet34_mel
from paddle_soundcls import Module, cache
from paddle_soundcls.errors import CheckpointError, DownloadError, NoHeadError
from paddle_soundcls.features.config import FrontendConfig
from paddle_soundcls.models import builder, registry
from paddle_soundcls.models.builder import pretrained_state
from signals import chirp, noise, tone
from test_weights import Server, closed_port

def vision_state(depth=18, seed=0, **kwargs):
    """A state dict of paddle.vision's own ResNet (random weights) as {name: numpy array}."""
    paddle.seed(seed)
    network = {18: paddle.vision.models.resnet18, 34: paddle.vision.models.resnet34}[depth](pretrained=False,
                                                                                          **kwargs)
    return {k: v.numpy() for k, v in network.state_dict().items()}


def pdparams_bytes(state):
    buffer = io.BytesIO()
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def imagenet_like():
    """paddle.vision resnet18's state dict and the .pdparams file paddle.save makes of it, as the
    published ImageNet file is laid out (conv1 with three input channels, a 1000-class fc)."""
    state = vision_state(18)
    return state, pdparams_bytes(state)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def waves():
    return [tone(440, 1.5), noise(1.5, amp=0.2), chirp(300, 3000, 1.5)]


def learnt_parameters(layer):
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if not p.stop_gradient)


# ----- the checkpoint layout: the builder with the family's filter -----

def adapt(state, source, depth=18):
    """A state dict as the builder maps it for resnet{depth}_mel (classifier, first conv, filter)."""
    return builder.backbone_state(registry.get_spec(f'resnet{depth}_mel'), state, source)


def test_filter_reduces_conv1_drops_fc_and_keeps_the_rest(imagenet_like):
    state, _ = imagenet_like
    out = adapt(state, 'resnet18.pdparams')
    np.testing.assert_allclose(out['conv1.weight'], state['conv1.weight'].sum(axis=1, keepdims=True), rtol=1e-6)
    assert out['conv1.weight'].shape == (64, 1, 7, 7)
    assert not any(k.startswith('fc.') for k in out)
    assert set(out) == set(resnet.ResNetOnMel(18).state_dict())
    for key in out:
        if key != 'conv1.weight':
            np.testing.assert_array_equal(out[key], state[key])
    # Our own names and shapes pass unchanged.
    again = adapt(out, 'ours.pdparams')
    assert set(again) == set(out) and all(np.array_equal(again[k], out[k]) for k in out)


def test_filter_refuses_unknown_keys_naming_the_source_and_the_key(imagenet_like):
    state, _ = imagenet_like
    with pytest.raises(CheckpointError, match=r"other\.pdparams: 'head\.weight' is not a parameter of ResNet-18"):
        adapt({**state, 'head.weight': np.zeros(3)}, 'other.pdparams')
    # A deeper network's state dict has blocks ResNet-18 lacks.
    with pytest.raises(CheckpointError, match=r"r34\.pdparams: 'layer1\.2\.conv1\.weight'.*ResNet-18"):
        adapt(vision_state(34), 'r34.pdparams')


def test_one_channel_network_equals_paddle_vision_on_a_grey_image(imagenet_like):
    """The summed conv1 on one channel computes exactly what paddle.vision's RGB network computes
    on the same image in all three channels; the embedding is its global average pool."""
    state, _ = imagenet_like
    ours = resnet.ResNetOnMel(18)
    ours.set_state_dict(adapt(state, 'test'))
    reference = paddle.vision.models.resnet18(num_classes=0, with_pool=True)
    reference.set_state_dict({k: v for k, v in state.items() if not k.startswith('fc.')})
    ours.eval()
    reference.eval()
    features = np.random.default_rng(0).normal(-40, 20, (2, 101, 64)).astype('float32')  # [batch, frames, mel]
    image = (features - resnet.LOGMEL_MEAN_DB) / resnet.LOGMEL_STD_DB
    grey = np.repeat(image.transpose(0, 2, 1)[:, None], 3, axis=1)   # [batch, 3, n_mels, frames]
    with paddle.no_grad():
        expected = reference(paddle.to_tensor(grey)).numpy().reshape(2, 512)
        got = ours.forward_features(paddle.to_tensor(features)).numpy()
        frames = ours.forward_frames(paddle.to_tensor(features)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert frames.shape == (2, 4, 512)   # 101 frames / 32, rounded up by the padded stride-2 layers
    np.testing.assert_allclose(frames.mean(axis=1), got, rtol=1e-5, atol=1e-6)


# ----- the registered models -----

@pytest.mark.parametrize('depth', [18, 34])
def test_parameter_counts_are_paddle_vision_s_minus_fc_and_two_input_channels(depth):
    network = {18: paddle.vision.models.resnet18, 34: paddle.vision.models.resnet34}[depth]()
    fc = 512 * 1000 + 1000
    two_of_three_conv1_channels = 2 * 64 * 7 * 7
    expected = learnt_parameters(network) - fc - two_of_three_conv1_channels
    spec = registry.get_spec(f'resnet{depth}_mel')
    assert learnt_parameters(spec.build()) == expected == spec.published['params']


def test_specs_describe_paddle_vision_s_imagenet_weights():
    for depth in (18, 34):
        spec = registry.get_spec(f'resnet{depth}_mel')
        url, md5 = paddle.vision.models.resnet.model_urls[f'resnet{depth}']
        assert (spec.weights.url, spec.weights.md5, spec.weights.file_format) == (url, md5, 'pdparams')
        assert spec.weights.filename == f'resnet{depth}.pdparams' and spec.weights.license == 'Apache-2.0'
        assert spec.audioset_head is None and spec.family == 'resnet' and spec.emb_size == 512
        assert spec.frontend == FrontendConfig()
        assert 'backbone only' in spec.weights.description and 'ImageNet' in spec.weights.description
        assert (spec.weights.classifier, spec.weights.labels) == ('fc', 'imagenet-1k')
    assert registry.list_models(family='resnet') == ['resnet18_mel', 'resnet34_mel']


@pytest.mark.parametrize('task', ['tagging', None])
def test_tagging_is_refused_clearly(task):
    with pytest.raises(ValueError, match="no AudioSet tagging head.*only its backbone is pretrained.*sound-cls"):
        Module('resnet18_mel', task=task, pretrained=False)
    with pytest.raises(ValueError, match='no AudioSet head'):
        resnet.build(18, audioset_head=True)
    with pytest.raises(NoHeadError, match="no AudioSet head.*task='sound-cls'"):
        resnet.build(18).forward_head(paddle.zeros([1, 512]))


# ----- loading paddle.vision's state dicts -----

def test_module_loads_a_paddle_vision_backbone_and_predicts(tmp_path):
    """A paddle.vision ResNet saved without a classifier (num_classes=0) loads as it is."""
    state = vision_state(18, num_classes=0)
    path = tmp_path / 'resnet18_backbone.pdparams'
    path.write_bytes(pdparams_bytes(state))
    model = Module('resnet18_mel', task='sound-cls', num_class=5, load_checkpoint=str(path))
    np.testing.assert_allclose(model.backbone.conv1.weight.numpy(), state['conv1.weight'].sum(1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_array_equal(model.backbone.layer4[1].bn2._variance.numpy(), state['layer4.1.bn2._variance'])
    results = model.predict(waves(), sample_rate=32000)
    assert len(results) == 3 and all(sorted(r) == ['0', '1', '2', '3', '4'] for r in results)


def test_module_loads_paddle_vision_s_full_state_dict_and_predicts(tmp_path, imagenet_like):
    state, data = imagenet_like
    path = tmp_path / 'resnet18.pdparams'
    path.write_bytes(data)
    model = Module('resnet18_mel', task='sound-cls', num_class=5, load_checkpoint=str(path))
    np.testing.assert_allclose(model.backbone.conv1.weight.numpy(), state['conv1.weight'].sum(1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_array_equal(model.backbone.layer2[0].downsample[0].weight.numpy(),
                                  state['layer2.0.downsample.0.weight'])
    results = model.predict(waves(), sample_rate=32000)
    assert len(results) == 3 and all(len(r) == 5 for r in results)
    with pytest.raises(ValueError, match='needs num_class or label_map'):  # never the ImageNet classes
        Module('resnet18_mel', load_checkpoint=str(path))


# ----- pretrained=True: paddle.vision's file through our weights cache -----

def point_registry_at(monkeypatch, url, md5):
    spec = registry.get_spec('resnet18_mel')
    spec = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, url=url, md5=md5))
    monkeypatch.setitem(registry._MODELS, 'resnet18_mel', spec)
    return spec


def test_pretrained_weights_download_into_the_cache(server, imagenet_like, monkeypatch):
    state, data = imagenet_like
    url = server.serve('/models/resnet18.pdparams', data)
    spec = point_registry_at(monkeypatch, url, hashlib.md5(data).hexdigest())
    loaded, source = pretrained_state(spec)
    assert source == os.path.join(cache.cache_dir(), 'resnet18.pdparams')
    backbone = builder.backbone_state(spec, loaded, source)
    np.testing.assert_allclose(backbone['conv1.weight'], state['conv1.weight'].sum(1, keepdims=True), rtol=1e-6)
    pretrained_state(spec)
    assert server.requests == ['/models/resnet18.pdparams']   # the second time from the cache


def test_a_file_that_is_not_paddle_vision_s_is_refused_by_its_published_md5(server, imagenet_like, monkeypatch):
    _, data = imagenet_like
    url = server.serve('/models/resnet18.pdparams', data)
    point_registry_at(monkeypatch, url, registry.get_spec('resnet18_mel').weights.md5)
    with pytest.raises(DownloadError, match=f'{url} is corrupt: its md5 is .*expected '
                                            f'{paddle.vision.models.resnet.model_urls["resnet18"][1]}'):
        Module('resnet18_mel', num_class=5)
    assert os.listdir(cache.cache_dir()) == []


def test_module_with_pretrained_weights_downloads_and_predicts(server, imagenet_like, monkeypatch):
    state, data = imagenet_like
    url = server.serve('/models/resnet18.pdparams', data)
    point_registry_at(monkeypatch, url, hashlib.md5(data).hexdigest())
    model = Module('resnet18_mel', num_class=5)
    np.testing.assert_allclose(model.backbone.conv1.weight.numpy(), state['conv1.weight'].sum(1, keepdims=True),
                               rtol=1e-6)
    assert len(model.predict(waves(), sample_rate=32000)[0]) == 5


def test_offline_error_names_the_url_the_cache_path_and_what_to_do(monkeypatch):
    url = f'http://127.0.0.1:{closed_port()}/models/resnet18.pdparams'
    point_registry_at(monkeypatch, url, registry.get_spec('resnet18_mel').weights.md5)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        Module('resnet18_mel', num_class=5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and os.path.join(cache.cache_dir(), 'resnet18.pdparams') in message
    assert 'copy it to' in message and 'PADDLE_SOUNDCLS_HOME' in message
    assert os.listdir(cache.cache_dir()) == []
