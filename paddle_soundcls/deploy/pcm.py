"""The one reader of raw PCM: little-endian samples, channels interleaved, as live streams
send them (the server's WebSocket, the command line's standard input).

numpy only: the Paddle-free runtime uses it.
"""
import numpy as np

from .. import audio

SAMPLE_FORMATS = {'int16': np.dtype('<i2'), 'float32': np.dtype('<f4')}


def frame_bytes(sample_format, channels):
    """Bytes of one frame (a sample of every channel)."""
    return SAMPLE_FORMATS[sample_format].itemsize * channels


def decode(data, sample_format, channels):
    """Bytes of whole frames -> mono float32 samples (int16 scaled by 1/32768). The channel count
    is the stream's, so a chunk of any length, even one frame, is read the same way.

    Raises audio.AudioError naming the problem: a partial frame, NaN/Inf or absurd float samples.
    """
    dtype = SAMPLE_FORMATS[sample_format]
    size = frame_bytes(sample_format, channels)
    if len(data) % size:
        raise audio.AudioError(f'a chunk of {sample_format} PCM with {channels} channel(s) must hold whole frames of '
                               f'{size} bytes; got {len(data)} bytes')
    samples = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
    if sample_format == 'int16':
        samples = samples.astype(np.float32) / 32768.0
    else:
        problem = audio.samples_problem(samples) if samples.size else None
        if problem:
            raise audio.AudioError(f'a float32 chunk {problem}')
    return samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0].astype(np.float32)
