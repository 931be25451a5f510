"""The one window cutter (deploy/segments.py) and the one PCM reader (deploy/pcm.py)."""
import numpy as np
import pytest

from paddle_soundcls.audio import AudioError
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.deploy import pcm
from paddle_soundcls.deploy.segments import SlidingWindow, clip_segments, window_spans


def test_window_spans():
    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_spans(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]
    assert window_spans(3, 4, 2) == [(0, 3)]
    assert window_spans(4, 4, 4) == [(0, 4)]


@pytest.mark.parametrize('window, hop', [(100, 30), (100, 100), (50, 80), (64, 64), (100, 7)])
def test_a_stream_in_any_chunking_gets_the_offline_windows(window, hop):
    """What streams cut (SlidingWindow, pushed in random pieces, then its tail) is what predict cuts
    offline (window_spans), sample for sample; the buffer stays about two windows plus a push."""
    rng = np.random.default_rng(window + hop)
    for length in (1000, 37, window, 2 * window + 1):
        samples = rng.standard_normal(length).astype(np.float32)
        windows = SlidingWindow(window, hop)
        got, pos, largest = [], 0, 0
        while pos < len(samples):
            size = int(rng.integers(1, 120))
            largest = max(largest, size)
            windows.push(samples[pos:pos + size])
            while (ready := windows.next()) is not None:
                got.append(ready)
            pos += size
            assert len(windows.buffer) <= 2 * window + largest
        tail = windows.tail()
        if tail is not None:
            got.append(tail)
        offline = window_spans(length, window, hop) if hop <= window else None
        if offline is not None:
            assert [(s, e) for s, e, _ in got] == offline
        assert all(np.array_equal(w, samples[s:e]) for s, e, w in got)


def test_clip_segments_pad_and_cut_as_training_did():
    wave = np.arange(10, dtype=np.float32)
    assert [(s, e, len(x)) for s, e, x in clip_segments(wave, clip_samples=4)] == [(0, 4, 4), (4, 8, 4), (6, 10, 4)]
    [(s, e, x)] = clip_segments(wave[:3], clip_samples=4)
    assert (s, e) == (0, 3) and list(x) == [0, 1, 2, 0]
    [(_, _, x)] = clip_segments(wave[:3], min_samples=5)
    assert len(x) == 5


def test_pcm_is_read_by_the_streams_channel_count():
    left, right = np.array([1000, -2000, 32767], np.int16), np.array([3000, 0, -32768], np.int16)
    data = np.stack([left, right], axis=1).tobytes()                 # interleaved: L R L R ...
    np.testing.assert_allclose(pcm.decode(data, 'int16', 2), (left / 32768 + right / 32768) / 2, rtol=1e-6)
    assert len(pcm.decode(data[:4], 'int16', 2)) == 1                # one frame is one frame
    np.testing.assert_array_equal(pcm.decode(np.float32([0.5, -0.25]).tobytes(), 'float32', 1), [0.5, -0.25])
    assert pcm.frame_bytes('float32', 3) == 12
    with pytest.raises(AudioError, match='whole frames of 4 bytes; got 6'):
        pcm.decode(data[:6], 'int16', 2)
    with pytest.raises(AudioError, match='NaN'):
        pcm.decode(np.float32([0.1, np.nan]).tobytes(), 'float32', 1)


def test_a_tail_ending_up_to_a_hop_short_of_the_total_is_held():
    """A stream of frames ends its tail window at its last whole frame, up to a frame (less than
    a hop) before the last sample: whatever compaction a push did, the tail holds the samples
    there, and asking for one ending earlier than a hop short is refused, not filled with zeros."""
    rng = np.random.default_rng(3)
    window, hop = 400, 100
    for first, second in ((2066, 1), (2066, 37), (1999, 99), (401, 1), (800, 100)):
        samples = rng.standard_normal(first + second).astype(np.float32)
        windows = SlidingWindow(window, hop)
        for piece in (samples[:first], samples[first:]):
            windows.push(piece)
            while windows.next() is not None:
                pass
        for end in range(max(1, len(samples) - hop), len(samples) + 1):
            start, stop, got = windows.tail(end, always=True)
            assert (start, stop) == (max(end - window, 0), end)
            np.testing.assert_array_equal(got, samples[start:stop])
        if windows.offset == 0:
            continue
        with pytest.raises(ArgumentError, match='no longer held'):
            windows.tail(windows.offset + window - 1, always=True)


def test_a_stream_closed_after_a_small_last_push_gives_the_offline_frames():
    """FrameStream.push of most of a recording, then of its last samples (fewer than a frame), then
    close(): the frames of offline detection of the recording (its tail window was zeros when the
    last push compacted the buffer)."""
    from test_detection_batching import numpy_scorer
    from paddle_soundcls.deploy import detection
    scorer, _ = numpy_scorer(1.0, 0.25, 16)
    rng = np.random.default_rng(0)
    for length, split in ((20661, 20660), (20661, 20600), (16079, 16000), (9999, 9990)):
        wave = (0.3 * rng.standard_normal(length)).astype(np.float32)
        offline = detection.detect(scorer, wave)['frame_scores']
        stream = detection.FrameStream(scorer)
        live = np.concatenate([stream.push(wave[:split]), stream.push(wave[split:]), stream.close()])
        np.testing.assert_array_equal(live, offline)
