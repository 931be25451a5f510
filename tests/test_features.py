"""The log-mel front end against librosa (the independent reference)."""
import librosa
import numpy as np
import paddle
import pytest

from paddle_soundcls.features import FrontendConfig, LogMel, mel
from signals import chirp, noise, tone

CFG = FrontendConfig()


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


def test_config_round_trip_and_unknown_keys():
    assert FrontendConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match='unknown front-end settings'):
        FrontendConfig.from_dict({**CFG.to_dict(), 'n_mfcc': 13})
