"""The log-mel front end as a Paddle layer, so features are computed in batches on the device."""
import math

import paddle
import paddle.nn as nn

from . import mel
from .config import FrontendConfig


class LogMel(nn.Layer):
    """Waveforms [batch, samples] -> log-mel features [batch, frames, n_mels], as `cfg` describes.

    The window and filter bank are non-persistable buffers: they are derived from the
    config, so checkpoints stay identical to the official ones. The spectrum is computed
    in float64: quiet mel bins sit 90 dB below loud ones, beyond float32 FFT precision,
    and the cost is small next to the CNN.
    """

    def __init__(self, cfg: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.cfg = cfg
        fbank = mel.config_filterbank(cfg)
        self.register_buffer('fbank', paddle.to_tensor(fbank.T.astype('float64')), persistable=False)
        self.register_buffer('window', paddle.to_tensor(mel.stft_window(cfg).astype('float64')), persistable=False)

    def forward(self, waveforms):
        cfg = self.cfg
        x = waveforms.astype('float64')
        if cfg.preemphasis is not None:
            x = x[:, 1:] - cfg.preemphasis * x[:, :-1]
        spec = paddle.signal.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft,
                                  window=self.window, center=cfg.center, pad_mode=cfg.pad_mode)
        if cfg.power == 2.0:  # products, not pow: Paddle's pow kernel took 3% of a CNN14 training step
            re, im = spec.real(), spec.imag()
            power = re * re + im * im
        else:
            power = paddle.abs(spec) ** cfg.power
        mel_spec = paddle.matmul(power.transpose([0, 2, 1]), self.fbank)  # [batch, frames, n_mels]
        if cfg.log == 'ln':
            out = paddle.log(mel_spec + cfg.log_offset)
        else:
            out = 10.0 * paddle.log10(paddle.clip(mel_spec, min=cfg.amin))
            out = out - 10.0 * math.log10(max(cfg.amin, cfg.ref))
            if cfg.top_db is not None:
                peak = out.max(axis=[1, 2], keepdim=True)
                out = paddle.maximum(out, peak - cfg.top_db)
        if (cfg.shift, cfg.scale) != (0.0, 1.0):
            out = (out + cfg.shift) / cfg.scale
        return out.astype('float32')
