"""EfficientAT's dynamic MobileNets (`dymn`) against recordings of EfficientAT's own PyTorch code
(tests/data/make_dymn_reference.py: a width-0.1 DyMN with seeded weights and a 50-class head, fed
the MobileNet recordings' three clips). Neither PyTorch nor EfficientAT is needed here."""
import dataclasses
import os
from functools import partial

import numpy as np
import paddle
import pytest

from paddle_soundcls.checkpoints.torchfile import load_state_dict
from paddle_soundcls.errors import CheckpointError, NoHeadError
from paddle_soundcls.features import LogMel, mel
from paddle_soundcls.models import dymn, efficientat, registry
from paddle_soundcls.models.builder import convert_state, paddle_bn_name, torch_bn_name
from paddle_soundcls.models.dymn import DyMN, DynamicConv, build, checkpoint_filter

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
REF_PT = os.path.join(DATA, 'dymn', 'tiny_dymn.pt')
MN_PT = os.path.join(DATA, 'efficientat', 'tiny_mn.pt')
# The recording's network: EfficientAT's dymn get_model(width_mult=0.1, num_classes=50, T_max=1.0).
REF_WIDTH, REF_CLASSES = 0.1, 50
AUDIOSET = ['efficientat_dymn04', 'efficientat_dymn10', 'efficientat_dymn20']
IMAGENET = [name + '_im' for name in AUDIOSET]
# EfficientAT's README: parameters (millions, counted with the BatchNorm statistics), GMACs per 10-s
# clip, AudioSet mAP. DESIGN.md: dymn10 has 10,548,479 learnt parameters (PyTorch's parameters()).
README = {'efficientat_dymn04': (0.4, 1.97, 0.12, 0.450), 'efficientat_dymn10': (1.0, 10.57, 0.58, 0.477),
          'efficientat_dymn20': (2.0, 40.02, 2.2, 0.491)}


@pytest.fixture(scope='module')
def ref():
    with np.load(os.path.join(DATA, 'dymn', 'reference.npz')) as f:
        out = dict(f)
    out['waves'] = out['waves'].astype(np.float32) / 32768
    return out


def load_tiny(model):
    state = checkpoint_filter(load_state_dict(REF_PT), REF_PT)
    # The fixture is stored in float16 (the recorded outputs are those of exactly these values).
    missing, unexpected = model.set_state_dict({k: v.astype(np.float32) for k, v in state.items()})
    assert missing == [] and unexpected == []
    model.eval()
    return model


@pytest.fixture(scope='module')
def ref_model():
    return load_tiny(DyMN(REF_WIDTH, num_classes=REF_CLASSES))


def n_params(model):
    # PyTorch's count: BatchNorm running statistics are buffers there, not parameters.
    return sum(int(np.prod(p.shape)) for name, p in model.named_parameters()
               if not name.endswith(('._mean', '._variance')))


def attention_of(model, features, block, conv):
    """The kernel attention [batch, K] that model.layers[block].<conv> computes on `features`."""
    caught = {}

    def keep_context(layer, args, out):   # returns None: the output is left as it is
        caught['context'] = out[0]
    layer = model.layers[block]
    handle = layer.context_gen.register_forward_post_hook(keep_context)
    with paddle.no_grad():
        model(features)
        handle.remove()
        return getattr(layer, conv).kernel_attention(caught['context']).numpy()


def test_front_end_is_the_mobilenets(ref):
    assert dymn.EFFICIENTAT_FRONTEND is efficientat.EFFICIENTAT_FRONTEND
    for name in AUDIOSET + IMAGENET:
        spec = registry.get_spec(name)
        assert spec.frontend == efficientat.EFFICIENTAT_FRONTEND
        assert spec.frame_geometry == efficientat.FRAME_GEOMETRY   # stride 32, offset 0, as the MNs
    # The recording's features are EfficientAT's AugmentMelSTFT: ours, numpy and Paddle, match them.
    assert np.abs(mel.logmel(ref['waves'], dymn.EFFICIENTAT_FRONTEND) - ref['features']).max() < 1e-4
    ours = LogMel(dymn.EFFICIENTAT_FRONTEND)(paddle.to_tensor(ref['waves'])).numpy()
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
    assert ref['logits'].std(axis=0).mean() > 0.05   # the clips' outputs differ: worth comparing


def test_each_clip_alone_matches_efficientat(ref, ref_model):
    # Upstream's own batch independence (each clip alone vs in the batch) holds to ~1e-5.
    assert np.abs(ref['logits_single'] - ref['logits']).max() < 5e-5
    with paddle.no_grad():
        for i in range(3):
            alone = ref_model(paddle.to_tensor(ref['features'][i:i + 1])).numpy()
            np.testing.assert_allclose(alone[0], ref['logits_single'][i], atol=1e-4)


def test_waveform_to_logits_matches_efficientat(ref, ref_model):
    with paddle.no_grad():
        features = LogMel(dymn.EFFICIENTAT_FRONTEND)(paddle.to_tensor(ref['waves']))
        np.testing.assert_allclose(ref_model(features).numpy(), ref['logits'], atol=5e-4)


def test_kernel_attention_matches_efficientat_and_depends_on_the_clip(ref, ref_model):
    features = paddle.to_tensor(ref['features'])
    for key, (block, conv) in {'attention': (4, 'depth_conv'), 'attention_exp': (11, 'exp_conv')}.items():
        ours = attention_of(ref_model, features, block, conv)
        np.testing.assert_allclose(ours, ref[key], atol=1e-5)
        np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-6)
        # Not one mixture for every input: the clips' mixtures differ.
        assert np.abs(ours - ours.mean(axis=0)).max() > 0.01, ours


def test_temperature_of_training_start(ref):
    # The ImageNet backbones' temperature (30): all kernels mixed almost evenly, still as upstream.
    model = load_tiny(DyMN(REF_WIDTH, num_classes=REF_CLASSES, temperature=dymn.IMAGENET_TEMPERATURE))
    with paddle.no_grad():
        logits = model(paddle.to_tensor(ref['features'])).numpy()
    np.testing.assert_allclose(logits, ref['logits_t30'], rtol=1e-4, atol=1e-4)
    model.set_temperature(1.0)
    with paddle.no_grad():
        np.testing.assert_allclose(model(paddle.to_tensor(ref['features'])).numpy(), ref['logits'], atol=1e-4)


def other_batches(features):
    """Batches of clips unlike one another built from the recording's clips (the tiny network's
    BatchNorm statistics are those of these clips: far from them, its activations explode): a
    reordering, and two clips' features averaged."""
    return [features[[2, 0, 1]], np.stack([features[1], 0.5 * (features[0] + features[2]), features[0]])]


def test_a_clip_scores_the_same_alone_and_among_others(ref, ref_model):
    features = ref['features']
    with paddle.no_grad():
        alone = [ref_model(paddle.to_tensor(features[i:i + 1])).numpy()[0] for i in range(3)]
        for batch, order in zip(other_batches(features), ([2, 0, 1], [1, None, 0])):
            out = ref_model(paddle.to_tensor(batch)).numpy()
            for row, i in enumerate(order):
                if i is not None:
                    np.testing.assert_allclose(out[row], alone[i], atol=2e-5)
            assert np.abs(out - out.mean(axis=0)).max() > 0.05   # different clips, different scores


def test_parameter_names_are_upstreams_one_to_one():
    torch_state = load_state_dict(REF_PT)
    # Upstream's names, less what carries no learnt value: BatchNorm step counters and DyReLU's
    # constant buffers (checked and dropped by the filter); running_mean/var under Paddle's names.
    expected = [paddle_bn_name(k) for k in torch_state
                if paddle_bn_name(k) is not None and not k.endswith(('.lambdas', '.init_v'))]
    ours = list(DyMN(REF_WIDTH, num_classes=REF_CLASSES).state_dict())
    assert ours == expected   # the same names, in the same order
    for name, value in checkpoint_filter(torch_state, REF_PT).items():
        assert value.size == torch_state[torch_bn_name(name)].size, name


def test_checkpoint_filter_maps_pytorch_layouts():
    torch_state = load_state_dict(REF_PT)
    state = checkpoint_filter(torch_state, REF_PT)
    assert not any(k.endswith(('running_mean', 'running_var', 'num_batches_tracked', 'lambdas', 'init_v'))
                   for k in state)
    np.testing.assert_array_equal(state['layers.4.exp_norm._mean'], torch_state['layers.4.exp_norm.running_mean'])
    for name in ('classifier.5.weight', 'classifier.2.weight', 'layers.4.depth_conv.residuals.0.weight',
                 'layers.4.depth_act.coef_net.0.weight'):
        np.testing.assert_array_equal(state[name], torch_state[name].T)
    # The K kernels: upstream's [1, 1, K, out * in/groups * k * k] -> [K * out, in/groups, k, k], kernel i
    # at rows i * out ... (i + 1) * out - 1.
    depth, proj = torch_state['layers.4.depth_conv.weight'], torch_state['layers.4.proj_conv.weight']
    assert depth.shape == (1, 1, 4, 16 * 5 * 5) and state['layers.4.depth_conv.weight'].shape == (4 * 16, 1, 5, 5)
    np.testing.assert_array_equal(state['layers.4.depth_conv.weight'][16 * 2 + 3, 0], depth[0, 0, 2, 3 * 25:4 * 25]
                                  .reshape(5, 5))
    assert proj.shape == (1, 1, 4, 8 * 16) and state['layers.4.proj_conv.weight'].shape == (4 * 8, 16, 1, 1)
    np.testing.assert_array_equal(state['layers.4.proj_conv.weight'][8 * 3 + 1, :, 0, 0], proj[0, 0, 3, 16:32])
    # Our own names and layout pass unchanged.
    again = checkpoint_filter(state, 'ours.pdparams')
    assert list(again) == list(state) and all(np.array_equal(again[k], state[k]) for k in state)


def test_checkpoint_filter_checks_constant_and_front_end_buffers():
    torch_state = load_state_dict(REF_PT)
    window = mel.window('hann', 800, periodic=False).astype(np.float32)
    ok = {**torch_state, 'mel.preemphasis_coefficient': np.array([[[-0.97, 1.0]]], np.float32), 'mel.window': window}
    assert set(checkpoint_filter(ok, 'x.pt')) == set(checkpoint_filter(torch_state, 'x.pt'))
    with pytest.raises(CheckpointError, match=r"x\.pt.*mel\.window.*other features"):
        checkpoint_filter({**torch_state, 'mel.window': mel.window('hann', 800).astype(np.float32)}, 'x.pt')
    with pytest.raises(CheckpointError, match=r"x\.pt.*layers\.3\.depth_act\.lambdas.*DyReLU"):
        checkpoint_filter({**torch_state, 'layers.3.depth_act.lambdas': np.ones(4, np.float32)}, 'x.pt')


def test_checkpoint_filter_refuses_an_mn_checkpoint():
    with pytest.raises(CheckpointError, match=r"tiny_mn\.pt.*'features\.0\.0\.weight'.*efficientat_mn"):
        checkpoint_filter(load_state_dict(MN_PT), MN_PT)


@pytest.mark.parametrize('key', ['fc_audioset.weight', 'conv_block1.conv1.weight', 'mel.melW',
                                 'layers.0.block.0.0.weight', 'layers.2.depth_conv.bias'])
def test_checkpoint_filter_refuses_unknown_keys(key):
    state = {**load_state_dict(REF_PT), key: np.zeros((2, 2), np.float32)}
    with pytest.raises(CheckpointError, match=rf"other\.pt.*{key.replace('.', '[.]')}"):
        checkpoint_filter(state, 'other.pt')


def test_checkpoint_filter_refuses_mixed_layouts():
    state = {'in_c.1.running_mean': np.zeros(8, np.float32), 'in_c.1._variance': np.ones(8, np.float32)}
    with pytest.raises(CheckpointError, match='mixed.pt'):
        checkpoint_filter(state, 'mixed.pt')


def test_parameter_counts_match_efficientat():
    for name, (width, readme_millions, _, _) in README.items():
        model = build(width, audioset_head=True)
        count = n_params(model)
        assert count == dymn.MODELS[name][2]['params'] == registry.get_spec(name).published['params']
        # The README's figure counts the BatchNorm running statistics too (rounded to 10 k).
        statistics = sum(int(np.prod(p.shape)) for k, p in model.named_parameters()
                         if k.endswith(('._mean', '._variance')))
        assert round((count + statistics) / 1e6, 2) == readme_millions, (name, count, statistics)
        assert model.emb_size == efficientat.make_divisible(1280 * width)
        headless = build(width, audioset_head=False)
        assert n_params(headless) == count - (model.emb_size * 527 + 527)
        assert n_params(headless) == registry.get_spec(name + '_im').published['params']
    assert dymn.MODELS['efficientat_dymn10'][2]['params'] == 10548479   # DESIGN.md's count
    with pytest.raises(NoHeadError, match='audioset_head=False'):
        headless.forward_head(paddle.zeros([1, headless.emb_size]))


def test_registered_models():
    assert set(AUDIOSET + IMAGENET) == set(registry.list_models('dymn'))
    for name in AUDIOSET + IMAGENET:
        spec = registry.get_spec(name)
        width, weights, published = dymn.MODELS[name]
        assert spec.weights.url == 'https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/' + \
            weights.filename
        assert spec.weights.file_format == 'torch' and spec.weights.license == 'MIT'
        low, high = spec.weights.size_range
        assert low == 4 * published['params'] < high
        assert spec.emb_size == efficientat.make_divisible(1280 * width) and spec.head_dropout == 0.2
        assert spec.weights.classifier == 'classifier.5'
        network = spec.build(audioset_head=spec.audioset_head is not None)
        convs = [layer for layer in network.sublayers() if isinstance(layer, DynamicConv)]
        assert len(convs) == 44   # 15 blocks x 3, less the first block's expansion
        if name in IMAGENET:
            assert spec.weights.labels == 'imagenet-1k' and spec.audioset_head is None
            assert set(published) == {'params'} and {c.temperature for c in convs} == {30.0}
        else:
            _, _, gmacs, audioset_map = README[name]
            assert spec.weights.labels == 'audioset' and spec.audioset_head == 'classifier.5'
            assert published == {'params': published['params'], 'macs_10s': gmacs * 1e9, 'audioset_map': audioset_map}
            assert {c.temperature for c in convs} == {1.0}
    assert registry.get_spec('efficientat_dymn20').weights.filename == 'dymn20_as_mAP_493.pt'


def test_imagenet_file_classifier_is_dropped(monkeypatch):
    """An _im file: upstream's DyMN with its 1000-class ImageNet Linear (classifier.5), as
    upstream saves it. The builder drops that classifier and keeps the rest of the backbone."""
    torch_state = load_state_dict(REF_PT)
    state = {k: v for k, v in torch_state.items() if not k.startswith('classifier.5.')}
    state['classifier.5.weight'] = np.zeros((1000, 128), np.float32)
    state['classifier.5.bias'] = np.zeros(1000, np.float32)
    spec = registry.get_spec('efficientat_dymn04_im')
    monkeypatch.setitem(registry._MODELS, spec.name, dataclasses.replace(
        spec, build=partial(build, REF_WIDTH, dymn.IMAGENET_TEMPERATURE)))
    out, left_out = convert_state(state, spec.name, 'dymn_im.pt')
    assert not any(k.startswith('classifier.5') for k in out) and left_out == []
    np.testing.assert_array_equal(out['classifier.2.weight'], torch_state['classifier.2.weight'].T)


def test_export_keeps_the_attention_per_clip(tmp_path, ref, ref_model):
    """paddle.jit.save + paddle2onnx (the package's export path) of the tiny network: onnxruntime and
    Paddle Inference give the dygraph logits for one clip and for a batch of different clips, so
    the exported graph mixes each clip's kernels from its own context, at any batch size."""
    import onnxruntime as ort
    from paddle_soundcls.export.onnx import convert
    from paddle_soundcls.export.static import save_static
    save_static(ref_model, 128, str(tmp_path))
    model = convert(str(tmp_path))
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    loaded = paddle.jit.load(str(tmp_path / 'inference'))
    loaded.eval()
    features = ref['features']
    longer = np.concatenate([features, features[[1, 2, 0]]], axis=1)    # 100 frames: time is dynamic too
    for batch in [features[1:2], features, *other_batches(features), longer]:
        batch = np.ascontiguousarray(batch)
        with paddle.no_grad():
            expected = ref_model(paddle.to_tensor(batch)).numpy()
            static = loaded(paddle.to_tensor(batch)).numpy()
        onnx_out = session.run(None, {session.get_inputs()[0].name: batch})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(static, expected, atol=1e-5 * scale)
        # onnxruntime's fused kernels round differently from Paddle's (1.2e-4 seen on CI at a
        # logit of 0.82); kernels mixed from another clip's context differ by orders more.
        np.testing.assert_allclose(onnx_out, expected, atol=5e-4 * scale)
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: ref['features']})[0], ref['logits'],
                               atol=5e-4)


def test_pretrained_release_file_is_downloaded_and_loaded(monkeypatch, ref):
    """pretrained=True through the package's one path: the PyTorch file from its URL (a local
    server), read without PyTorch, mapped by checkpoint_filter, kept converted in the cache; the
    Module's backbone then gives the recorded embedding."""
    from test_weights import Server

    from paddle_soundcls import Module, cache as weights_cache
    from paddle_soundcls.models.registry import PretrainedCfg
    data = open(REF_PT, 'rb').read()
    server = Server()
    url = server.serve('/dymn_tiny.pt', data)
    spec = registry.get_spec('efficientat_dymn04')
    monkeypatch.setitem(registry._MODELS, spec.name, dataclasses.replace(
        spec, build=partial(build, REF_WIDTH), emb_size=128,
        weights=PretrainedCfg(url=url, filename='dymn_tiny.pt', file_format='torch',
                              size_range=(len(data), len(data)), license='MIT')))
    try:
        model = Module(spec.name, num_class=3)
    finally:
        server.close()
    model.eval()
    with paddle.no_grad():
        embedding = model.backbone.forward_features(paddle.to_tensor(ref['features'])).numpy()
    np.testing.assert_allclose(embedding, ref['embedding'], atol=1e-4)
    cache = weights_cache.cache_dir()
    assert sorted(os.listdir(cache)) == ['dymn_tiny.pt', 'efficientat_dymn04.converted.pdparams']
