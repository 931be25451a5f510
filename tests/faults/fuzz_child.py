"""Make seeded corruptions of valid WAV and FLAC files and read each with paddle_soundcls.audio.load.

    python fuzz_child.py OUT_DIR CASES SEED

Runs in its own process so that a crash inside libsndfile (a segfault, an abort) shows as
this process dying instead of taking pytest down. Writes OUT_DIR/results.json: one record
per file {'path', 'base', 'how', 'outcome': 'ok' | 'AudioError' | <other exception type>,
'message', 'samples', 'finite'}.
"""
import io
import json
import os
import sys

import numpy as np
import soundfile as sf

from paddle_soundcls import audio

TARGET = 32000


def base_files():
    """name -> bytes of a valid file (all shorter than a second, so predict pads them to one length)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, sr, channels, subtype, fmt, seconds in (
            ('pcm16_mono.wav', 16000, 1, 'PCM_16', 'WAV', 0.4),
            ('float_stereo.wav', 44100, 2, 'FLOAT', 'WAV', 0.3),
            ('pcm24_mono.wav', 22050, 1, 'PCM_24', 'WAV', 0.3),
            ('u8_mono.wav', 8000, 1, 'PCM_U8', 'WAV', 0.5),
            ('pcm16_mono.flac', 16000, 1, 'PCM_16', 'FLAC', 0.4),
            ('pcm24_stereo.flac', 48000, 2, 'PCM_24', 'FLAC', 0.3)):
        n = int(sr * seconds)
        t = np.arange(n) / sr
        wave = 0.4 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.standard_normal((n, channels))
        buffer = io.BytesIO()
        sf.write(buffer, wave.astype('float32'), sr, subtype=subtype, format=fmt)
        out[name] = buffer.getvalue()
    return out


# Offsets of header fields worth hitting: WAV (format, channels, rate, byte rate, block
# align, bits, RIFF and data sizes) and FLAC STREAMINFO (block sizes, frame sizes, packed
# rate/channels/bits/total samples).
WAV_FIELDS = [(4, 4), (20, 2), (22, 2), (24, 4), (28, 4), (32, 2), (34, 2), (40, 4)]
FLAC_FIELDS = [(8, 2), (10, 2), (12, 3), (15, 3), (18, 4), (22, 4)]
EDGE_VALUES = [0, 1, 2, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def corrupt(data, is_wav, rng):
    """One random corruption of `data`; returns (bytes, description)."""
    data = bytearray(data)
    kind = rng.choice(['header_bytes', 'data_bytes', 'field', 'truncate', 'insert', 'two'])
    if kind == 'two':
        once, first = corrupt(bytes(data), is_wav, rng)
        twice, second = corrupt(once, is_wav, rng)
        return twice, f'{first} + {second}'
    if kind == 'header_bytes':
        for _ in range(rng.integers(1, 5)):
            data[rng.integers(0, min(64, len(data)))] = rng.integers(0, 256)
        return bytes(data), kind
    if kind == 'data_bytes':
        for _ in range(rng.integers(1, 17)):
            data[rng.integers(64, len(data))] = rng.integers(0, 256)
        return bytes(data), kind
    if kind == 'field':
        offset, size = (WAV_FIELDS if is_wav else FLAC_FIELDS)[rng.integers(0, 8 if is_wav else 6)]
        value = int(rng.choice(EDGE_VALUES)) if rng.random() < 0.5 else int(rng.integers(0, 2 ** (8 * size)))
        value &= (1 << (8 * size)) - 1
        data[offset:offset + size] = value.to_bytes(size, 'little' if is_wav else 'big')
        return bytes(data), f'field@{offset}={value}'
    if kind == 'truncate':
        cut = int(rng.integers(0, len(data)))
        return bytes(data[:cut]), f'truncate@{cut}'
    at = int(rng.integers(0, len(data)))
    extra = rng.integers(0, 256, size=int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    return bytes(data[:at]) + extra + bytes(data[at:]), f'insert@{at}+{len(extra)}'


def main():
    out_dir, cases, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    bases = base_files()
    names = sorted(bases)
    records = []
    for i in range(cases):
        base = names[i % len(names)]
        data, how = corrupt(bases[base], base.endswith('.wav'), rng)
        path = os.path.join(out_dir, f'{i:04d}_{base}')
        with open(path, 'wb') as f:
            f.write(data)
        record = {'path': path, 'base': base, 'how': how}
        try:
            wave = audio.load(path, None, TARGET)
            record.update(outcome='ok', samples=int(wave.size), finite=bool(np.all(np.isfinite(wave))),
                          mono=wave.ndim == 1 and wave.dtype == np.float32)
        except Exception as exc:  # recorded, judged by the test
            record.update(outcome=type(exc).__name__, message=str(exc))
        records.append(record)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump(records, f, indent=1)


if __name__ == '__main__':
    main()
