"""Augmentation: reproducible from the rng, and measured against what each one promises."""
import numpy as np
import paddle
import pytest

from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.training import augment
from paddle_soundcls.training.augment import AugmentConfig

from signals import noise, tone


def rng(seed=0):
    return np.random.default_rng(seed)


def waves_batch(seconds=1.0):
    clips = [tone(440, seconds), tone(1000, seconds, amp=0.1), noise(seconds, amp=0.3), tone(3000, seconds, amp=0.9)]
    return paddle.to_tensor(np.stack(clips))


def feats_batch(batch=4, frames=50, bins=16, seed=0):
    # Log-mel-like values in dB: far from 0, so a 0 fill would stand out.
    values = np.random.default_rng(seed).normal(-40.0, 10.0, size=(batch, frames, bins))
    return paddle.to_tensor(values.astype('float32'))


def test_config_defaults_and_validation():
    cfg = AugmentConfig()
    assert not cfg.enabled and not cfg.changes_audio
    assert AugmentConfig(gain_db=6).changes_audio and AugmentConfig(noise_snr_db=20).changes_audio
    only_masks = AugmentConfig(time_masks=2, time_mask_width=10)
    assert only_masks.enabled and not only_masks.changes_audio
    assert AugmentConfig(mixup_alpha=0.2).enabled
    assert AugmentConfig.from_dict(only_masks.to_dict()) == only_masks
    for bad in [dict(time_masks=-1), dict(time_masks=2), dict(freq_masks=1.5, freq_mask_width=3),
                dict(mixup_alpha=-0.1), dict(gain_db=float('nan')), dict(noise_snr_db='20')]:
        with pytest.raises(ValueError, match='AugmentConfig'):
            AugmentConfig(**bad)
    with pytest.raises(ValueError, match='unknown'):
        AugmentConfig.from_dict({'pitch_shift': 2})


def test_rng_must_be_a_generator():
    with pytest.raises(ArgumentError, match='default_rng'):
        augment.random_gain(waves_batch(), 6.0, np.random.RandomState(0))


def test_same_seed_same_output():
    cfg = AugmentConfig(gain_db=6, noise_snr_db=10, time_masks=2, time_mask_width=8, freq_masks=2,
                        freq_mask_width=4, mixup_alpha=0.4)
    targets = paddle.nn.functional.one_hot(paddle.to_tensor([0, 1, 2, 1]), 3)
    outputs = []
    for seed in (5, 5, 6):
        waves = augment.apply(cfg, waves_batch(), rng(seed))
        feats, mixed = augment.apply_features(cfg, feats_batch(), targets, rng(seed))
        outputs.append((waves.numpy(), feats.numpy(), mixed.numpy()))
    for a, b in zip(outputs[0], outputs[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outputs[0][0], outputs[2][0])
    assert not np.array_equal(outputs[0][1], outputs[2][1])


def test_disabled_config_changes_nothing():
    waves, feats = waves_batch(), feats_batch()
    cfg = AugmentConfig()
    np.testing.assert_array_equal(augment.apply(cfg, waves, rng()).numpy(), waves.numpy())
    out, targets = augment.apply_features(cfg, feats, None, rng())
    np.testing.assert_array_equal(out.numpy(), feats.numpy())
    assert targets is None


def test_gain_within_bounds():
    waves = paddle.to_tensor(np.tile(tone(440, 0.1), (64, 1)))
    out = augment.random_gain(waves, 6.0, rng(1)).numpy()
    # Measured gain of each clip from its RMS change.
    gain_db = 20 * np.log10(np.sqrt((out ** 2).mean(axis=1)) / np.sqrt((waves.numpy() ** 2).mean(axis=1)))
    assert np.all(np.abs(gain_db) <= 6.0 + 1e-4)
    assert gain_db.min() < -3 and gain_db.max() > 3   # the range is actually used
    assert len(np.unique(np.round(gain_db, 3))) > 50   # one draw per clip
    # The waveform shape is kept: a pure scaling.
    np.testing.assert_allclose(out, waves.numpy() * 10 ** (gain_db[:, None] / 20), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('snr_db', [0.0, 10.0, 30.0])
def test_noise_snr_measured(snr_db):
    waves = waves_batch(seconds=4.0)
    clean = waves.numpy().astype(np.float64)
    out = augment.add_noise(waves, snr_db, rng(2)).numpy().astype(np.float64)
    added = out - clean
    measured = 10 * np.log10((clean ** 2).mean(axis=1) / (added ** 2).mean(axis=1))
    np.testing.assert_allclose(measured, snr_db, atol=0.5)
    # White: the added noise is uncorrelated from sample to sample.
    lag1 = [np.corrcoef(a[:-1], a[1:])[0, 1] for a in added]
    assert np.all(np.abs(lag1) < 0.05)


def test_silent_clip_stays_silent():
    waves = waves_batch(0.5).numpy()
    waves[1] = 0.0
    out = augment.add_noise(paddle.to_tensor(waves), 10.0, rng(3)).numpy()
    assert np.all(out[1] == 0.0)
    assert np.any(out[0] != waves[0])


def runs(mask_1d):
    """Lengths of the runs of True in a 1-D boolean array."""
    padded = np.r_[False, mask_1d, False].astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


def test_single_masks_at_most_the_width():
    feats = feats_batch(batch=32, frames=60, bins=20)
    original = feats.numpy()
    out = augment.spec_augment(feats, 1, 7, 1, 4, rng(4)).numpy()
    changed = out != original
    time_runs, freq_runs = [], []
    for clip in range(32):
        # A masked frame is changed in every bin; a masked bin in every frame.
        whole_frames = changed[clip].all(axis=1)
        whole_bins = changed[clip].all(axis=0)
        time_runs += list(runs(whole_frames))
        freq_runs += list(runs(whole_bins))
        assert np.all(changed[clip] == (whole_frames[:, None] | whole_bins[None, :]))
        fill = original[clip].mean()
        np.testing.assert_allclose(out[clip][changed[clip]], fill, rtol=1e-5)
    assert time_runs and max(time_runs) <= 7
    assert freq_runs and max(freq_runs) <= 4
    assert max(time_runs) >= 5   # widths are drawn from the whole range


def test_several_masks_cover_at_most_their_total_width():
    feats = feats_batch(batch=16, frames=80, bins=32)
    out = augment.spec_augment(feats, 3, 5, 2, 3, rng(5), fill=0.0).numpy()
    masked = out == 0.0
    assert masked.any()
    frames_masked = masked.all(axis=2).sum(axis=1)
    bins_masked = masked.all(axis=1).sum(axis=1)
    assert np.all(frames_masked <= 3 * 5)
    assert np.all(bins_masked <= 2 * 3)


def test_mixup_convex_with_shared_lambda():
    batch, num_classes = 8, 5
    feats = feats_batch(batch=batch, frames=10, bins=6)
    labels = np.arange(batch) % num_classes
    targets = paddle.nn.functional.one_hot(paddle.to_tensor(labels), num_classes)
    out, mixed = augment.mixup(feats, targets, 0.4, rng(6))
    out, mixed, x = out.numpy(), mixed.numpy(), feats.numpy()
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(mixed >= 0)
    # Recover lambda and the partner of every clip from the features, then check the targets.
    lambdas = []
    for i in range(batch):
        if np.allclose(out[i], x[i], rtol=1e-6):
            # Paired with itself: unchanged clip and target.
            np.testing.assert_allclose(mixed[i], np.eye(num_classes)[labels[i]], atol=1e-6)
            continue
        for j in range(batch):
            if j == i:
                continue
            lam = np.sum((out[i] - x[j]) * (x[i] - x[j])) / np.sum((x[i] - x[j]) ** 2)
            if np.allclose(out[i], lam * x[i] + (1 - lam) * x[j], atol=1e-3):
                lambdas.append(lam)
                expected = lam * np.eye(num_classes)[labels[i]] + (1 - lam) * np.eye(num_classes)[labels[j]]
                np.testing.assert_allclose(mixed[i], expected, atol=1e-5)
                break
        else:
            pytest.fail(f'clip {i} is not a mix of two input clips')
    assert lambdas and np.ptp(lambdas) < 1e-4   # one lambda for the whole batch
    assert 0 < lambdas[0] < 1


def test_mixup_needs_float_targets():
    with pytest.raises(ValueError, match='one-hot'):
        augment.mixup(feats_batch(), paddle.to_tensor([0, 1, 2, 3]), 0.4, rng())
    with pytest.raises(ValueError, match='targets'):
        augment.apply_features(AugmentConfig(mixup_alpha=0.4), feats_batch(), None, rng())


# ----- Freq-MixStyle, impulse responses, supervised contrastive loss -----

def test_freq_mixstyle_mixes_per_frequency_statistics():
    from paddle_soundcls.training.augment import freq_mixstyle
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 50, 8)).astype('float32')
    x[1] = x[1] * 5 - 20                     # another "device": other level and spread
    out = freq_mixstyle(paddle.to_tensor(x), 0.3, np.random.default_rng(7)).numpy()
    rng = np.random.default_rng(7)
    lam, perm = rng.beta(0.3, 0.3, size=(4, 1, 1)), rng.permutation(4)
    mu, sigma = x.mean(axis=1, keepdims=True), np.sqrt(x.var(axis=1, keepdims=True) + 1e-6)
    expected = (x - mu) / sigma * (lam * sigma + (1 - lam) * sigma[perm]) + lam * mu + (1 - lam) * mu[perm]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_impulse_responses_convolve_and_keep_the_level(tmp_path):
    import soundfile as sf
    from paddle_soundcls.training.augment import convolve_impulse_responses, load_impulse_responses
    ir = np.zeros(800, 'float32')
    ir[0], ir[400] = 1.0, 0.5                # direct sound and one echo 12.5 ms later
    sf.write(tmp_path / 'device.wav', ir, 32000)
    (tmp_path / 'notes.txt').write_text('not audio')
    [loaded] = load_impulse_responses(str(tmp_path), 32000)
    np.testing.assert_allclose(loaded, ir / np.sqrt(np.sum(ir ** 2)), atol=1e-4)
    waves = np.random.default_rng(1).normal(0, 0.1, (2, 4000)).astype('float32')
    out = convolve_impulse_responses(paddle.to_tensor(waves), [loaded], 1.0, np.random.default_rng(0)).numpy()
    for i in range(2):
        wet = np.convolve(waves[i], loaded)[:4000]
        np.testing.assert_allclose(out[i], wet * np.abs(waves[i]).max() / np.abs(wet).max(), atol=1e-4)
    untouched = convolve_impulse_responses(paddle.to_tensor(waves), [loaded], 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(untouched.numpy(), waves)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('x')
    from paddle_soundcls import Module, Trainer
    model = Module('panns_cnn6', num_class=2, pretrained=False)
    with pytest.raises(ValueError, match=f'{empty}.*no readable audio'):
        Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()),
                augment=AugmentConfig(impulse_responses=str(empty), impulse_response_p=0.5))
    with pytest.raises(ValueError, match='go together'):
        AugmentConfig(impulse_responses=str(tmp_path))


def test_supcon_loss_is_the_formula():
    from paddle_soundcls.training.losses import SupConLoss
    rng = np.random.default_rng(2)
    z = rng.normal(size=(6, 5))
    labels = np.array([0, 1, 0, 2, 1, 0])
    tau = 0.2
    got = float(SupConLoss(tau)(paddle.to_tensor(z, 'float32'), paddle.to_tensor(labels)))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = zn @ zn.T / tau
    total, anchors = 0.0, 0
    for i in range(6):
        others = [a for a in range(6) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue                          # class 2 has one sample: no positive, left out
        log_denominator = np.log(np.sum(np.exp(sim[i, others])))
        total += -np.mean([sim[i, p] - log_denominator for p in positives])
        anchors += 1
    assert got == pytest.approx(total / anchors, rel=1e-5)
