"""Uploaded bytes -> a mono float32 waveform at the model's rate, or an ApiError saying why not.

The same steps as `paddle_soundcls.audio.read_audio` (header check, sample-rate check, sample
check, downmix, resampling), on bytes in memory instead of a path. The duration is checked
from the header, before any sample is decoded: a small compressed file can hold hours of
silence, which would otherwise be decoded in full.
"""
import base64
import binascii
import io
import re
import struct

import numpy as np
import soundfile as sf

from .. import audio
from .settings import ApiError

FORMATS = 'WAV, FLAC, OGG or MP3'


def wav_truncation(data):
    """For RIFF/WAVE bytes: a sentence if the data chunk is shorter than its header says, else None.

    libsndfile reads what is there without complaint, so an upload cut short would otherwise be
    classified as a shorter clip. (audio.wav_truncation does the same for a file on disk.)
    """
    if len(data) < 12 or data[:4] != b'RIFF' or data[8:12] != b'WAVE':
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, chunk_size = struct.unpack_from('<4sI', data, pos)
        if chunk_id == b'data':
            available = len(data) - pos - 8
            # 0 and 0xFFFFFFFF are placeholders of streaming writers, not sizes.
            if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                return (f'is truncated: its header announces {chunk_size} bytes of audio, the upload holds '
                        f'{available}; send the whole file')
            return None
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


_OPENING = re.compile(r'^Error opening <[^>]*>: ')


def _reason(exc):
    """libsndfile's message, without the repr of the in-memory file it names."""
    return _OPENING.sub('', str(exc).strip()).rstrip('. ') or type(exc).__name__


def decode_audio(data, target_sr, max_seconds, field):
    """bytes of an audio file -> (mono float32 waveform at target_sr, duration in seconds).

    field: what the bytes were in the request ('body', 'file', 'inputs', 'audio'), named in errors.
    """
    if not data:
        raise ApiError(400, 'empty_audio', f'{field} is empty: send the bytes of an audio file ({FORMATS})', field)
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # soundfile raises several types for data it cannot parse
        raise ApiError(422, 'undecodable_audio', f'{field} is not readable as audio ({_reason(exc)}): send a '
                                                 f'{FORMATS} file', field) from None
    if info.frames <= 0 or info.channels <= 0:
        raise ApiError(422, 'empty_audio', f'{field} holds no audio frames: send a clip with sound in it', field)
    try:
        audio.check_sample_rate(info.samplerate, name=f'the sample rate in the header of {field}')
    except audio.AudioError as exc:
        raise ApiError(422, 'bad_sample_rate', f'{exc}: the file is damaged', field) from None
    duration = info.frames / info.samplerate
    if duration > max_seconds:
        raise ApiError(413, 'audio_too_long', f'{field} holds {duration:.1f} s of audio; this server takes at most '
                                              f'{max_seconds:g} s per request (--max-audio-seconds): send a shorter '
                                              f'clip, or use the /v1/stream WebSocket for long audio', field)
    problem = wav_truncation(data)
    if problem:
        raise ApiError(422, 'truncated_audio', f'{field} {problem}', field)
    try:
        samples, sample_rate = sf.read(io.BytesIO(data), dtype='float32', always_2d=True)
    except Exception as exc:  # a header that parses over data that does not
        raise ApiError(422, 'undecodable_audio', f'{field} could not be decoded ({_reason(exc)}): the file is '
                                                 f'damaged; send it again or send another {FORMATS} file',
                       field) from None
    problem = audio.samples_problem(samples)
    if problem:
        raise ApiError(422, 'bad_samples', f'{field} {problem}', field)
    wave = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    return audio.resample(np.ascontiguousarray(wave), sample_rate, target_sr), duration


_DATA_URL = re.compile(r'^data:[^,]*;base64,', re.IGNORECASE)
_WHITESPACE = re.compile(r'\s+')


def decode_base64(text, field):
    """base64 text (line breaks allowed, or a `data:audio/wav;base64,` URL as browsers make) -> bytes.

    Strict: characters outside the base64 alphabet are an error, not silently dropped, so a
    payload that is not base64 at all is reported as such.
    """
    if not isinstance(text, str):
        raise ApiError(400, 'invalid_base64', f'{field} must be a string of base64 audio, got '
                                              f'{type(text).__name__}', field)
    text = _WHITESPACE.sub('', _DATA_URL.sub('', text, count=1))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, 'invalid_base64', f'{field} is not valid base64 ({_reason(exc)}): encode the bytes of '
                                              f'the audio file, e.g. `base64 -w0 clip.wav`', field) from None
