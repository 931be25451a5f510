"""PaSST and its front end against recordings of PaSST's own PyTorch code
(tests/data/make_passt_reference.py: upstream's PaSST class at embed_dim 32, depth 2, 4 heads,
16x16 patches every 10 x 10, a 14-column time positional embedding, seeded weights; its
AugmentMelSTFT in eval mode). Neither PyTorch nor PaSST is needed here."""
import dataclasses
import os
import sys

import numpy as np
import paddle
import pytest

from paddle_soundcls.checkpoints.torchfile import load_state_dict
from paddle_soundcls.errors import ArgumentError, CheckpointError, NoHeadError
from paddle_soundcls.features import LogMel, mel
from paddle_soundcls.models import passt, registry
from paddle_soundcls.models.efficientat import EFFICIENTAT_FRONTEND
from paddle_soundcls.models.passt import PASST_FRONTEND, PaSST, checkpoint_filter

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
REF_PT = os.path.join(DATA, 'passt', 'tiny_passt.pt')
sys.path.insert(0, DATA)
from make_passt_reference import long_waves  # noqa: E402

# The recording's network (make_passt_reference.py).
TINY = dict(dim=32, depth=2, heads=4, time_columns=14, num_classes=10)
NAMES = ['passt_s_swa_p16_128_ap476', 'passt_s_swa_p16_128_ap4761', 'passt_s_p16_128_ap472',
         'passt_s_kd_p16_128_ap486', 'passt_l_kd_p16_128_ap47']


@pytest.fixture(scope='module')
def ref():
    with np.load(os.path.join(DATA, 'passt', 'reference.npz')) as f:
        out = dict(f)
    out['waves'] = long_waves(out['waves_short']).astype(np.float32) / 32768
    out['waves_short'] = out['waves_short'].astype(np.float32) / 32768
    return out


def tiny(**kwargs):
    model = PaSST(**{**TINY, **kwargs})
    missing, unexpected = model.set_state_dict(checkpoint_filter(load_state_dict(REF_PT), REF_PT))
    assert missing == [] and unexpected == []
    model.eval()
    return model


@pytest.fixture(scope='module')
def ref_model():
    return tiny()


def features(seconds, batch=3, seed=0):
    frames = PASST_FRONTEND.num_frames(int(seconds * PASST_FRONTEND.sample_rate))
    rng = np.random.default_rng(seed)
    return paddle.to_tensor(rng.normal(-0.5, 1, (batch, frames, 128)).astype('float32'))


# ----- front end

def test_front_end_is_efficientat_s_with_fmax_15khz():
    # PaSST's eval-mode f_max: fmax=None -> sr // 2 - fmax_aug_range // 2 = 16000 - 2000 // 2.
    assert PASST_FRONTEND == EFFICIENTAT_FRONTEND and PASST_FRONTEND.f_max == 15000.0


@pytest.mark.parametrize('suffix', ['', '_short'])
def test_front_ends_match_passt(ref, suffix):
    expected = ref['features' + suffix]
    ours = mel.logmel(ref['waves' + suffix], PASST_FRONTEND)
    assert ours.shape == expected.shape == (3, PASST_FRONTEND.num_frames(ref['waves' + suffix].shape[1]), 128)
    assert np.abs(ours - expected).max() < 1e-4
    ours = LogMel(PASST_FRONTEND)(paddle.to_tensor(ref['waves' + suffix])).numpy()
    assert np.abs(ours - expected).max() < 1e-4


# ----- the network

@pytest.mark.parametrize('suffix', ['', '_short'])
def test_network_matches_passt(ref, ref_model, suffix):
    # '' fills the 14-column time embedding (150 frames); '_short' (50 frames) uses its first 4.
    x = paddle.to_tensor(ref['features' + suffix])
    with paddle.no_grad():
        embedding = ref_model.forward_features(x)
        logits = ref_model.forward_head(embedding).numpy()
        forward = ref_model(x).numpy()
    np.testing.assert_allclose(embedding.numpy(), ref['embedding' + suffix], atol=1e-4)
    np.testing.assert_allclose(logits, ref['logits' + suffix], atol=1e-4)
    np.testing.assert_allclose(forward, logits, atol=1e-6)
    assert ref['logits' + suffix].std(axis=0).mean() > 0.05   # the clips' outputs differ


def test_frames_are_passt_tokens_averaged_over_frequency(ref, ref_model):
    with paddle.no_grad():
        frames = ref_model.forward_frames(paddle.to_tensor(ref['features'])).numpy()
    # The recorded final-norm output: cls, dist, then 12 rows x 14 columns of patches, row-major.
    expected = ref['tokens'][:, 2:].reshape(3, 12, 14, 32).mean(axis=1)
    assert frames.shape == (3, 14, 32)
    np.testing.assert_allclose(frames, expected, atol=1e-4)
    np.testing.assert_allclose(ref['tokens'][:, :2].mean(axis=1), ref['embedding'], atol=1e-5)


def test_waveform_to_logits_matches_passt(ref, ref_model):
    with paddle.no_grad():
        for feats in (mel.logmel(ref['waves'], PASST_FRONTEND), LogMel(PASST_FRONTEND)(paddle.to_tensor(ref['waves']))):
            np.testing.assert_allclose(ref_model(paddle.to_tensor(feats)).numpy(), ref['logits'], atol=5e-4)


def test_parameter_names_are_upstream_s_one_to_one():
    upstream = load_state_dict(REF_PT)
    ours = PaSST(**TINY).state_dict()
    assert set(ours) == set(upstream) - {'head_dist.weight', 'head_dist.bias'}
    for name, value in ours.items():
        shape = upstream[name].shape
        transposed = name.endswith('weight') and len(shape) == 2
        assert list(value.shape) == list(shape[::-1] if transposed else shape), name


def test_parameter_count_of_passt_s():
    # ViT-B / DeiT-B at PaSST's geometry: 86 M; counted from upstream's architecture: the patch
    # convolution 768 x 256 + 768, tokens and positional embeddings 768 x (2 + 2 + 12 + 99),
    # 12 blocks of 7,087,872, the final norm and the head LayerNorm + Linear to 527.
    expected = 768 * 256 + 768 + 768 * 115 + 12 * 7087872 + 2 * 768 + 2 * 768 + 768 * 527 + 527
    with paddle.LazyGuard():
        model = passt.build(12, audioset_head=True)
    count = sum(int(np.prod(p.shape)) for p in model.parameters())
    assert count == expected == 85748495 == registry.get_spec('passt_s_swa_p16_128_ap476').published['params']
    assert abs(count - 86e6) < 0.01 * 86e6
    with paddle.LazyGuard():
        headless = passt.build(12, audioset_head=False)
    assert sum(int(np.prod(p.shape)) for p in headless.parameters()) == expected - (2 * 768 + 768 * 527 + 527)
    with pytest.raises(NoHeadError, match='audioset_head=False'):
        headless.forward_head(paddle.zeros([1, 768]))


# ----- windows of long inputs

def test_long_inputs_are_windowed():
    """Over 14 columns, the tiny network (as the released ones over 99) cuts windows of 14
    columns starting at columns 0, 14, ... and the last 14: the embedding is their average and the
    frames are the columns, each from the first window holding it."""
    model = tiny()
    x = features(3.2, batch=2)                       # 320 frames: 31 columns -> windows at 0, 14, 17
    columns = (x.shape[1] - 16) // 10 + 1
    assert columns == 31
    with paddle.no_grad():
        embedding = model.forward_features(x).numpy()
        frames = model.forward_frames(x).numpy()
        pieces = [x[:, 10 * s:10 * s + 146] for s in (0, 14, 17)]   # 146 frames: 14 columns
        window_emb = [model.forward_features(p).numpy() for p in pieces]
        window_frames = [model.forward_frames(p).numpy() for p in pieces]
    np.testing.assert_allclose(embedding, np.mean(window_emb, axis=0), atol=1e-5)
    np.testing.assert_allclose(frames, np.concatenate([window_frames[0], window_frames[1],
                                                       window_frames[2][:, 11:]], axis=1), atol=1e-5)
    # One window: frames past the last whole patch change nothing (upstream's convolution ignores them).
    with paddle.no_grad():
        np.testing.assert_allclose(model.forward_features(x[:, :155]).numpy(),
                                   model.forward_features(x[:, :146]).numpy(), atol=1e-6)


def test_released_window_is_ten_seconds():
    assert (PASST_FRONTEND.num_frames(10 * 32000) - 16) // 10 + 1 == passt.TIME_COLUMNS == 99
    assert registry.get_spec('passt_s_swa_p16_128_ap476').frame_geometry == passt.FrameGeometry(10, 7.5)
    assert PASST_FRONTEND.num_frames(int(0.16 * 32000)) == 16      # min_seconds: one patch


# ----- patchout

def test_patchout_only_in_training():
    model = tiny()
    x = features(1.5, batch=2)
    with paddle.no_grad():
        eval_out = model.forward_features(x).numpy()
        model.set_patchout(time=0, freq=0, unstructured=0)
        np.testing.assert_array_equal(model.forward_features(x).numpy(), eval_out)   # eval: never any
        model.set_patchout(time=4, freq=3, unstructured=5)
        np.testing.assert_array_equal(model.forward_features(x).numpy(), eval_out)
        model.train()
        windows, *_ = model._windows(x)
        tokens, rows = model._tokens(windows, frames_kept=False)
        assert rows == 12 - 3 and tokens.shape[1] == 2 + 9 * (14 - 4) - 5
        tokens, rows = model._tokens(windows, frames_kept=True)   # frames keep every column
        assert tokens.shape[1] == 2 + 9 * 14
        paddle.seed(1)
        np.random.seed(1)
        a = model.forward_features(x).numpy()
        b = model.forward_features(x).numpy()
        assert np.abs(a - b).max() > 1e-4                       # random patches dropped per batch
        assert model.forward_frames(x).shape == [2, 14, 32]
        model.set_patchout(time=0, freq=0, unstructured=0)      # training without patchout: upstream's
        np.testing.assert_allclose(model.forward_features(x).numpy(), eval_out, atol=1e-5)
    assert passt.PATCHOUT == {'time': 10, 'freq': 3, 'unstructured': 0}
    fresh = PaSST(**TINY)
    assert (fresh.patchout_time, fresh.patchout_freq, fresh.patchout_unstructured) == (10, 3, 0)
    with pytest.raises(ArgumentError, match='patchout time'):
        fresh.set_patchout(time=-1)



def test_one_second_inputs_train_with_the_dcase_teachers_patchout():
    """DCASE 2023's PaSST teachers were fine-tuned on 1-s clips with frequency patchout only
    (s_patchout_t=0, s_patchout_f=6): the time embedding is cut to the clip's 9 columns, 6 of the
    12 frequency rows are dropped in training, none in evaluation, and the loss reaches every block."""
    model = tiny()
    x = features(1.0, batch=2)
    assert (x.shape[1] - 16) // 10 + 1 == 9
    model.set_patchout(time=0, freq=6, unstructured=0)
    with paddle.no_grad():
        eval_out = model.forward_features(x).numpy()
    model.train()
    windows, count, width, *_ = model._windows(x)
    assert (int(np.ravel(count)[0]), int(np.ravel(width)[0])) == (1, 9)
    tokens, rows = model._tokens(windows, frames_kept=False)
    assert rows == 6 and tokens.shape[1] == 2 + 6 * 9
    loss = model.forward_features(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.blocks[0].parameters())
    model.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(model.forward_features(x).numpy(), eval_out)

# ----- checkpoints

def test_checkpoint_filter_maps_upstream_layout():
    upstream = load_state_dict(REF_PT)
    state = checkpoint_filter(upstream, REF_PT)
    assert 'head_dist.weight' in upstream and not any(k.startswith('head_dist.') for k in state)
    np.testing.assert_array_equal(state['blocks.1.attn.qkv.weight'], upstream['blocks.1.attn.qkv.weight'].T)
    np.testing.assert_array_equal(state['head.1.weight'], upstream['head.1.weight'].T)
    np.testing.assert_array_equal(state['head.0.weight'], upstream['head.0.weight'])
    np.testing.assert_array_equal(state['patch_embed.proj.weight'], upstream['patch_embed.proj.weight'])
    np.testing.assert_array_equal(state['time_new_pos_embed'], upstream['time_new_pos_embed'])
    again = checkpoint_filter(state, 'ours.pdparams')          # our own layout passes unchanged
    assert list(again) == list(state) and all(np.array_equal(again[k], state[k]) for k in state)
    # hear21passt's wrapper: the network under net., plus its device_proxy.
    wrapped = {'device_proxy': np.zeros(1, np.float32), **{'net.' + k: v for k, v in upstream.items()}}
    assert list(checkpoint_filter(wrapped, 'w.pt')) == list(state)


@pytest.mark.parametrize('key', ['fc_audioset.weight', 'features.0.0.weight', 'pos_embed', 'mel.window'])
def test_checkpoint_filter_refuses_unknown_keys(key):
    state = {**load_state_dict(REF_PT), key: np.zeros((2, 2), np.float32)}
    with pytest.raises(CheckpointError, match=rf"other\.pt.*{key.replace('.', '[.]')}"):
        checkpoint_filter(state, 'other.pt')


def test_checkpoint_filter_refuses_files_without_attention():
    with pytest.raises(CheckpointError, match=r'cnn\.pt.*qkv'):
        checkpoint_filter({'conv_block1.conv1.weight': np.zeros((2, 1, 3, 3), np.float32)}, 'cnn.pt')


def test_registered_models():
    assert set(NAMES) <= set(registry.list_models())
    for name in NAMES:
        spec = registry.get_spec(name)
        depth, weights, published = passt.MODELS[name]
        assert spec.family == 'passt' and spec.frontend == PASST_FRONTEND and spec.emb_size == 768
        assert spec.weights.url.startswith('https://github.com/kkoutini/PaSST/releases/download/')
        assert spec.weights.url.endswith(spec.weights.filename) and spec.weights.file_format == 'torch'
        assert spec.weights.license == 'Apache-2.0' and spec.weights.classifier == spec.audioset_head == 'head'
        low, high = spec.weights.size_range
        assert low == 4 * published['params'] < high
        assert spec.frame_geometry == passt.FRAME_GEOMETRY and spec.min_seconds == 0.16
    assert registry.get_spec('passt_s_swa_p16_128_ap476').weights.url == (
        'https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt')
    assert registry.get_spec('passt_s_swa_p16_128_ap476').published['audioset_map'] == 0.476
    assert registry.get_spec('passt_s_kd_p16_128_ap486').published['audioset_map'] == 0.486
    assert passt.MODELS['passt_l_kd_p16_128_ap47'][0] == 7


# ----- export

def test_export_of_the_tiny_network_takes_any_batch_and_length(tmp_path, monkeypatch):
    """paddle.jit.save + paddle2onnx of the tiny network, time and batch axes dynamic: Paddle
    Inference and onnxruntime match dygraph on one window and on three, for one clip and three."""
    import onnxruntime as ort

    from paddle_soundcls import Module
    from paddle_soundcls.deploy.engines import PaddleEngine
    from paddle_soundcls.export import export_static

    spec = dataclasses.replace(registry.get_spec('passt_s_swa_p16_128_ap476'), emb_size=32, weights=None,
                               build=lambda audioset_head=False: PaSST(**{**TINY, 'num_classes': 527},
                                                                       audioset_head=audioset_head),
                               frontend=PASST_FRONTEND, frame_geometry=passt.FRAME_GEOMETRY)
    monkeypatch.setitem(registry._MODELS, 'passt_s_swa_p16_128_ap476', spec)
    module = Module('passt_s_swa_p16_128_ap476', task='sound-cls', label_map=['a', 'b', 'c'], pretrained=False,
                    seed=0)
    module.backbone.set_state_dict(checkpoint_filter(load_state_dict(REF_PT), REF_PT))
    module.eval()
    out = tmp_path / 'export'
    export_static(module, out, opset=13)
    scores_onnx = ort.InferenceSession(str(out / 'model.onnx'), providers=['CPUExecutionProvider'])
    frames_onnx = ort.InferenceSession(str(out / 'model.frames.onnx'), providers=['CPUExecutionProvider'])
    scores_static = PaddleEngine(str(out / 'inference'))
    frames_static = PaddleEngine(str(out / 'inference.frames'))
    for seconds in (1.2, 3.2):                       # 12 columns (one window), 31 (three windows)
        for batch in (1, 3):
            x = features(seconds, batch=batch, seed=batch)
            with paddle.no_grad():
                scores = module.part('scores')(x).numpy()
                frames = module.part('frames')(x).numpy()
            assert frames.shape[:2] == (batch, (x.shape[1] - 16) // 10 + 1)
            feed = {scores_onnx.get_inputs()[0].name: x.numpy()}
            np.testing.assert_allclose(scores_onnx.run(None, feed)[0], scores, atol=1e-5)
            np.testing.assert_allclose(frames_onnx.run(None, feed)[0], frames, atol=1e-5)
            np.testing.assert_allclose(scores_static(x.numpy()), scores, atol=1e-5)
            np.testing.assert_allclose(frames_static(x.numpy()), frames, atol=1e-5)


@pytest.mark.slow
def test_full_size_forward_on_a_long_clip():
    # 10.05 s is the last length of one window; 15 s takes two (starting at columns 0 and 50).
    paddle.seed(0)
    model = passt.build(12, audioset_head=True)
    model.eval()
    x = features(15.0, batch=1)
    with paddle.no_grad():
        embedding = model.forward_features(x).numpy()
        parts = [model.forward_features(x[:, s:s + 996]).numpy() for s in (0, 500)]
        frames = model.forward_frames(x)
    np.testing.assert_allclose(embedding, np.mean(parts, axis=0), atol=1e-4)
    assert frames.shape == [1, (x.shape[1] - 16) // 10 + 1, 768]


def test_frame_geometry_is_each_columns_patch_span():
    """With the attention branches and positional embeddings zeroed, column j of forward_frames
    sees only its own patches: the input frames that change it are 10 j .. 10 j + 15, centred
    on frame 10 j + 7.5, the declared FrameGeometry (also across windows: 31 columns, three)."""
    model = tiny()
    for name, p in model.named_parameters():
        if '.attn.proj.' in name or name.endswith('pos_embed'):
            p.set_value(np.zeros(p.shape, 'float32'))
    x = features(3.2, batch=1)
    with paddle.no_grad():
        base = model.forward_frames(x).numpy()[0]
        frames = x.shape[1]
        bumps = np.repeat(x.numpy(), frames, axis=0)
        bumps[np.arange(frames), np.arange(frames)] += 1.0          # clip k: frame k raised
        changed = np.abs(model.forward_frames(paddle.to_tensor(bumps)).numpy() - base).max(axis=2) > 1e-6
    centres = passt.FRAME_GEOMETRY.centres(base.shape[0])
    for j in range(base.shape[0]):
        seen = np.flatnonzero(changed[:, j])
        assert list(seen) == list(range(10 * j, 10 * j + 16)), j
        assert seen.mean() == centres[j]


def test_inputs_shorter_than_one_patch_are_refused_clearly():
    """Fewer than 16 frames hold no patch: a clear error, in eval and in training, rather than
    Paddle's own about a reshape or a division by zero; 16 frames are one column."""
    model = PaSST(**TINY)
    short = paddle.zeros([2, 15, 128])
    for training in (False, True):
        model.train() if training else model.eval()
        for forward in (model.forward_features, model.forward_frames):
            with pytest.raises(ArgumentError, match='at least 16 feature frames.*got 15'):
                forward(short)
    model.eval()
    with paddle.no_grad():
        assert model.forward_frames(paddle.zeros([2, 16, 128])).shape[:2] == [2, 1]
