"""Front-end settings, kept as plain data so a checkpoint or export can record them."""
from dataclasses import asdict, dataclass, fields
from typing import Optional


def settings_from_dict(cls, data, what):
    """A settings dataclass from a dict (e.g. read back from JSON); unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f'unknown {what} settings {sorted(unknown)}; known: {sorted(known)}')
    return cls(**data)


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel front end. The defaults are the PANNs settings the pretrained weights expect."""
    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 320
    window: str = 'hann'
    center: bool = True
    pad_mode: str = 'reflect'
    power: float = 2.0
    n_mels: int = 64
    f_min: float = 50.0
    f_max: Optional[float] = 14000.0
    mel_norm: str = 'slaney'
    htk: bool = False
    amin: float = 1e-10
    ref: float = 1.0
    top_db: Optional[float] = None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return settings_from_dict(cls, data, 'front-end')

    def num_frames(self, num_samples):
        """Frames the front end produces for a clip of `num_samples` samples."""
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.n_fft) // self.hop_length
