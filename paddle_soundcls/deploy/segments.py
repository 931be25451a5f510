"""The one window cutter: what audio each network call sees, for every caller.

predict (clips and windowed timelines), detect and every stream (Module / Predictor streams,
the server's WebSocket, the command line's standard input) cut windows with the same rule:
windows of `window` samples every `hop` samples from sample 0, and at the end one window ending
at the end of the audio if samples arrived after the last window. Offline, `window_spans` gives
those spans at once; a stream gets the same ones from `SlidingWindow` as its audio arrives,
however it is chunked.

numpy only: the Paddle-free runtime uses it.
"""
import numpy as np

from ..errors import ArgumentError


def check_hop(window, hop):
    """hop, if it is not longer than window: a longer hop would leave audio between windows unscored."""
    if hop > window:
        raise ArgumentError(f'hop ({hop:g} s) must not be longer than window ({window:g} s): audio between windows '
                            f'would never be scored')
    return hop


def pad_to(wave, min_samples):
    """`wave` zero-padded at the end to at least `min_samples`."""
    return wave if len(wave) >= min_samples else np.pad(wave, (0, min_samples - len(wave)))


def window_spans(num_samples, window, hop):
    """[(start, end)] sample spans of windows of `window` samples every `hop` samples.

    Windows start at 0, hop, 2*hop, ...; the last one ends at the end of the clip (it may
    overlap its neighbour more than the others) so no window holds padding. A clip shorter
    than one window is one span. The spans SlidingWindow gives for the same audio.
    """
    if num_samples <= window:
        return [(0, num_samples)]
    starts = list(range(0, num_samples - window, hop)) + [num_samples - window]
    return [(s, s + window) for s in starts]


def clip_segments(wave, clip_samples=None, min_samples=0, window=None, hop=None):
    """The segments scored for one input: (start, end, samples), in time order, one at a time.

    The one rule for clips of any length, shared by predict, the runtime, the server and the
    Trainer's evaluation, so all of them score the same audio:
    - window/hop (samples) given: windows of `window` samples every `hop` (see window_spans);
    - else, with `clip_samples` (the clip length the model was trained on): a shorter clip is
      zero-padded to it (as the datasets pad), a longer one is cut into consecutive windows
      of that length, the last one ending at the end of the clip; whole-clip scores are the
      mean of the segments' scores;
    - else the whole clip as one segment.
    Every segment is zero-padded at the end to at least `min_samples` (and short clips to
    clip_samples), so the network gets the input length it needs.
    """
    if window is not None:
        spans = window_spans(len(wave), window, hop)
    elif clip_samples is not None:
        spans = window_spans(len(wave), clip_samples, clip_samples)
    else:
        spans = [(0, len(wave))]
    length = max(min_samples, clip_samples or 0) if window is None else min_samples
    for start, end in spans:  # one at a time: a long recording's segments are never all in memory
        # Copies, so a pending segment does not keep the whole recording alive.
        yield start, end, pad_to(wave[start:end].copy(), length)


class SlidingWindow:
    """Samples in, windows of `window` samples every `hop` samples out, starting at sample 0.

    push(samples) stores them; next() gives the next complete window (start, end, samples), or
    None; tail() the last window at the end. The buffer holds the samples later windows need in
    about two windows plus the largest push, reused (a ring compacted now and then), so the work
    of a push is proportional to the push, whatever the window.
    """

    def __init__(self, window, hop):
        self.window, self.hop = window, hop
        self.slack = min(hop, window)   # how far before the last sample a tail may end
        self.buffer = np.zeros(0, np.float32)
        self.length = 0          # samples in use at the buffer's start
        self.offset = 0          # stream index of buffer[0]
        self.next_start = 0      # stream index where the next window starts
        self.last_end = 0        # end of the last window given out

    @property
    def total(self):
        """Samples pushed so far."""
        return self.offset + self.length

    def push(self, samples):
        samples = np.asarray(samples, dtype=np.float32)
        if self.length + len(samples) > len(self.buffer):
            # Keep what the next window needs, and for the tail window at the end the last `window`
            # samples before any end up to `slack` samples short of the total (a stream of frames
            # ends its tail at its last whole frame, less than a hop before the last sample).
            keep_from = min(self.next_start, max(self.total - self.window - self.slack, 0))
            drop = min(max(keep_from - self.offset, 0), self.length)
            kept = self.length - drop
            if kept + len(samples) > len(self.buffer):
                grown = np.zeros(max(2 * self.window, kept + len(samples)), np.float32)
                grown[:kept] = self.buffer[drop:self.length]
                self.buffer = grown
            else:
                self.buffer[:kept] = self.buffer[drop:self.length]
            self.offset += drop
            self.length = kept
        self.buffer[self.length:self.length + len(samples)] = samples
        self.length += len(samples)

    def next(self):
        """(start, end, a copy of the samples) of the next complete window, or None."""
        if self.next_start + self.window > self.total:
            return None
        i = self.next_start - self.offset
        start = self.next_start
        self.last_end = start + self.window
        self.next_start += self.hop
        return start, start + self.window, self.buffer[i:i + self.window].copy()

    def tail(self, end=None, always=False):
        """The last window, ending at `end` (default: every sample pushed; a stream of frames ends
        at its last whole frame): (start, end, samples) if samples arrived after the last window
        given out (or, with always=True, whenever there are samples), else None. `end` may lie at
        most `slack` samples (the hop, at most the window) before the total."""
        end = self.total if end is None else min(end, self.total)
        if end == 0 or (end <= self.last_end and not always):
            return None
        start = max(end - self.window, 0)
        if start < self.offset:
            raise ArgumentError(f'the tail window from sample {start} is no longer held (samples from {self.offset} '
                                f'are); a tail may end at most {self.slack} samples before the last sample pushed')
        return start, end, self.buffer[start - self.offset:end - self.offset].copy()
