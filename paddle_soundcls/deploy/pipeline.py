"""Waveforms in, scores out, for any engine: loading, sliding windows, batching, results.

Shared by `Predictor` (ONNX Runtime / Paddle Inference) and `Module.predict` (which also
runs Paddle dygraph), so every engine sees the same inputs and returns the same results.
Paddle-free: numpy, soundfile and paddle_soundcls.audio only.

Results (predict):
- whole-clip call (window=None): one OrderedDict(label -> score) per input, best first.
- windowed call: one dict per input
      {'scores': OrderedDict(label -> score),          # clip level: mean or max over windows
       'timeline': [{'start': s, 'end': e,             # seconds from the start of the clip
                     'scores': OrderedDict(label -> score)}, ...]}   # one per window, in time order
  `top_k` keeps the best k labels in every OrderedDict.
Results (embed): one dict per input {'start': [rows] seconds, 'end': [rows] seconds,
  'embeddings': float32 [rows, embedding_size]}: one row for a whole-clip call (0 to the clip's
  length; the mean of its segments' embeddings, as its scores are the mean of theirs), one per
  window for a windowed call.
"""
import os
from collections import OrderedDict

import numpy as np

from .. import audio, validate
from .segments import clip_segments, pad_to, window_spans  # noqa: F401  (the one window cutter)
from ..errors import ArgumentError, AudioError

REDUCTIONS = ('mean', 'max')


def as_sources(data):
    """Normalise `data` to a list and check every input before any work starts (fail early).

    data: a path, a numpy waveform, or a non-empty list/tuple of them.
    Returns [(name, source)].
    """
    if isinstance(data, (str, os.PathLike, np.ndarray)):
        data = [data]
    if not isinstance(data, (list, tuple)) or not data:
        raise ArgumentError('data must be a non-empty list of audio file paths or numpy waveforms')
    sources = []
    for i, item in enumerate(data):
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if not os.path.isfile(path):
                raise AudioError(f'audio file not found: {path}')
            problem = audio.header_problem(path)  # the header only: cheap, and the loader's own wording
            if problem:
                raise AudioError(f'cannot use audio file {path}: {problem}. Replace the file or leave it out.')
            sources.append((path, path))
        elif isinstance(item, np.ndarray):
            name = f'data[{i}]'
            audio.check_waveform(audio.to_mono(item, name), name)  # empty, NaN, wrong shape: before any work
            sources.append((name, item))
        else:
            raise ArgumentError(f'data[{i}] is a {type(item).__name__}; expected an audio file path or a numpy waveform')
    return sources


def check_args(batch_size=8, top_k=None, window=None, hop=None, reduce='mean', threshold=None):
    """Validate the predict() arguments before any work; returns hop (default: window, no overlap)."""
    validate.number_in('threshold', threshold, 0, 1, noun='score', allow_none=True)
    validate.positive_int('batch_size', batch_size)
    validate.positive_int('top_k', top_k, allow_none=True)
    validate.one_of('reduce', reduce, REDUCTIONS)
    if window is None:
        if hop is not None:
            raise ArgumentError('hop needs window (both in seconds), e.g. window=5.0, hop=2.5')
        return None
    window = validate.positive_number('window', window, unit='seconds')
    # A hop longer than the window is allowed here: it samples a long recording (one window every
    # hop seconds), which a clip score may do; detection needs every frame and refuses it.
    return validate.positive_number('hop', hop, unit='seconds', allow_none=True) or window


def run(sources, score_fn, sample_rate, target_sr, min_seconds, batch_size=8, window=None, hop=None,
        clip_seconds=None, whole_span=False, workers=0):
    """Score every input; the engine-independent loop.

    sources: from `as_sources`; arguments checked by `check_args`.
    score_fn: waveforms float32 [batch, samples] at target_sr -> scores [batch, classes]
        (numpy). Every row of one call has the same length, so no clip is padded to
        another's length (padding would change max/mean pooling over time).
    window, hop: seconds, or None for one score per whole clip.
    clip_seconds: the clip length the model was trained on, or None; see clip_segments.
    whole_span: whole-clip results as windowed ones, ([(0, clip seconds)], scores [1, classes]).
    workers: decoding processes (see load_inputs).
    Returns per input: scores [classes] (whole clip), or (spans [(start_s, end_s)],
    window scores [windows, classes]) for windowed calls.

    Inputs are loaded one at a time and windows are cut as they are batched, so a long
    recording never has all its windows (or their features) in memory at once.
    """
    min_samples = int(round(min_seconds * target_sr))
    clip_samples = None if clip_seconds is None else int(round(clip_seconds * target_sr))
    window_samples = None if window is None else max(1, int(round(window * target_sr)))
    hop_samples = None if window is None else max(1, int(round(hop * target_sr)))
    per_input = [[] for _ in sources]      # per input: [(start, end, scores)]
    pending = {}                           # segment length -> [(input index, start, end, samples)]

    def flush(length):
        batch = pending.pop(length)
        scores = np.asarray(score_fn(np.stack([seg for _, _, _, seg in batch])), dtype=np.float32)
        for (i, start, end, _), row in zip(batch, scores):
            per_input[i].append((start, end, row))

    # Whole clips: a batch takes batch_size files, which the workers decode while it is scored.
    ahead = 2 * workers + (batch_size if window is None else 0)
    for i, wave in enumerate(load_inputs(sources, sample_rate, target_sr, workers, ahead)):
        for start, end, segment in clip_segments(wave, clip_samples, min_samples, window_samples, hop_samples):
            pending.setdefault(len(segment), []).append((i, start, end, segment))
            if len(pending[len(segment)]) == batch_size:
                flush(len(segment))
        del wave
    for length in list(pending):
        flush(length)

    results = []
    for rows in per_input:
        rows.sort(key=lambda r: r[0])
        if window is None and whole_span:
            results.append(([(0.0, rows[-1][1] / target_sr)], np.mean([r[2] for r in rows], axis=0)[None]))
        elif window is None:
            results.append(np.mean([r[2] for r in rows], axis=0))
        else:
            spans = [(start / target_sr, end / target_sr) for start, end, _ in rows]
            results.append((spans, np.stack([r[2] for r in rows])))
    return results


def load_inputs(sources, sample_rate, target_sr, workers=0, ahead=None):
    """The waveforms of `sources` (from as_sources) at target_sr, in order, one at a time.

    workers: processes that decode and resample files while the caller scores the ones before
    (0: decode here). Decoding a compressed file and resampling it can take as long as scoring
    it with a small network; with workers the engine need not wait for them. Arrays are never
    sent to a worker. At most `ahead` files (default 2 x workers) are decoded ahead of the caller
    (whole-clip predict and embed: 2 x workers + batch_size, a batch's worth). Workers are
    started with spawn: they import the caller's main module, so a script must start its work
    under `if __name__ == '__main__':`.
    """
    validate.integer('workers', workers, 0, 64)
    if workers == 0:
        for name, source in sources:
            yield audio.load(source, sample_rate, target_sr, name=name)
        return
    import concurrent.futures
    import multiprocessing

    def wave_of(item):
        if isinstance(item, np.ndarray):
            return item
        try:
            return item.result()
        except concurrent.futures.process.BrokenProcessPool:
            raise ArgumentError('a decoding worker process died (workers=): a script that uses workers must '
                                "start its work under `if __name__ == '__main__':`, since each worker imports "
                                'the main module again; or use workers=0') from None
    # spawn: a forked child would inherit the engine's thread pools mid-state (onnxruntime, oneDNN).
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        pending = []
        for name, source in sources:
            if isinstance(source, np.ndarray):
                pending.append(audio.load(source, sample_rate, target_sr, name=name))
            else:
                pending.append(pool.submit(audio.load, source, sample_rate, target_sr, name))
            while len(pending) > (2 * workers if ahead is None else max(1, ahead)):
                yield wave_of(pending.pop(0))
        for item in pending:
            yield wave_of(item)


def to_dict(scores, labels, top_k=None, threshold=None):
    """scores [classes] -> OrderedDict(label -> score), best first, the best `top_k` only,
    and only those >= `threshold` when given (for multi-label models: every label that applies;
    possibly none)."""
    order = np.argsort(-np.asarray(scores), kind='stable')[:top_k]
    return OrderedDict((labels[j], float(scores[j])) for j in order if threshold is None or scores[j] >= threshold)


def embedding_results(raw):
    """Output of `run(..., whole_span=True)` with an embedding function -> the embed results."""
    return [{'start': np.array([s for s, _ in spans], np.float64), 'end': np.array([e for _, e in spans], np.float64),
             'embeddings': np.asarray(rows, np.float32)} for spans, rows in raw]


def reduce_windows(window_scores, reduce='mean'):
    """[windows, classes] -> clip-level scores [classes]."""
    return window_scores.mean(axis=0) if reduce == 'mean' else window_scores.max(axis=0)


def format_results(raw, labels, top_k=None, reduce='mean', threshold=None):
    """Output of `run` -> the documented result structures (see the module docstring)."""
    out = []
    for item in raw:
        if isinstance(item, tuple):
            spans, window_scores = item
            timeline = [{'start': round(s, 6), 'end': round(e, 6), 'scores': to_dict(row, labels, top_k, threshold)}
                        for (s, e), row in zip(spans, window_scores)]
            out.append({'scores': to_dict(reduce_windows(window_scores, reduce), labels, top_k, threshold),
                        'timeline': timeline})
        else:
            out.append(to_dict(item, labels, top_k, threshold))
    return out
