"""Audio in: read a file or take an array, downmix to mono, resample, check the values.

numpy + soundfile only, so the Paddle-free deployment runtime uses exactly the same
loading and resampling as training and `Module.predict` (the same rate everywhere).
"""
import math
import os
import struct
from fractions import Fraction
from functools import lru_cache

import numpy as np
import soundfile as sf
from . import validate
from .errors import AudioError  # (re-exported: audio.AudioError is where callers know it)
from .validate import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE  # (re-exported: the range of plausible rates)

AUDIO_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3', '.aiff', '.aif', '.au')
# Larger sample values are not audio either (even unscaled 32-bit integer PCM stays below
# 2.2e9), and squared in the front end they would overflow float32 to Inf.
MAX_ABS_SAMPLE = 1e10


def _reason(exc):
    """libsndfile's message without its trailing full stops."""
    return str(exc).rstrip('. ')


def wav_truncation(path):
    """For a RIFF/WAVE file: a sentence if its data chunk is shorter than the header says, else None.

    libsndfile quietly reads what is there, so an interrupted copy would otherwise pass as a
    shorter clip.
    """
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
                return None
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, chunk_size = struct.unpack('<4sI', f.read(8))
                if chunk_id == b'data':
                    available = size - pos - 8
                    # 0 and 0xFFFFFFFF are placeholders of streaming writers, not sizes.
                    if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                        return (f'truncated: the header announces {chunk_size} bytes of audio, '
                                f'the file holds {available}')
                    return None
                pos += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None  # the soundfile check reports unreadable files
    return None


def check_sample_rate(sample_rate, name='sample_rate'):
    """validate.sample_rate for the rate of audio (an argument or a file header): an AudioError."""
    return validate.sample_rate(name, sample_rate, error=AudioError)


def list_audio_files(root):
    """Audio files under the folder `root`, by extension, searched recursively, sorted.

    Hidden files and folders are skipped: `._x.wav` files are macOS metadata, not audio.
    The one lister for datasets, parity checks, calibration and the command line.
    """
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        found += [os.path.join(folder, name) for name in files
                  if not name.startswith('.') and name.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(found)


def header_problem(path):
    """None when the header of `path` describes usable audio, else a sentence saying why not.

    Reads the header only: not found, empty, not an audio format, no frames, a sample rate
    that is not audio, or (WAV) a data chunk cut short.
    """
    if not os.path.isfile(path):
        return 'file not found'
    if os.path.getsize(path) == 0:
        return 'empty file (0 bytes)'
    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises several types for bad files
        return f'not readable as audio ({_reason(exc)}): not a WAV/FLAC/OGG file, or a damaged one'
    if info.frames <= 0 or info.channels <= 0:
        return 'holds no audio frames'
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        return (f'its header gives a sample rate of {info.samplerate} Hz, outside the '
                f'{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz of audio: the header is damaged')
    return wav_truncation(path)


def read_audio(path):
    """Read a file as float32 [samples, channels] and its sample rate."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f'audio file not found: {path}')
    problem = header_problem(path)
    if problem:
        raise AudioError(f'cannot use audio file {path}: {problem}. Replace the file or leave it out.')
    try:
        data, sr = sf.read(path, dtype='float32', always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioError(f'cannot read audio file {path}: {_reason(exc)}. The file is damaged; replace it '
                         f'or leave it out.') from None
    problem = samples_problem(data)  # every channel, before they are mixed
    if problem:
        raise AudioError(f'{path} {problem}')
    return data, sr


def to_mono(wave, name='waveform'):
    """[samples] or [samples, channels] / [channels, samples] -> [samples] float32.

    2-D arrays put channels on the shorter axis (audio has far more samples than channels).
    """
    wave = np.asarray(wave)
    if wave.dtype.kind not in 'fiu':
        raise AudioError(f'{name}: expected a numeric array, got dtype {wave.dtype}')
    if wave.ndim == 2:
        wave = wave.mean(axis=0 if wave.shape[0] < wave.shape[1] else 1)
    elif wave.ndim != 1:
        raise AudioError(f'{name}: expected a 1-D or 2-D waveform, got shape {wave.shape}')
    if wave.dtype.kind in 'iu':
        # PCM: signed samples are scaled by 2**(bits-1) (int16 -32768 -> -1.0); unsigned ones
        # (8-bit WAV) are centred on 2**(bits-1) first, so uint8 [0, 128, 255] -> [-1, 0, 0.992].
        half = float(2 ** (8 * wave.dtype.itemsize - 1))
        wave = (wave.astype(np.float64) - (half if wave.dtype.kind == 'u' else 0.0)) / half
    return np.ascontiguousarray(wave, dtype=np.float32)


def samples_problem(wave):
    """None when the samples of `wave` are usable, else a sentence saying why not."""
    if wave.size == 0:
        return 'has no samples'
    # min and max carry any NaN or Inf with them, and need no copy of a long recording.
    low, high = float(wave.min()), float(wave.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        return 'contains NaN or Inf samples; clean or drop this input'
    peak = max(-low, high)
    if peak > MAX_ABS_SAMPLE:
        return (f'has samples as large as {peak:.3g}, which is not audio (float audio lies within [-1, 1]); '
                f'the data is damaged or was written in another format')
    return None


def check_waveform(wave, name='waveform'):
    problem = samples_problem(wave)
    if problem:
        raise AudioError(f'{name} {problem}')
    return wave


# Names what load() makes of a file's samples (downmix, resampling filter): caches of decoded
# waveforms are keyed on it, so bump it whenever a change here gives different samples.
RESAMPLER_VERSION = 1


@lru_cache(maxsize=32)
def _polyphase_filter(up, down, zero_crossings=16, beta=8.6):
    """Kaiser-windowed sinc low-pass for rational resampling, split into `up` phases."""
    cutoff = 1.0 / max(up, down)
    half = zero_crossings * max(up, down)
    t = np.arange(-half, half + 1)
    taps = up * cutoff * np.sinc(cutoff * t) * np.kaiser(len(t), beta)
    taps_per_phase = math.ceil(len(taps) / up)
    taps = np.pad(taps, (0, taps_per_phase * up - len(taps)))
    # phases[p, k] = taps[p + k * up]: the taps that meet input samples for output phase p.
    return taps.reshape(taps_per_phase, up).T.astype(np.float32), half


# The filter has 32 * max(up, down) taps: the common rates need at most 1280 (11025 -> 32000).
MAX_RATIO_TERM = 2048


def resample_ratio(orig_sr, target_sr):
    """(up, down): target_sr / orig_sr in lowest terms, or, when that needs terms above
    MAX_RATIO_TERM (rates such as 44101 Hz), the nearest fraction whose terms do not
    (a relative rate error of the order of 1e-5, far below audible), so the filter stays small."""
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    if max(up, down) > MAX_RATIO_TERM:
        ratio = Fraction(target_sr, orig_sr)
        ratio = ratio.limit_denominator(max(1, min(MAX_RATIO_TERM, int(MAX_RATIO_TERM / ratio))))
        up, down = ratio.numerator, ratio.denominator
    return up, down


# Elements of the [outputs, taps] arrays one resampling step gathers: bounds its memory
# (about 12 bytes each) whatever the ratio (768 kHz -> 32 kHz needs 769 taps per output).
RESAMPLE_STEP_ELEMENTS = 1 << 20


class Resampler:
    """Band-limited rational resampling of a stream (polyphase windowed sinc), in pieces.

    push(samples) -> the output samples that the input so far determines; flush() -> the rest,
    as if the input ended there (zeros beyond). The concatenated output equals `resample` of
    the whole input, whatever the sizes of the pieces; memory: the filter's span of input.
    """

    def __init__(self, orig_sr, target_sr):
        self.orig_sr, self.target_sr = int(orig_sr), int(target_sr)
        self.up, self.down = resample_ratio(self.orig_sr, self.target_sr)
        self.phases, self.half = _polyphase_filter(self.up, self.down)
        self.taps = self.phases.shape[1]
        self.received = 0                   # input samples pushed
        self.emitted = 0                    # output samples given out
        # Input samples from stream index `start` on; the zeros before the stream's start included.
        self.buffer = np.zeros(self.taps, np.float32)
        self.start = -self.taps

    def _base(self, n):
        # Output n is centred on position n*down + half of the upsampled, filter-delayed signal;
        # it reads input samples base - taps + 1 .. base with filter phase (n*down + half) % up.
        return (n * self.down + self.half) // self.up

    def _outputs(self, stop):
        """Output samples emitted .. stop-1, in steps of bounded memory."""
        count = stop - self.emitted
        out = np.empty(max(count, 0), np.float32)
        k = np.arange(self.taps)
        step = max(1, RESAMPLE_STEP_ELEMENTS // self.taps)
        for first in range(0, max(count, 0), step):
            n = np.arange(self.emitted + first, min(self.emitted + first + step, stop))
            pos = n * self.down + self.half
            gathered = self.buffer[(pos // self.up - self.start)[:, None] - k[None, :]]
            out[first:first + len(n)] = np.einsum('nk,nk->n', gathered, self.phases[pos % self.up])
        self.emitted = max(self.emitted, stop)
        # Keep only the input a later output reads.
        keep_from = self._base(self.emitted) - self.taps + 1
        drop = min(max(keep_from - self.start, 0), len(self.buffer))
        self.buffer, self.start = self.buffer[drop:], self.start + drop
        return out

    def push(self, samples):
        samples = np.asarray(samples, dtype=np.float32)
        if self.orig_sr == self.target_sr:
            self.received += len(samples)
            self.emitted += len(samples)
            return samples
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        # Outputs whose newest input sample has arrived: base(n) <= received - 1.
        ready = max(0, -(-(self.received * self.up - self.half) // self.down))
        return self._outputs(ready)

    def flush(self):
        if self.orig_sr == self.target_sr:
            return np.zeros(0, np.float32)
        total = -(-(self.received * self.up) // self.down)
        needed = self._base(max(total - 1, 0)) + 1 - (self.start + len(self.buffer))
        self.buffer = np.concatenate([self.buffer, np.zeros(max(needed, 0), np.float32)])
        return self._outputs(total)


def resample(wave, orig_sr, target_sr):
    """Band-limited rational resampling of a 1-D float32 array (polyphase windowed sinc)."""
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr == target_sr:
        return wave
    resampler = Resampler(orig_sr, target_sr)
    return np.concatenate([resampler.push(wave), resampler.flush()])


def load(source, sample_rate, target_sr, name=None):
    """A path or an array -> mono float32 at target_sr, checked.

    source: a file path (its own rate is used; `sample_rate` may be None) or a numpy
    waveform at `sample_rate` Hz.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        data, sr = read_audio(source)
        # The file says which axis holds the channels: no guessing from the shape.
        wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    else:
        name = name or 'waveform'
        if sample_rate is None:
            raise AudioError(f'{name}: sample_rate is required for numpy waveforms (the rate of the array, in Hz)')
        sr = check_sample_rate(sample_rate)
        wave = to_mono(source, name)
    check_waveform(wave, name)
    return resample(wave, sr, target_sr)


def crop_offset(num_samples, length, rng=None):
    """Where fix_length crops a clip of num_samples to `length`: the centre, or a random place
    drawn from the np.random.Generator `rng`; 0 when the clip is not longer."""
    if num_samples <= length:
        return 0
    return int(rng.integers(0, num_samples - length + 1)) if rng is not None else (num_samples - length) // 2


def fix_length(wave, length, rng=None):
    """Crop or zero-pad to `length` samples: a centred crop, or a random one drawn from the
    np.random.Generator `rng` (training)."""
    n = len(wave)
    if n > length:
        offset = crop_offset(n, length, rng)
        return wave[offset:offset + length]
    if n < length:
        return np.pad(wave, (0, length - n))
    return wave
