"""Uploaded bytes -> a mono float32 waveform at the model's rate, or an ApiError saying why not.

The same steps as `paddle_soundcls.audio.read_audio` (header check, sample-rate check, sample
check, downmix, resampling), on bytes in memory instead of a path, in bounded steps that the
server's engine runs between other work. The duration and the number of samples are checked
from the header, before any sample is decoded: a small compressed file can hold hours of
silence or hundreds of channels, which would otherwise be decoded in full.
"""
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


def sniff_format(data):
    """The audio format the first bytes of `data` announce ('wav', 'flac', 'ogg', 'mp3', 'aiff',
    'au', 'caf', 'w64'), or None: how a body sent without a Content-Type (as Hugging Face's client
    sends raw audio) or as application/octet-stream is told from text, JSON or anything else."""
    head = bytes(data[:16])
    if head[:4] in (b'RIFF', b'RF64', b'RIFX') and head[8:12] == b'WAVE':
        return 'wav'
    if head[:4] == b'FORM' and head[8:12] in (b'AIFF', b'AIFC'):
        return 'aiff'
    signatures = ((b'fLaC', 'flac'), (b'OggS', 'ogg'), (b'ID3', 'mp3'), (b'.snd', 'au'), (b'caff', 'caf'),
                  (b'riff\x2e\x91\xcf\x11', 'w64'))
    for signature, name in signatures:
        if head.startswith(signature):
            return name
    # An MPEG audio frame: 11 bits of frame sync, then a layer that is not 00 (reserved).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return 'mp3'
    return None


_OPENING = re.compile(r'^Error opening <[^>]*>: ')


def _reason(exc):
    """libsndfile's message, without the repr of the in-memory file it names."""
    return _OPENING.sub('', str(exc).strip()).rstrip('. ') or type(exc).__name__


# Samples (frames x channels) read from the file in one decoding step: 1 MiB of float32, and
# about 10 ms of work even when resampling from 768 kHz.
BLOCK_SAMPLES = 1 << 18


def decode_steps(data, target_sr, max_seconds, max_samples, field):
    """Decoding of the bytes of an audio file, in steps: a generator whose every `next()` does a
    bounded amount of work (one block of BLOCK_SAMPLES samples read, mixed to mono and resampled
    to target_sr) and whose return value (StopIteration.value) is (mono float32 waveform at
    target_sr, duration in seconds).

    Before any sample is decoded, the header must describe at most `max_seconds` of audio and at
    most `max_samples` samples (frames x channels): what decoding costs follows from them, and a
    small compressed file can describe hours of audio or hundreds of channels. Memory: the bytes,
    one block and the waveform at target_sr; never the whole file at its own rate.
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
    if info.frames * info.channels > max_samples:
        raise ApiError(413, 'too_many_samples',
                       f'{field} decodes to {info.frames * info.channels} samples ({info.channels} channel(s) x '
                       f'{info.frames} frames at {info.samplerate} Hz); this server decodes at most {max_samples} per '
                       f'request (--max-decode-samples): send fewer channels, a lower sample rate (the model uses '
                       f'{target_sr} Hz) or a shorter clip', field)
    problem = wav_truncation(data)
    if problem:
        raise ApiError(422, 'truncated_audio', f'{field} {problem}', field)
    block_frames = max(1, BLOCK_SAMPLES // info.channels)
    resampler = audio.Resampler(info.samplerate, target_sr)
    pieces, decoded = [], 0
    with sf.SoundFile(io.BytesIO(data)) as f:
        block = np.empty((block_frames, info.channels), np.float32)
        while True:
            try:
                samples = f.read(block_frames, dtype='float32', always_2d=True, out=block)
            except Exception as exc:  # a header that parses over data that does not
                raise ApiError(422, 'undecodable_audio', f'{field} could not be decoded ({_reason(exc)}): the file '
                                                         f'is damaged; send it again or send another {FORMATS} file',
                               field) from None
            if not len(samples):
                break
            decoded += len(samples)
            if decoded * info.channels > max_samples or decoded > max_seconds * info.samplerate + block_frames:
                # More frames than the header announced (libsndfile's count of some formats is an estimate).
                raise ApiError(413, 'audio_too_long', f'{field} holds more audio than its header says, more than '
                                                      f'this server decodes per request (--max-audio-seconds, '
                                                      f'--max-decode-samples): send a shorter clip', field)
            problem = audio.samples_problem(samples)   # every channel, before they are mixed
            if problem:
                raise ApiError(422, 'bad_samples', f'{field} {problem}', field)
            mono = samples.mean(axis=1, dtype=np.float32) if info.channels > 1 else samples[:, 0].copy()
            pieces.append(resampler.push(mono))
            if decoded < info.frames:
                yield
    if not decoded:
        raise ApiError(422, 'undecodable_audio', f'{field} holds no decodable audio frames: the file is damaged; '
                                                 f'send another {FORMATS} file', field)
    pieces.append(resampler.flush())
    return np.concatenate(pieces), duration


def decode_audio(data, target_sr, max_seconds, field, max_samples=16_000_000):
    """bytes of an audio file -> (mono float32 waveform at target_sr, duration in seconds), all
    steps of decode_steps at once."""
    steps = decode_steps(data, target_sr, max_seconds, max_samples, field)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


_DATA_URL = re.compile(r'data:[^,]*;base64,', re.IGNORECASE)
_WHITESPACE = b' \t\n\r\x0b\x0c'
_ALPHABET = b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
# Characters of base64 text handled in one step: a few milliseconds of work, after which other
# threads (the event loop) get their turn; one call on 25 MB would hold the interpreter ~0.2 s.
BASE64_STEP = 1 << 20


def base64_steps(text, field):
    """Decoding of base64 text (line breaks allowed, or a `data:audio/wav;base64,` URL as
    browsers make), in steps of BASE64_STEP characters: a generator whose return value is the bytes.

    Strict: characters outside the base64 alphabet are an error, not silently dropped, so a
    payload that is not base64 at all is reported as such.
    """
    if not isinstance(text, str):
        raise ApiError(400, 'invalid_base64', f'{field} must be a string of base64 audio, got '
                                              f'{type(text).__name__}', field)

    def invalid(reason):
        return ApiError(400, 'invalid_base64', f'{field} is not valid base64 ({reason}): encode the bytes of the '
                                               f'audio file, e.g. `base64 -w0 clip.wav`', field)

    prefix = _DATA_URL.match(text)
    if prefix:
        text = text[prefix.end():]
    if not text.isascii():
        raise invalid('it holds characters that are not ASCII')
    compact = bytearray()
    for first in range(0, len(text), BASE64_STEP):
        piece = text[first:first + BASE64_STEP].encode('ascii').translate(None, _WHITESPACE)
        wrong = piece.translate(None, _ALPHABET + b'=')
        if wrong:
            raise invalid(f'characters outside the base64 alphabet, e.g. {wrong[:1].decode("ascii")!r}')
        compact += piece
        yield
    padding = len(compact) - len(compact.rstrip(b'=')) if compact.endswith(b'=') else 0
    body = memoryview(compact)[:len(compact) - padding]
    if padding > 2 or len(compact) % 4:
        raise invalid('its length with padding is not a multiple of 4: the text was cut or padded wrongly')
    decoded = []
    for first in range(0, len(body), BASE64_STEP):
        chunk = bytes(body[first:first + BASE64_STEP])
        if b'=' in chunk:
            raise invalid('"=" before the end: padding belongs at the end only')
        last = first + BASE64_STEP >= len(body)
        try:
            decoded.append(binascii.a2b_base64(chunk + b'=' * padding if last else chunk))
        except binascii.Error as exc:
            raise invalid(_reason(exc)) from None
        yield
    body.release()
    return b''.join(decoded)


def decode_base64(text, field):
    """base64 text -> bytes, all steps of base64_steps at once."""
    steps = base64_steps(text, field)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
