"""The log-mel front end as a Paddle layer, so features are computed in batches on the device."""
import math

import paddle
import paddle.nn as nn

from . import mel
from .config import FrontendConfig


class LogMel(nn.Layer):
    """Waveforms [batch, samples] -> log-mel features [batch, frames, n_mels] in dB.

    The window and filter bank are non-persistable buffers: they are derived from the
    config, so checkpoints stay identical to the official ones. The spectrum is computed
    in float64: quiet mel bins sit 90 dB below loud ones, beyond float32 FFT precision,
    and the cost is small next to the CNN.
    """

    def __init__(self, cfg: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.cfg = cfg
        fbank = mel.mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.htk, cfg.mel_norm)
        self.register_buffer('fbank', paddle.to_tensor(fbank.T.astype('float64')), persistable=False)
        self.register_buffer('window', paddle.to_tensor(mel.stft_window(cfg).astype('float64')), persistable=False)

    def forward(self, waveforms):
        cfg = self.cfg
        spec = paddle.signal.stft(waveforms.astype('float64'), n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                  win_length=cfg.n_fft, window=self.window, center=cfg.center, pad_mode=cfg.pad_mode)
        power = paddle.abs(spec) ** cfg.power if cfg.power != 2.0 else spec.real() ** 2 + spec.imag() ** 2
        mel_spec = paddle.matmul(power.transpose([0, 2, 1]), self.fbank)  # [batch, frames, n_mels]
        log_spec = 10.0 * paddle.log10(paddle.clip(mel_spec, min=cfg.amin))
        log_spec = log_spec - 10.0 * math.log10(max(cfg.amin, cfg.ref))
        if cfg.top_db is not None:
            peak = log_spec.max(axis=[1, 2], keepdim=True)
            log_spec = paddle.maximum(log_spec, peak - cfg.top_db)
        return log_spec.astype('float32')
