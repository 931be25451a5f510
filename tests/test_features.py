"""The log-mel front ends: PANNs' against librosa (the independent reference), every registered
one numpy against Paddle. EfficientAT's against its own code is in test_efficientat.py."""
import math

import librosa
import numpy as np
import paddle
import pytest

from paddle_soundcls.models import registry
from paddle_soundcls.features import FrontendConfig, LogMel, mel
from paddle_soundcls.models.efficientat import EFFICIENTAT_FRONTEND
from signals import chirp, noise, tone

CFG = FrontendConfig()
# Every front end a registered model uses -> the first such model (importing models.efficientat
# above registers its models).
FRONTENDS = {}
for _name in registry.list_models():
    FRONTENDS.setdefault(registry.get_spec(_name).frontend, _name)


def librosa_logmel(wave, cfg=CFG):
    spec = librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window='hann', center=True, pad_mode='reflect', power=2.0, n_mels=cfg.n_mels, fmin=cfg.f_min,
        fmax=cfg.f_max, htk=False, norm='slaney')
    return librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=None).T


def clicks(seconds=1.0, sr=32000):
    wave = np.zeros(int(seconds * sr), dtype='float32')
    wave[::sr // 7] = 0.9
    return wave


# Real recordings have a noise floor. A mathematically clean chirp has mel bins near the
# -100 dB floor (amin), where float32 spectra cannot agree even with librosa's own float64
# result (they differ by several dB there), so each signal carries a faint noise floor.
SIGNALS = {
    'tone+noise': tone(440, 2.0) + noise(2.0, amp=0.05),
    'chirp': chirp(100, 12000, 2.0) + noise(2.0, amp=1e-3, seed=2),
    'noise': noise(1.5, amp=0.3, seed=3),
    'clicks': clicks(1.0) + noise(1.0, amp=1e-3, seed=4),
    'quiet': tone(3000, 1.0, amp=1e-4) + noise(1.0, amp=1e-5, seed=5),
}


def test_mel_filterbank_matches_librosa():
    ours = mel.mel_filterbank(32000, 1024, 64, 50.0, 14000.0)
    ref = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0, htk=False, norm='slaney')
    np.testing.assert_allclose(ours, ref, atol=1e-8)
    ours_htk = mel.mel_filterbank(16000, 512, 40, 0.0, None, htk=True)
    ref_htk = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=0.0, fmax=None, htk=True, norm='slaney')
    np.testing.assert_allclose(ours_htk, ref_htk, atol=1e-8)


@pytest.mark.parametrize('name', sorted(SIGNALS))
def test_paddle_logmel_matches_librosa(name):
    wave = SIGNALS[name]
    ref = librosa_logmel(wave)
    ours = LogMel(CFG)(paddle.to_tensor(wave[None])).numpy()[0]
    assert ours.shape == ref.shape == (CFG.num_frames(len(wave)), 64)
    assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.parametrize('name', sorted(SIGNALS))
def test_numpy_logmel_matches_librosa(name):
    wave = SIGNALS[name]
    assert np.abs(mel.logmel(wave, CFG) - librosa_logmel(wave)).max() < 1e-3


def test_batches_equal_single_clips():
    waves = np.stack([SIGNALS['tone+noise'][:32000], SIGNALS['chirp'][:32000], SIGNALS['noise'][:32000]])
    batch = LogMel(CFG)(paddle.to_tensor(waves)).numpy()
    for i, wave in enumerate(waves):
        np.testing.assert_allclose(batch[i], librosa_logmel(wave), atol=1e-3)


def in_db(features, cfg):
    """Front-end output back in dB: undo (x + shift) / scale, and turn natural logs into dB."""
    x = features.astype(np.float64) * cfg.scale - cfg.shift
    return x * (10.0 / math.log(10.0)) if cfg.log == 'ln' else x


@pytest.mark.parametrize('cfg', list(FRONTENDS), ids=list(FRONTENDS.values()))
def test_numpy_front_end_matches_paddle_layer(cfg):
    layer = LogMel(cfg)
    waves = np.stack([SIGNALS['tone+noise'][:32000], SIGNALS['chirp'][:32000], SIGNALS['quiet']])
    for batch in (waves, waves[:1, :12345]):
        ours = mel.logmel(batch, cfg)
        ref = layer(paddle.to_tensor(batch)).numpy()
        assert ours.dtype == ref.dtype == np.float32
        assert ours.shape == ref.shape == (len(batch), cfg.num_frames(batch.shape[1]), cfg.n_mels)
        # numpy works in float32, the layer in float64: within 80 dB of the peak they agree to
        # ~1e-3 dB; far below it float32 rounding shows as a few hundredths of a dB.
        ours, ref = in_db(ours, cfg), in_db(ref, cfg)
        loud = ref > ref.max() - 80
        np.testing.assert_allclose(ours[loud], ref[loud], atol=2e-3)
        np.testing.assert_allclose(ours, ref, atol=0.05)


@pytest.mark.parametrize('cfg', list(FRONTENDS), ids=list(FRONTENDS.values()))
def test_overlapping_windows_that_share_frames_get_logmel_of_each_window(cfg, monkeypatch):
    """OverlapFeatures: each window's features are logmel() of its samples bit for bit (edges padded as the
    window's own, pre-emphasis and all), whatever windows came before (overlapping, adjacent, after
    a gap, a last window off the hop grid), while each frame of the stream is computed about once."""
    if cfg.top_db is not None:
        pytest.skip('a front end that normalises each clip cannot share frames')
    rows = []
    mel_power = mel.mel_power
    monkeypatch.setattr(mel, 'mel_power', lambda frames, c: (rows.append(frames.shape[-2]), mel_power(frames, c))[1])
    sr, hop = cfg.sample_rate, cfg.hop_length
    wave = (noise(8.0, amp=0.1, seed=7)[:8 * sr] + tone(700, 8.0)[:8 * sr]).astype(np.float32)
    window, step = 128 * hop, 32 * hop
    starts = list(range(0, 6 * sr - window, step))
    starts += [starts[-1] + 3 * step, starts[-1] + 3 * step + 5 * hop]   # a gap; then off the grid
    features = mel.OverlapFeatures(cfg)
    shared = [features.window(start, wave[start:start + window]) for start in starts]
    regular = len(starts) - 2
    # Each later regular window computes its 32 new frames and those at its edges, which see padding.
    edges = 2 * -(-cfg.n_fft // 2 // hop) + 1
    assert sum(rows[:regular]) <= cfg.num_frames(window) + (regular - 1) * (32 + edges) < regular * cfg.num_frames(window)
    for start, got in zip(starts, shared):
        want = mel.logmel(wave[start:start + window], cfg)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)   # every frame computed on its own: the same numbers
    earlier = starts[1]   # asked for after later windows (the server's deferred features may be): still logmel's
    np.testing.assert_array_equal(features.window(earlier, wave[earlier:earlier + window]),
                                  mel.logmel(wave[earlier:earlier + window], cfg))


def test_efficientat_is_among_the_front_ends():
    assert EFFICIENTAT_FRONTEND in FRONTENDS and CFG in FRONTENDS


def test_single_clip_gives_frames_by_mels():
    wave = SIGNALS['noise'][:16000]
    for cfg in FRONTENDS:
        assert mel.logmel(wave, cfg).shape == (cfg.num_frames(16000), cfg.n_mels)


@pytest.mark.parametrize('num_samples', [16000, 16001, 16320, 16321, 16640])
def test_num_frames(num_samples):
    # Pre-emphasis (EfficientAT) shortens the clip by one sample before framing.
    wave = noise(1.0, seed=7)[:num_samples]
    for cfg in FRONTENDS:
        assert mel.logmel(wave, cfg).shape[0] == cfg.num_frames(num_samples)
    assert CFG.num_frames(16320) == 52 and EFFICIENTAT_FRONTEND.num_frames(16320) == 51


def test_efficientat_window_and_preemphasis():
    # A symmetric Hann window of 800 samples centred in 1024, as torch.hann_window(800, periodic=False).
    win = mel.stft_window(EFFICIENTAT_FRONTEND)
    np.testing.assert_allclose(win[112:912], np.hanning(800), atol=1e-12)
    assert not win[:112].any() and not win[912:].any()
    x = np.array([1.0, 2.0, 4.0], np.float32)
    np.testing.assert_allclose(mel.preemphasis(x, 0.97), [2 - 0.97, 4 - 1.94], rtol=1e-6)


def test_kaldi_mel_banks():
    # Kaldi's construction: triangles equally spaced on 1127 ln(1 + f / 700) from f_min to f_max,
    # peaking at 1 on their centre, unnormalised, nothing at or above f_max nor at the Nyquist bin.
    banks = mel.mel_filterbank(32000, 1024, 128, 0.0, 15000.0, banks='kaldi')
    assert banks.shape == (128, 513)
    assert banks.min() == 0.0 and banks.max() <= 1.0 and not banks[:, -1].any()
    freqs = np.arange(513) * 32000 / 1024
    assert banks[:, freqs >= 15000].max() < 1e-9  # the last band ends at f_max (up to rounding)
    mels = 1127 * np.log1p(freqs / 700)
    centres = np.linspace(0, 1127 * np.log1p(15000 / 700), 130)[1:-1]
    peaks = mels[banks.argmax(axis=1)]
    bin_width = np.diff(mels)
    assert np.all(np.abs(peaks - centres) <= bin_width[banks.argmax(axis=1)])
    np.testing.assert_array_equal(mel.config_filterbank(EFFICIENTAT_FRONTEND), banks)


def test_config_round_trip_and_unknown_keys():
    assert FrontendConfig.from_dict(CFG.to_dict()) == CFG
    assert FrontendConfig.from_dict(EFFICIENTAT_FRONTEND.to_dict()) == EFFICIENTAT_FRONTEND
    with pytest.raises(ValueError, match='unknown front-end settings'):
        FrontendConfig.from_dict({**CFG.to_dict(), 'n_mfcc': 13})
    with pytest.raises(ValueError, match="mel_banks='htk'"):
        FrontendConfig(mel_banks='htk')


def test_settings_saved_before_the_new_fields_still_load():
    # Checkpoints and exports store to_dict(); older ones have only these keys.
    old = {'sample_rate': 32000, 'n_fft': 1024, 'win_length': 1024, 'hop_length': 320, 'window': 'hann',
           'center': True, 'pad_mode': 'reflect', 'power': 2.0, 'n_mels': 64, 'f_min': 50.0, 'f_max': 14000.0,
           'mel_norm': 'slaney', 'htk': False, 'amin': 1e-10, 'ref': 1.0, 'top_db': None}
    cfg = FrontendConfig.from_dict(old)
    assert cfg == CFG
    wave = SIGNALS['tone+noise']
    np.testing.assert_array_equal(mel.logmel(wave, cfg), mel.logmel(wave, CFG))


def test_mel_bands_are_the_dense_filter_bank_product_empty_bands_and_nan_included():
    """The mel sums over each band's bins equal power @ filter bank (float64 reference) where bands are
    empty (128 bands on 129 bins), and a frame holding a NaN gives NaN in every band, as the product does."""
    cfg = FrontendConfig(n_fft=256, win_length=256, n_mels=128)
    fbank = mel.config_filterbank(cfg)
    assert (fbank.sum(axis=1) == 0).any()   # some bands hold no bin
    wave = noise(1.0, amp=0.3, seed=9)[:8000].astype(np.float32)
    wave[4200] = np.nan
    frames = mel.stft_frames(mel.padded_signal(wave[None], cfg), cfg)[0]
    got = mel.mel_power(frames, cfg)
    spectrum = np.fft.rfft(frames.astype(np.float64) * mel.stft_window(cfg), axis=-1)
    want = (np.abs(spectrum) ** 2) @ fbank.T
    bad = np.isnan(want).any(axis=1)
    assert bad.any() and np.isnan(got[bad]).all() and not np.isnan(got[~bad]).any()
    np.testing.assert_allclose(got[~bad], want[~bad], rtol=1e-5, atol=1e-6 * want[~bad].max())
