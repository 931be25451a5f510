"""Front-end settings, kept as plain data so a checkpoint or export can record them."""
from dataclasses import asdict, dataclass, fields
from typing import Optional
from ..errors import ArgumentError


def settings_from_dict(cls, data, what):
    """A settings dataclass from a dict (e.g. read back from JSON); unknown keys are an error.

    Keys missing from `data` take their defaults, so settings saved before a field existed
    still load with the behaviour they had then.
    """
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ArgumentError(f'unknown {what} settings {sorted(unknown)}; known: {sorted(known)}')
    return cls(**data)


@dataclass(frozen=True)
class FrontendConfig:
    """A log-mel front end, step by step. The defaults are the PANNs settings.

    waveform -> [pre-emphasis] -> STFT power spectrum -> mel filter bank -> log -> (x + shift) / scale

    Other families register theirs with their models (e.g. models/efficientat.py).
    """
    sample_rate: int = 32000
    # Pre-emphasis y[n] = x[n + 1] - preemphasis * x[n], a filter without padding, so the
    # waveform loses one sample; None skips it.
    preemphasis: Optional[float] = None
    n_fft: int = 1024
    win_length: int = 1024            # the window is centred inside n_fft, zeros either side
    hop_length: int = 320
    window: str = 'hann'
    window_periodic: bool = True      # False: the symmetric window (numpy.hanning)
    center: bool = True
    pad_mode: str = 'reflect'
    power: float = 2.0
    n_mels: int = 64
    f_min: float = 50.0
    f_max: Optional[float] = 14000.0
    # 'librosa': triangles in Hz on the Slaney or HTK mel scale, normalised by `mel_norm`.
    # 'kaldi': Kaldi's banks (torchaudio.compliance.kaldi.get_mel_banks), triangles in mel on
    #   the HTK scale, unnormalised, zero at the Nyquist bin. Kaldi's VTLN cut-offs only act
    #   with a warp factor other than 1, which no front end here uses, so they are not settings.
    mel_banks: str = 'librosa'
    mel_norm: Optional[str] = 'slaney'
    htk: bool = False
    # 'db': 10 * log10(max(mel, amin)) - 10 * log10(max(amin, ref)), floored at top_db below
    #   the clip's peak when top_db is set.
    # 'ln': natural log of (mel + log_offset).
    log: str = 'db'
    amin: float = 1e-10
    ref: float = 1.0
    top_db: Optional[float] = None
    log_offset: float = 1e-5
    # The log-mel is finally mapped to (x + shift) / scale (a fixed normalisation).
    shift: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        choices = {'mel_banks': ('librosa', 'kaldi'), 'log': ('db', 'ln'), 'window': ('hann',)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(f'front-end setting {name}={getattr(self, name)!r}: use one of {list(allowed)}')
        if self.win_length > self.n_fft:
            raise ArgumentError(f'front-end win_length {self.win_length} is longer than n_fft {self.n_fft}')

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return settings_from_dict(cls, data, 'front-end')

    def num_frames(self, num_samples):
        """Frames the front end produces for a clip of `num_samples` samples."""
        if self.preemphasis is not None:
            num_samples -= 1
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.n_fft) // self.hop_length

