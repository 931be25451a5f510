"""EfficientAT's MobileNetV3 (`mn`) and its front end against recordings of EfficientAT's own
PyTorch code (tests/data/make_efficientat_reference.py: a width-0.1 network with seeded weights,
its AugmentMelSTFT front end in eval mode). Neither PyTorch nor EfficientAT is needed here."""
import os

import numpy as np
import paddle
import pytest

from paddle_soundcls.checkpoints.torchfile import load_state_dict
from paddle_soundcls.errors import CheckpointError, NoHeadError
from paddle_soundcls.features import LogMel, mel
from paddle_soundcls.models import efficientat
from paddle_soundcls.models import registry
from paddle_soundcls.models.efficientat import EFFICIENTAT_FRONTEND, MobileNetV3, build, checkpoint_filter

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'efficientat')
REF_PT = os.path.join(DATA, 'tiny_mn.pt')
# The recording's network: EfficientAT's get_model(width_mult=0.1, num_classes=50).
REF_WIDTH, REF_CLASSES = 0.1, 50
NAMES = ['efficientat_mn04', 'efficientat_mn05', 'efficientat_mn10', 'efficientat_mn20', 'efficientat_mn30',
         'efficientat_mn40', 'efficientat_mn40_ext']


@pytest.fixture(scope='module')
def ref():
    with np.load(os.path.join(DATA, 'reference.npz')) as f:
        out = dict(f)
    out['waves'] = out['waves'].astype(np.float32) / 32768
    return out


@pytest.fixture(scope='module')
def ref_model():
    model = MobileNetV3(REF_WIDTH, num_classes=REF_CLASSES)
    missing, unexpected = model.set_state_dict(checkpoint_filter(load_state_dict(REF_PT), REF_PT))
    assert missing == [] and unexpected == []
    model.eval()
    return model


def n_params(model):
    # PyTorch's count: BatchNorm running statistics are buffers there, not parameters.
    return sum(int(np.prod(p.shape)) for name, p in model.named_parameters()
               if not name.endswith(('._mean', '._variance')))


def test_numpy_front_end_matches_efficientat(ref):
    ours = mel.logmel(ref['waves'], EFFICIENTAT_FRONTEND)
    assert ours.dtype == np.float32
    assert ours.shape == ref['features'].shape == (3, EFFICIENTAT_FRONTEND.num_frames(16000), 128)
    assert np.abs(ours - ref['features']).max() < 1e-4


def test_paddle_front_end_matches_efficientat(ref):
    ours = LogMel(EFFICIENTAT_FRONTEND)(paddle.to_tensor(ref['waves'])).numpy()
    assert ours.shape == ref['features'].shape
    assert np.abs(ours - ref['features']).max() < 1e-4


def test_network_matches_efficientat(ref, ref_model):
    features = paddle.to_tensor(ref['features'])
    with paddle.no_grad():
        pooled = ref_model.pooled_features(features).numpy()
        embedding = ref_model.forward_features(features)
        logits = ref_model.forward_head(embedding).numpy()
    assert embedding.shape == [3, ref_model.emb_size] == list(ref['embedding'].shape)
    np.testing.assert_allclose(pooled, ref['pooled'], atol=1e-4)
    np.testing.assert_allclose(embedding.numpy(), ref['embedding'], atol=1e-4)
    np.testing.assert_allclose(logits, ref['logits'], atol=1e-4)
    # The recording is worth comparing with: the clips' outputs differ.
    assert ref['logits'].std(axis=0).mean() > 0.01


def test_waveform_to_logits_matches_efficientat(ref, ref_model):
    # Both paths end to end. The reference's float32 spectra carry up to ~3e-5 of rounding in the
    # quiet low mel bands (pre-emphasis leaves little there), which the network can amplify.
    with paddle.no_grad():
        for features in (mel.logmel(ref['waves'], EFFICIENTAT_FRONTEND),
                         LogMel(EFFICIENTAT_FRONTEND)(paddle.to_tensor(ref['waves']))):
            logits = ref_model(paddle.to_tensor(features)).numpy()
            np.testing.assert_allclose(logits, ref['logits'], atol=5e-4)


def test_checkpoint_filter_maps_pytorch_names():
    torch_state = load_state_dict(REF_PT)
    state = checkpoint_filter(torch_state, REF_PT)
    assert not any(k.endswith(('running_mean', 'running_var', 'num_batches_tracked')) for k in state)
    assert state['features.0.1._mean'] is not None and 'features.0.1.running_mean' in torch_state
    np.testing.assert_array_equal(state['classifier.5.weight'], torch_state['classifier.5.weight'].T)
    se = [k for k in torch_state if k.endswith('conc_se_layers.0.fc1.weight')]
    assert len(se) == 8  # the blocks with squeeze-excitation
    np.testing.assert_array_equal(state[se[0]], torch_state[se[0]].T)
    np.testing.assert_array_equal(state['features.0.0.weight'], torch_state['features.0.0.weight'])
    # Our own names and layout pass unchanged.
    again = checkpoint_filter(state, 'ours.pdparams')
    assert list(again) == list(state) and all(np.array_equal(again[k], state[k]) for k in state)


def test_checkpoint_filter_checks_front_end_buffers():
    torch_state = load_state_dict(REF_PT)
    window = mel.window('hann', 800, periodic=False).astype(np.float32)
    ok = {**torch_state, 'mel.preemphasis_coefficient': np.array([[[-0.97, 1.0]]], np.float32), 'mel.window': window}
    assert set(checkpoint_filter(ok, 'x.pt')) == set(checkpoint_filter(torch_state, 'x.pt'))
    with pytest.raises(CheckpointError, match=r"x\.pt.*mel\.window.*other features"):
        checkpoint_filter({**torch_state, 'mel.window': mel.window('hann', 800).astype(np.float32)}, 'x.pt')


@pytest.mark.parametrize('key', ['fc_audioset.weight', 'conv_block1.conv1.weight', 'mel.melW'])
def test_checkpoint_filter_refuses_unknown_keys(key):
    state = {**load_state_dict(REF_PT), key: np.zeros((2, 2), np.float32)}
    with pytest.raises(CheckpointError, match=rf"other\.pt.*{key.replace('.', '[.]')}"):
        checkpoint_filter(state, 'other.pt')


def test_checkpoint_filter_refuses_mixed_layouts():
    state = {'features.0.1.running_mean': np.zeros(8, np.float32), 'features.0.1._variance': np.ones(8, np.float32)}
    with pytest.raises(CheckpointError, match='mixed.pt'):
        checkpoint_filter(state, 'mixed.pt')


def test_parameter_counts_match_efficientat():
    # EfficientAT's README: mn04 0.983 M, mn10 4.88 M parameters (exact counts of their networks).
    mn04, mn10 = build(0.4, audioset_head=True), build(1.0, audioset_head=True)
    assert n_params(mn04) == 983599 and n_params(mn10) == 4876831
    assert (mn04.emb_size, mn10.emb_size) == (512, 1280)
    headless = build(0.4, audioset_head=False)
    assert n_params(headless) == 983599 - (512 * 527 + 527)
    assert not any(k.startswith('classifier.5.') for k in headless.state_dict())
    with pytest.raises(NoHeadError, match='audioset_head=False'):
        headless.forward_head(paddle.zeros([1, 512]))


def test_registered_models():
    assert set(NAMES) <= set(registry.list_models())
    for name in NAMES:
        spec = registry.get_spec(name)
        width, weights, published = efficientat.MODELS[name]
        filename, params = weights.filename, published['params']
        assert spec.family == 'efficientat' and spec.frontend == EFFICIENTAT_FRONTEND
        assert spec.weights.url == 'https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/' + filename
        assert spec.weights.file_format == 'torch' and spec.weights.license == 'MIT'
        low, high = spec.weights.size_range
        assert low == 4 * params < high
        assert spec.published['params'] == params and spec.emb_size == efficientat.make_divisible(1280 * width)
    mn04 = registry.get_spec('efficientat_mn04').build(audioset_head=True)
    assert mn04.emb_size == registry.get_spec('efficientat_mn04').emb_size
    assert any(k.startswith(registry.get_spec('efficientat_mn04').audioset_head + '.') for k in mn04.state_dict())


@pytest.mark.parametrize('seconds', [1.0, 10.0])
def test_forward_on_clips(seconds):
    paddle.seed(0)
    model = build(0.4, audioset_head=True)
    model.eval()
    rng = np.random.default_rng(1)
    waves = (0.1 * rng.standard_normal((3, int(seconds * 32000)))).astype(np.float32)
    features = mel.logmel(waves, EFFICIENTAT_FRONTEND)
    with paddle.no_grad():
        batch = model.forward_features(paddle.to_tensor(features))
        logits = model.forward_head(batch).numpy()
        single = model(paddle.to_tensor(features[1:2])).numpy()
    assert batch.shape == [3, 512] and logits.shape == (3, 527)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(single[0], logits[1], atol=1e-5)


def test_checkpoint_of_another_width_is_refused(tmp_path):
    from paddle_soundcls import Module
    path = str(tmp_path / 'mn10.pdparams')
    paddle.save(build(1.0, audioset_head=True).state_dict(), path)
    with pytest.raises(CheckpointError, match=r'mn10\.pdparams.*features\.0\.0\.weight: checkpoint \[16, 1, 3, 3\] '
                                              r'vs model \[8, 1, 3, 3\]'):
        Module(name='efficientat_mn04', task=None, pretrained=False, load_checkpoint=path)


def test_pretrained_release_file_is_downloaded_converted_and_cached(monkeypatch):
    """pretrained=True: the PyTorch release file comes from its URL (a local server here), is read
    without PyTorch, mapped by the family's filter and kept converted in the cache; offline, the
    cache alone serves it; with neither, the error names the URL and the cache path."""
    import dataclasses
    from functools import partial

    from test_weights import Server, closed_port

    from paddle_soundcls import Module, cache as weights_cache
    from paddle_soundcls.models.registry import PretrainedCfg
    data = open(REF_PT, 'rb').read()
    server = Server()
    url = server.serve('/mn_tiny.pt', data)
    spec = dataclasses.replace(registry.get_spec('efficientat_mn04'), build=partial(build, REF_WIDTH),
                               emb_size=efficientat.make_divisible(efficientat.LAST_CHANNEL * REF_WIDTH),
                               weights=PretrainedCfg(url=url, filename='mn_tiny.pt', file_format='torch',
                                                     size_range=(len(data), len(data)), license='MIT'))
    monkeypatch.setitem(registry._MODELS, 'efficientat_mn04', spec)
    try:
        model = Module('efficientat_mn04', num_class=3)
    finally:
        server.close()
    expected = checkpoint_filter(load_state_dict(REF_PT), REF_PT)
    for key, value in model.backbone.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=key)
    cache = weights_cache.cache_dir()
    assert sorted(os.listdir(cache)) == ['efficientat_mn04.converted.pdparams', 'mn_tiny.pt']
    again = Module('efficientat_mn04', num_class=3)  # the server is gone: the cache serves it
    np.testing.assert_array_equal(again.backbone.features[0][0].weight.numpy(), expected['features.0.0.weight'])
    for name in os.listdir(cache):
        os.remove(os.path.join(cache, name))
    offline = f'http://127.0.0.1:{closed_port()}/mn_tiny.pt'
    monkeypatch.setitem(registry._MODELS, 'efficientat_mn04',
                        dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, url=offline)))
    with pytest.raises(weights_cache.DownloadError, match=r'(?s)mn_tiny.pt.*' + os.path.join(cache, 'mn_tiny.pt')):
        Module('efficientat_mn04', num_class=3)
