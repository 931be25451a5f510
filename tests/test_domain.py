"""Layers against device mismatch (models/domain.py) against their formulas computed here in numpy:
sub-spectral normalisation (per-sub-band BatchNorm, training and evaluation), the frequency-wise
normalisations (RFN, ResNorm), gradient reversal (identity forward, -lam x the gradient backward)
and DANN's schedule; then the CP-Mobile variants that use them: sizes, behaviour, export."""
import math

import numpy as np
import paddle
import pytest

from paddle_soundcls import Module
from paddle_soundcls.checkpoints.files import save_pdparams
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.models import registry
from paddle_soundcls.models.cpmobile import BASELINE, CPMOBILE_FRONTEND, CPMobile, stage_channels
from paddle_soundcls.models.domain import (DeviceClassifier, GradientReversal, RelaxedFreqNorm, ResidualFreqNorm,
                                           SubSpectralNorm, dann_weight)

EPS = 1e-5
N_MELS = CPMOBILE_FRONTEND.n_mels


def feature_map(shape, seed=0):
    """A map whose frequency bands differ in level and spread, as a spectrogram's do."""
    rng = np.random.default_rng(seed)
    bins = shape[2]
    level = np.linspace(-3, 3, bins)[None, None, :, None]
    spread = np.linspace(0.5, 2.0, bins)[None, None, :, None]
    return (level + spread * rng.normal(size=shape)).astype('float32')


def trainable(layer):
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if not p.stop_gradient)


# --- sub-spectral normalisation ------------------------------------------------------------------

def ssn_reference(x, sub_bands, weight, bias, mean=None, var=None):
    """Band s of channel c (bins s*F/S .. (s+1)*F/S) normalised by its own statistics (over batch, its
    bins and time; biased variance) or by the given ones, with weight/bias index c*S + s."""
    out = np.empty_like(x, dtype=np.float64)
    width = x.shape[2] // sub_bands
    stats = []
    for c in range(x.shape[1]):
        for s in range(sub_bands):
            band = x[:, c, s * width:(s + 1) * width, :].astype(np.float64)
            i = c * sub_bands + s
            m, v = (band.mean(), band.var()) if mean is None else (mean[i], var[i])
            stats.append((band.mean(), band.var()))
            out[:, c, s * width:(s + 1) * width, :] = (band - m) / np.sqrt(v + EPS) * weight[i] + bias[i]
    return out, np.array(stats)


def random_affine(ssn, seed=1):
    rng = np.random.default_rng(seed)
    n = ssn.bn.weight.shape[0]
    weight, bias = rng.uniform(0.5, 2.0, n).astype('float32'), rng.normal(size=n).astype('float32')
    ssn.bn.weight.set_value(weight)
    ssn.bn.bias.set_value(bias)
    return weight, bias


def test_subspectral_norm_training_uses_each_bands_batch_statistics():
    x = feature_map((4, 3, 16, 7))
    ssn = SubSpectralNorm(3, 4)
    weight, bias = random_affine(ssn)
    ssn.train()
    out = ssn(paddle.to_tensor(x)).numpy()
    expected, stats = ssn_reference(x, 4, weight, bias)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Running statistics after one step: Paddle's momentum 0.9 from mean 0 / variance 1, updated with
    # the biased batch variance (Paddle's BatchNorm; PyTorch uses the unbiased one).
    np.testing.assert_allclose(ssn.bn._mean.numpy(), 0.1 * stats[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ssn.bn._variance.numpy(), 0.9 + 0.1 * stats[:, 1], rtol=1e-4, atol=1e-5)
    assert trainable(ssn) == 2 * 3 * 4


def test_subspectral_norm_evaluation_uses_running_statistics():
    x = feature_map((2, 3, 16, 5), seed=2)
    ssn = SubSpectralNorm(3, 4)
    weight, bias = random_affine(ssn)
    rng = np.random.default_rng(3)
    mean, var = rng.normal(size=12).astype('float32'), rng.uniform(0.5, 3.0, 12).astype('float32')
    ssn.bn._mean.set_value(mean)
    ssn.bn._variance.set_value(var)
    ssn.eval()
    out = ssn(paddle.to_tensor(x)).numpy()
    expected, _ = ssn_reference(x, 4, weight, bias, mean, var)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Each clip alone gives the same (no batch statistics in evaluation).
    np.testing.assert_allclose(ssn(paddle.to_tensor(x[1:])).numpy()[0], out[1], rtol=1e-5, atol=1e-5)


def test_subspectral_norm_removes_a_gain_per_sub_band():
    """A device-like gain and offset, constant over each sub-band, changes nothing in training mode;
    BatchNorm over whole channels (one sub-band) keeps it."""
    x = feature_map((4, 2, 16, 6), seed=4)
    gain = np.repeat([0.5, 2.0, 1.0, 3.0], 4)[None, None, :, None]
    offset = np.repeat([1.0, -2.0, 0.0, 4.0], 4)[None, None, :, None]
    shifted = (x * gain + offset).astype('float32')
    for sub_bands, invariant in ((4, True), (1, False)):
        ssn = SubSpectralNorm(2, sub_bands)
        ssn.train()
        a, b = ssn(paddle.to_tensor(x)).numpy(), ssn(paddle.to_tensor(shifted)).numpy()
        assert np.allclose(a, b, atol=1e-3) == invariant, sub_bands


def test_subspectral_norm_refusals():
    with pytest.raises(ArgumentError, match=r'12 frequency bins do not split into 5 equal sub-bands'):
        SubSpectralNorm(2, 5)(paddle.zeros([1, 2, 12, 3]))
    with pytest.raises(ArgumentError, match=r'built for 2 channels, got a map of 3'):
        SubSpectralNorm(2, 4)(paddle.zeros([1, 3, 12, 3]))
    with pytest.raises(ArgumentError, match=r'sub_bands must be a positive int'):
        SubSpectralNorm(2, 0)
    with pytest.raises(ArgumentError, match=r'feature map \[batch, channels, frequency, time\]'):
        SubSpectralNorm(2, 2)(paddle.zeros([2, 12, 3]))


# --- frequency-wise normalisations ----------------------------------------------------------------

def standardise(x, axes):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + EPS)


@pytest.mark.parametrize('lam', [0.0, 0.3, 0.5, 1.0])
def test_relaxed_freq_norm_formula(lam):
    """lam * LN(x) + (1 - lam) * IFN(x): IFN standardises each (clip, frequency) over channels and
    time, LN each clip over channels, frequency and time."""
    x = feature_map((3, 4, 10, 9), seed=5)
    out = RelaxedFreqNorm(lam)(paddle.to_tensor(x)).numpy()
    expected = lam * standardise(x, (1, 2, 3)) + (1 - lam) * standardise(x, (1, 3))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_residual_freq_norm_formula():
    x = feature_map((2, 3, 8, 6), seed=6)
    out = ResidualFreqNorm(0.25)(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(out, standardise(x, (1, 3)) + 0.25 * x, rtol=1e-4, atol=1e-4)


def test_freq_norm_removes_a_clips_band_offsets():
    """A log-mel recorded through another device: the same clip plus an offset and a gain per band
    (a filter). The frequency-wise instance norm (lam 0) removes them clip by clip."""
    x = feature_map((2, 1, 12, 20), seed=7)
    rng = np.random.default_rng(8)
    device = (x * rng.uniform(0.5, 2.0, (2, 1, 12, 1)) + rng.normal(0, 3, (2, 1, 12, 1))).astype('float32')
    ifn = RelaxedFreqNorm(0.0)
    np.testing.assert_allclose(ifn(paddle.to_tensor(device)).numpy(), ifn(paddle.to_tensor(x)).numpy(), atol=1e-4)
    relaxed = RelaxedFreqNorm(0.5)
    assert not np.allclose(relaxed(paddle.to_tensor(device)).numpy(), relaxed(paddle.to_tensor(x)).numpy(), atol=1e-2)


def test_freq_norm_refusals():
    with pytest.raises(ArgumentError, match=r'lam must be a number in \[0, 1\]'):
        RelaxedFreqNorm(1.5)
    with pytest.raises(ArgumentError, match=r'lam must be a number >= 0'):
        ResidualFreqNorm(-0.1)
    with pytest.raises(ArgumentError, match=r'eps must be a positive number'):
        RelaxedFreqNorm(0.5, eps=0)


def test_normalisations_export_with_dynamic_batch_and_frames(tmp_path):
    """SSN and RFN in a static graph (paddle.jit.save, batch and frames dynamic), reloaded: the same
    outputs as the dygraph layers in evaluation mode."""
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(1, 4, 3, padding=1), SubSpectralNorm(4, 4), RelaxedFreqNorm(0.5))
    net.eval()
    spec = paddle.static.InputSpec([None, 1, 16, None], 'float32')
    paddle.jit.save(net, str(tmp_path / 'net'), input_spec=[spec])
    loaded = paddle.jit.load(str(tmp_path / 'net'))
    for shape in ((1, 1, 16, 7), (3, 1, 16, 12)):
        x = paddle.to_tensor(feature_map(shape, seed=9))
        np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)


# --- gradient reversal ------------------------------------------------------------------------

def gradient(layer, x, weights):
    """d/dx of sum(weights * layer(x))."""
    x = paddle.to_tensor(x, stop_gradient=False)
    out = layer(x)
    return out, paddle.grad((out * paddle.to_tensor(weights)).sum(), x)[0].numpy()


def test_gradient_reversal_forward_identity_backward_minus_lambda():
    rng = np.random.default_rng(10)
    x, w = rng.normal(size=(3, 5)).astype('float32'), rng.normal(size=(3, 5)).astype('float32')
    grl = GradientReversal(0.7)
    grl.train()
    out, grad = gradient(grl, x, w)
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_allclose(grad, -0.7 * w, rtol=1e-6)
    grl.lam = 0.0
    np.testing.assert_array_equal(gradient(grl, x, w)[1], np.zeros_like(w))
    assert grl.set_progress(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    np.testing.assert_allclose(gradient(grl, x, w)[1], -grl.lam * w, rtol=1e-6)
    grl.eval()   # identity both ways in evaluation mode
    out, grad = gradient(grl, x, w)
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_allclose(grad, w, rtol=1e-6)
    with pytest.raises(ArgumentError, match=r'lam must be a number >= 0'):
        grl.lam = -1.0


def test_device_classifier_reverses_only_what_reaches_the_embedding():
    paddle.seed(0)
    classifier = DeviceClassifier(6, 3, hidden=(8, 4), lam=0.5)
    classifier.train()
    assert [type(layer).__name__ for layer in classifier.mlp] == ['Linear', 'ReLU', 'Linear', 'ReLU', 'Linear']
    rng = np.random.default_rng(11)
    x = paddle.to_tensor(rng.normal(size=(5, 6)).astype('float32'), stop_gradient=False)
    labels = paddle.to_tensor(rng.integers(0, 3, 5))

    def grads(net):
        loss = paddle.nn.functional.cross_entropy(net(x), labels)
        return [g.numpy() for g in paddle.grad(loss, [x] + list(classifier.mlp.parameters()))]

    reversed_, plain = grads(classifier), grads(classifier.mlp)
    np.testing.assert_allclose(reversed_[0], -0.5 * plain[0], rtol=1e-5, atol=1e-7)
    for a, b in zip(reversed_[1:], plain[1:]):   # the classifier itself learns to tell the devices apart
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert list(classifier(x).shape) == [5, 3]
    with pytest.raises(ArgumentError, match=r'num_devices must be an int >= 2'):
        DeviceClassifier(6, 1)


def test_device_classifier_exports_as_its_mlp_in_evaluation(tmp_path):
    """In evaluation mode the reversal adds nothing to a static graph: the export is the MLP."""
    paddle.seed(1)
    classifier = DeviceClassifier(6, 4)
    classifier.eval()
    paddle.jit.save(classifier, str(tmp_path / 'devices'), input_spec=[paddle.static.InputSpec([None, 6], 'float32')])
    loaded = paddle.jit.load(str(tmp_path / 'devices'))
    x = paddle.to_tensor(np.random.default_rng(12).normal(size=(3, 6)).astype('float32'))
    np.testing.assert_allclose(loaded(x).numpy(), classifier.mlp(x).numpy(), rtol=1e-5, atol=1e-6)


def test_dann_weight():
    for p in (0.0, 0.25, 0.5, 1.0):
        assert dann_weight(p) == pytest.approx(2.0 / (1.0 + np.exp(-10.0 * p)) - 1.0, rel=1e-12)
    assert dann_weight(0.0) == 0.0
    assert dann_weight(0.5) == pytest.approx(0.98661, abs=1e-5)
    assert dann_weight(1.0) == pytest.approx(0.99991, abs=1e-5)
    assert dann_weight(0.5, gamma=2.0) == pytest.approx(2.0 / (1.0 + math.exp(-1.0)) - 1.0)
    with pytest.raises(ArgumentError, match=r'progress must be a number in \[0, 1\]'):
        dann_weight(1.5)


# --- the CP-Mobile variants -------------------------------------------------------------------

def log_mel(batch, frames, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(-4, 2, (batch, frames, N_MELS)).astype('float32')


def test_cpmobile_variant_sizes():
    """SSN with S sub-bands adds 2 x (S - 1) parameters per channel of the stem's two norms;
    RFN adds none."""
    first, second = stage_channels()[0] // 4, stage_channels()[0]
    base = trainable(Module('cpmobile', num_class=10, pretrained=False))
    ssn = Module('cpmobile_ssn', num_class=10, pretrained=False)
    norms = [s for s in ssn.backbone.in_c.sublayers() if isinstance(s, SubSpectralNorm)]
    assert [(n.channels, n.sub_bands) for n in norms] == [(first, 4), (second, 4)]
    assert not any(type(s) is paddle.nn.BatchNorm2D for s in ssn.backbone.in_c.sublayers()
                   if s not in [n.bn for n in norms])
    assert trainable(ssn) == base + 2 * 3 * (first + second) == 61378
    rfn = Module('cpmobile_rfn', num_class=10, pretrained=False)
    assert trainable(rfn) == base == 61138
    assert rfn.backbone.rfn_at == ('input', 'in_c', 's1') and rfn.backbone.rfn.lam == 0.5


def test_rfn_on_the_input_removes_a_device_filter():
    """With the instance norm alone (lam 0) on the log-mel, an offset per mel band (a device's gain
    per band) does not change the embedding; the baseline's does change."""
    x = log_mel(2, 65, seed=1)
    filtered = x + np.random.default_rng(2).normal(0, 2, (1, 1, N_MELS)).astype('float32')
    for net, invariant in ((CPMobile(rfn=0.0, rfn_at=('input',)), True), (CPMobile(), False)):
        net.eval()
        with paddle.no_grad():
            a, b = net.forward_features(paddle.to_tensor(x)), net.forward_features(paddle.to_tensor(filtered))
        assert np.allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4) == invariant


def test_cpmobile_variant_refusals():
    with pytest.raises(ArgumentError, match=r"rfn_at must name one or more of \('input', 'in_c', 's1', 's2', 's3'\)"):
        CPMobile(rfn=0.5, rfn_at=('s4',))
    with pytest.raises(ArgumentError, match=r'lam must be a number in \[0, 1\]'):
        CPMobile(rfn=2.0)
    with pytest.raises(ArgumentError, match=r'128 frequency bins do not split into 3 equal sub-bands'):
        CPMobile(sub_bands=3).forward_features(paddle.to_tensor(log_mel(1, 20)))


@pytest.mark.parametrize('name', ['cpmobile_ssn', 'cpmobile_rfn'])
def test_cpmobile_variants_run_deterministically_and_export(tmp_path, name):
    spec = registry.get_spec(name)
    paddle.seed(0)
    net = spec.build(audioset_head=False)
    net.train()
    net.forward_features(paddle.to_tensor(log_mel(4, 65)))   # one training step's statistics
    net.eval()
    x = paddle.to_tensor(log_mel(3, 81, seed=3))
    with paddle.no_grad():
        first, second = net.forward_features(x).numpy(), net.forward_features(x).numpy()
        single = net.forward_features(x[1:2]).numpy()
    assert first.shape == (3, spec.emb_size) and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(single[0], first[1], rtol=1e-4, atol=1e-5)

    spec_in = paddle.static.InputSpec([None, None, N_MELS], 'float32')
    paddle.jit.save(paddle.jit.to_static(net.forward_features, input_spec=[spec_in], full_graph=True),
                    str(tmp_path / 'net'))
    loaded = paddle.jit.load(str(tmp_path / 'net'))
    for frames in (65, 81):
        clip = paddle.to_tensor(log_mel(2, frames, seed=frames))
        with paddle.no_grad():
            np.testing.assert_allclose(loaded(clip).numpy(), net.forward_features(clip).numpy(), rtol=1e-4, atol=1e-5)


def test_a_baseline_checkpoint_loads_into_cpmobile_rfn(tmp_path):
    """RFN has no parameters: the baseline's weights load into cpmobile_rfn as they are."""
    paddle.seed(1)
    source = CPMobile(**BASELINE)
    path = str(tmp_path / 'baseline.pdparams')
    save_pdparams({k: v.numpy() for k, v in source.state_dict().items()}, path)
    module = Module('cpmobile_rfn', num_class=10, load_checkpoint=path)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(module.backbone.state_dict()[key].numpy(), value.numpy(), err_msg=key)
