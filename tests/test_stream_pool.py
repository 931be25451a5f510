"""Many live streams, one network (deploy/detection.py StreamPool): the windows that complete in
all streams are scored together, and every stream's events are exactly those of the stream run
alone (EventStream fed the same chunks), whatever the number of streams, their rates, channels,
chunkings and the moments score() is called; a silent stream delays no other."""
import numpy as np
import pytest

from test_detection_batching import CFG, LABELS, NormalisingNet, clear_thresholds, numpy_scorer
from paddle_soundcls.deploy import detection
from paddle_soundcls.deploy.events import EventConfig
from paddle_soundcls.errors import ArgumentError, AudioError

WINDOW, HOP = 1.0, 0.25


def config_for(waves):
    """Thresholds in wide gaps of the frame scores of the streams' audio (at the model's rate)."""
    scores = np.concatenate([detection.detect(numpy_scorer(WINDOW, HOP, 1)[0], w)['frame_scores'] for w in waves])
    return clear_thresholds(scores)


def plans(rng, count):
    """`count` streams: (sample rate, channels, chunks of PCM) each, of random lengths and chunkings."""
    out = []
    for i in range(count):
        rate = [8000, 16000, 11025][i % 3]
        channels = 1 + i % 2
        seconds = float(rng.uniform(0.2, 4.0))
        pcm = (0.2 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)
        pcm[: len(pcm) // 3] *= 4   # a loud start: events that begin and end
        cuts = np.sort(rng.integers(0, len(pcm), int(rng.integers(1, 12))))
        chunks = [c if channels > 1 else c[:, 0] for c in np.split(pcm, cuts)]
        out.append((rate, channels, chunks))
    return out


def alone(plan, config, batch_size):
    rate, channels, chunks = plan
    stream = detection.EventStream(numpy_scorer(WINDOW, HOP, batch_size)[0], rate, config, channels)
    events = [e for chunk in chunks for e in stream.push(chunk)]
    return events + stream.close()


def run_pool(pool, plans_, rng, score_every_feed):
    """Feeds every stream its chunks in a random interleaving, calling score() after every feed or
    at random moments; each stream is finished after its last chunk. Returns each stream's events."""
    streams = [pool.open(rate, channels) for rate, channels, _ in plans_]
    events = {id(s): [] for s in streams}
    queue = [(i, chunk) for i, (_, _, chunks) in enumerate(plans_) for chunk in chunks]
    order = rng.permutation(len(queue))
    # Each stream's chunks stay in order: take the interleaving's k-th pick as that stream's next chunk.
    picks = [queue[k][0] for k in order]
    remaining = [list(chunks) for _, _, chunks in plans_]
    def score():
        for stream, new in pool.score().items():
            events[id(stream)] += new

    for i in picks:
        chunk = remaining[i].pop(0)
        if streams[i].error is not None:   # failed (the network cannot take it): it takes no more audio
            continue
        streams[i].feed(chunk)
        if score_every_feed:   # as push() does, then close()
            score()
        if not remaining[i]:
            streams[i].finish()
        if score_every_feed or rng.random() < 0.3:
            score()
    score()
    assert pool.streams == []   # every finished stream has left the pool
    return [events[id(s)] for s in streams]


@pytest.mark.parametrize('count,batch_size', [(1, 1), (5, 3), (12, 16)])
def test_every_stream_reports_what_it_reports_alone(count, batch_size):
    rng = np.random.default_rng(count)
    streams = plans(rng, count)
    waves = [detection.audio.resample(np.concatenate(chunks).reshape(-1, channels).mean(axis=1), rate, CFG.sample_rate)
             for rate, channels, chunks in streams]
    config = config_for(waves)
    want = [alone(plan, config, batch_size) for plan in streams]
    assert sum(map(len, want)) >= count   # the thresholds do give events
    # Scored as each chunk arrives, as a stream alone scores it: the same reports.
    pool = detection.StreamPool(numpy_scorer(WINDOW, HOP, batch_size)[0], config, batch_size)
    assert run_pool(pool, streams, rng, score_every_feed=True) == want
    # Scored later, many windows at once: the same reports, start confidences included (each
    # window's frames reach the event tracker on their own, however windows are grouped).
    pool = detection.StreamPool(numpy_scorer(WINDOW, HOP, batch_size)[0], config, batch_size)
    assert run_pool(pool, streams, rng, score_every_feed=False) == want


def test_a_streams_reports_do_not_depend_on_its_chunks_or_batch_size():
    """One push of 6 s (many windows) with batch sizes 1, 2 and 16, and 0.1-s pushes: the same
    reports, start confidences included."""
    rng = np.random.default_rng(5)
    pcm = (0.2 * rng.standard_normal(CFG.sample_rate * 6)).astype(np.float32)
    pcm[CFG.sample_rate:3 * CFG.sample_rate] *= 4
    config = config_for([pcm])
    runs = []
    for batch_size, chunk in ((1, len(pcm)), (2, len(pcm)), (16, len(pcm)), (16, CFG.sample_rate // 10)):
        stream = detection.EventStream(numpy_scorer(WINDOW, HOP, batch_size)[0], CFG.sample_rate, config, 1,
                                       batch_size)
        runs.append([e for i in range(0, len(pcm), chunk) for e in stream.push(pcm[i:i + chunk])] + stream.close())
    assert runs[0] and all(run == runs[0] for run in runs)


def test_windows_of_different_streams_share_network_calls():
    scorer, net = numpy_scorer(WINDOW, HOP, 16)
    pool = detection.StreamPool(scorer)
    streams = [pool.open() for _ in range(5)]
    rng = np.random.default_rng(0)
    for stream in streams:
        stream.feed((0.1 * rng.standard_normal(CFG.sample_rate)).astype(np.float32))   # one window each
    pool.score()
    assert net.calls == [(5, CFG.sample_rate)]
    # Windows beyond batch_size per stream wait for the next round: at most batch_size per call.
    scorer, net = numpy_scorer(WINDOW, HOP, 4)
    pool = detection.StreamPool(scorer)
    long = pool.open()
    long.feed((0.1 * rng.standard_normal(10 * CFG.sample_rate)).astype(np.float32))   # 37 windows
    pool.score()
    assert max(shape[0] for shape in net.calls) == 4 and sum(shape[0] for shape in net.calls) == 37


def test_a_silent_stream_delays_no_other():
    scorer, _ = numpy_scorer(WINDOW, HOP, 8)
    config = EventConfig(onset_threshold=1e-6, offset_threshold=1e-6, median_filter_seconds=0.0)
    pool = detection.StreamPool(scorer, config)
    talking, silent = pool.open(), pool.open()
    talking.feed(np.full(CFG.sample_rate, 0.1, np.float32))
    reports = pool.score()
    assert list(reports) == [talking] and reports[talking][0]['type'] == 'start'
    assert silent.frames.emitted == 0 and pool.streams == [talking, silent]
    # A stream that never got audio ends with nothing to report and leaves the pool.
    silent.finish()
    assert silent not in pool.score() and pool.streams == [talking]


def test_report_delay_is_the_wait_from_the_completing_feed(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(detection.time, 'monotonic', lambda: clock[0])
    pool = detection.StreamPool(numpy_scorer(WINDOW, HOP, 8)[0])
    stream = pool.open()
    wave = np.zeros(2 * CFG.sample_rate, np.float32)
    stream.feed(wave[:CFG.sample_rate // 2])          # t = 100: half a window
    clock[0] = 101.0
    stream.feed(wave[CFG.sample_rate // 2:CFG.sample_rate])   # t = 101: completes the first window
    clock[0] = 101.5
    stream.feed(wave[CFG.sample_rate:CFG.sample_rate + 100])  # completes no window
    clock[0] = 103.0
    pool.score()
    assert stream.report_delay == pytest.approx(2.0) and stream.max_report_delay == pytest.approx(2.0)
    stream.feed(wave[CFG.sample_rate + 100:])         # t = 103: three more windows
    clock[0] = 103.25
    pool.score()
    assert stream.report_delay == pytest.approx(0.25) and stream.max_report_delay == pytest.approx(2.0)


def test_bad_chunks_and_closed_streams_are_refused_and_lose_nothing():
    scorer, _ = numpy_scorer(WINDOW, HOP, 8)
    pool = detection.StreamPool(scorer)
    stream = pool.open(16000, channels=2)
    stream.feed(np.zeros((8000, 2), np.float32))
    with pytest.raises(AudioError, match='2 channel'):
        stream.feed(np.zeros(100, np.float32))
    with pytest.raises(AudioError, match='NaN'):
        stream.feed(np.full((10, 2), np.nan, np.float32))
    clean = pool.open(16000, channels=2)
    clean.feed(np.zeros((8000, 2), np.float32))
    assert stream.frames.windows.total == clean.frames.windows.total > 0   # the refused chunks left no trace
    clean.finish()
    stream.finish()
    with pytest.raises(ArgumentError, match='closed'):
        stream.feed(np.zeros((10, 2), np.float32))
    stream.close()
    assert stream.frames.closed and stream not in pool.score() and pool.streams == []
    with pytest.raises(ArgumentError, match='batch_size'):
        detection.StreamPool(scorer, batch_size=0)


def test_a_pooled_stream_closed_on_its_own_leaves_the_pool():
    scorer, _ = numpy_scorer(WINDOW, HOP, 8)
    config = EventConfig(onset_threshold=1e-6, offset_threshold=1e-6, median_filter_seconds=0.0)
    pool = detection.StreamPool(scorer, config)
    stream = pool.open()
    stream.feed(np.full(CFG.sample_rate // 2, 0.1, np.float32))
    events = stream.close()   # scored alone: every class's event starts and ends
    assert sorted(e['type'] for e in events) == ['end'] * len(LABELS) + ['start'] * len(LABELS)
    assert pool.score() == {} and pool.streams == []


def test_predictor_stream_pool_reports_what_predictor_stream_reports(tmp_path):
    from test_detection_batching import module
    from paddle_soundcls.deploy import Predictor
    from paddle_soundcls.export import export_static
    export_static(module('efficientat_mn04', 0), tmp_path / 'mn04', opset=13)
    predictor = Predictor(tmp_path / 'mn04')
    config = EventConfig(onset_threshold=0.5, offset_threshold=0.5, median_filter_seconds=0.0)
    wave = (0.1 * np.random.default_rng(0).standard_normal(3 * 32000)).astype(np.float32)
    alone_stream = predictor.stream(32000, 1.0, 0.5, config)
    want = alone_stream.push(wave) + alone_stream.close()
    pool = predictor.stream_pool(1.0, 0.5, config)
    stream = pool.open(32000)
    stream.feed(wave)
    got = pool.score().get(stream, [])
    stream.finish()
    got += pool.score().get(stream, [])
    assert [(e['type'], e['label'], e['onset']) for e in got] == [(e['type'], e['label'], e['onset']) for e in want]


def test_module_streams_score_without_autograd():
    """Module.stream and Module.stream_pool run the network outside detect's no_grad: their scorer
    turns autograd off itself, so a long stream builds no graph for backward."""
    import paddle
    from paddle_soundcls import Module
    model = Module('panns_cnn6', task='tagging', pretrained=False, seed=0)
    conv = next(layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Conv2D))
    seen = []
    hook = conv.register_forward_post_hook(lambda layer, inputs, output: seen.append(output.stop_gradient))
    try:
        wave = np.zeros(32000 * 2, np.float32)
        stream = model.stream(window=1.0, hop=0.5)
        stream.push(wave)
        stream.close()
        pool = model.stream_pool(window=1.0, hop=0.5)
        member = pool.open()
        member.feed(wave)
        member.finish()
        pool.score()
    finally:
        hook.remove()
    assert seen and all(seen) and paddle.is_grad_enabled()


class FailingOnce:
    """score_frames that fails on its `fail_at`-th call (0-based) and then works."""

    def __init__(self, score_frames, fail_at):
        self.score_frames, self.fail_at, self.calls = score_frames, fail_at, 0

    def __call__(self, waves):
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise RuntimeError('the engine failed')
        return self.score_frames(waves)


@pytest.mark.parametrize('fail_at', [0, 2, 5])
def test_a_network_failure_loses_no_window_and_no_event(fail_at):
    """The network fails in the middle of pool.score() (or of a stream's own score): the error goes
    on, and the next score() scores the windows left and gives the events decided before the
    failure, so every stream's events are those of a run without failure."""
    rng = np.random.default_rng(7)
    streams = plans(rng, 6)
    waves = [detection.audio.resample(np.concatenate(chunks).reshape(-1, channels).mean(axis=1), rate, CFG.sample_rate)
             for rate, channels, chunks in streams]
    config = config_for(waves)
    want = [alone(plan, config, 3) for plan in streams]
    scorer = numpy_scorer(WINDOW, HOP, 3)[0]
    scorer.score_frames = FailingOnce(scorer.score_frames, fail_at)
    pool = detection.StreamPool(scorer, config, 3)
    opened = [pool.open(rate, channels) for rate, channels, _ in streams]
    for stream, (_, _, chunks) in zip(opened, streams):
        for chunk in chunks:
            stream.feed(chunk)
        stream.finish()
    with pytest.raises(RuntimeError, match='engine failed'):
        pool.score()
    got = {id(s): [] for s in opened}
    for stream, events in pool.score().items():
        got[id(stream)] += events
    assert pool.streams == []
    for stream, expected in zip(opened, want):
        assert [e for e in got[id(stream)] if e['type'] == 'end'] == [e for e in expected if e['type'] == 'end']
    # One stream alone: push fails, the stream stays whole, close() gives the rest.
    rate, channels, chunks = streams[0]
    scorer = numpy_scorer(WINDOW, HOP, 3)[0]
    scorer.score_frames = FailingOnce(scorer.score_frames, 1)
    stream = detection.EventStream(scorer, rate, config, channels, 3)
    events = []
    for chunk in chunks:
        try:
            events += stream.push(chunk)
        except RuntimeError:
            pass
    events += stream.close()
    assert [e for e in events if e['type'] == 'end'] == [e for e in want[0] if e['type'] == 'end']


def test_a_pool_scores_at_most_batch_size_windows_per_network_call_taking_streams_in_turn():
    """Memory of score() is bounded by batch_size windows in all, not per stream: 20 streams with
    a backlog of several windows each go through calls of at most batch_size windows, each call
    taking every stream's next window before any stream's second."""
    scorer, net = numpy_scorer(WINDOW, HOP, 4)
    sizes = []
    score = scorer.score_frames
    scorer.score_frames = lambda waves: (sizes.append(len(waves)), score(waves))[1]
    pool = detection.StreamPool(scorer, batch_size=4)
    rng = np.random.default_rng(2)
    for _ in range(20):
        pool.open().feed((0.1 * rng.standard_normal(CFG.sample_rate * 3)).astype(np.float32))
    pool.score()
    assert max(sizes) == 4 and sum(sizes) >= 20 * 5   # 3 s of 1-s windows every 0.25 s: 9 windows each


# A sample value no healthy stream's audio holds (random normal noise, resampled): windows made of
# it are recognised in the batches score_frames gets.
POISON = 0.3125
DISCARDED = 0.4375


def holds(waves, value):
    """Which windows of a batch [windows, samples] are made of `value` (padding aside)."""
    return (np.asarray(waves) == value).sum(axis=1) > 100


class PoisonedNet:
    """score_frames that raises whenever a batch holds a window of the poison stream, as an engine
    that cannot take some input; records each error with whether its batch held only poison."""

    def __init__(self, score_frames):
        self.score_frames, self.raised = score_frames, []

    def __call__(self, waves):
        poisoned = holds(waves, POISON)
        if poisoned.any():
            error = RuntimeError('the engine cannot take this input')
            self.raised.append((error, bool(poisoned.all())))
            raise error
        return self.score_frames(waves)


def poison_plan(rng, seconds=2.0):
    """A mono stream at the model's rate (its samples reach the network unchanged) of POISON."""
    pcm = np.full(int(seconds * CFG.sample_rate), POISON, np.float32)
    return CFG.sample_rate, 1, np.split(pcm, np.sort(rng.integers(0, len(pcm), 4)))


def waves_of(plans_):
    return [detection.audio.resample(np.concatenate(chunks).reshape(-1, channels).mean(axis=1), rate, CFG.sample_rate)
            for rate, channels, chunks in plans_]


@pytest.mark.parametrize('score_every_feed', [True, False])
def test_a_stream_the_network_cannot_take_fails_alone(score_every_feed):
    """A poison stream among 5 healthy ones: score() never raises, the healthy streams report what
    they report alone, the poison one is failed with the error of a call of its own windows, and
    the pool goes on."""
    rng = np.random.default_rng(11)
    healthy = plans(rng, 5)
    config = config_for(waves_of(healthy))
    want = [alone(plan, config, 3) for plan in healthy]
    assert sum(map(len, want)) >= 5
    scorer = numpy_scorer(WINDOW, HOP, 3)[0]
    net = scorer.score_frames = PoisonedNet(scorer.score_frames)
    pool = detection.StreamPool(scorer, config, 3)
    got = run_pool(pool, healthy[:2] + [poison_plan(rng)] + healthy[2:], rng, score_every_feed)
    assert got[:2] + got[3:] == want
    [poison] = pool.failed
    assert got[2] == []   # its first window failed: it had decided nothing
    assert poison.error is pool.failed[poison] and any(error is poison.error and only_poison
                                                       for error, only_poison in net.raised)
    assert poison.frames.windows is None and not poison.frames.returned   # its audio is released
    with pytest.raises(ArgumentError, match='failed: the network could not score its audio'):
        poison.feed(np.zeros(100, np.float32))
    # The pool goes on: new streams report what they report alone; a failed stream discarded
    # leaves `failed`.
    pool.discard(poison)
    assert pool.failed == {}
    more = plans(rng, 3)
    assert run_pool(pool, more, rng, score_every_feed) == [alone(plan, config, 3) for plan in more]


def test_a_stream_alone_in_its_network_call_fails_when_the_network_scores_silence():
    """The poison stream's windows are the only ones of their round (the other stream is silent):
    its own call fails again, the network scores a window of silence, so the stream is failed
    rather than the error stalling every score()."""
    rng = np.random.default_rng(3)
    scorer = numpy_scorer(WINDOW, HOP, 4)[0]
    net = scorer.score_frames = PoisonedNet(scorer.score_frames)
    config = EventConfig(onset_threshold=0.5, offset_threshold=0.5, median_filter_seconds=0.0)
    pool = detection.StreamPool(scorer, config)
    quiet, poison = pool.open(), pool.open()
    poison.feed(np.full(2 * CFG.sample_rate, POISON, np.float32))
    assert pool.score() == {} and list(pool.failed) == [poison] and pool.streams == [quiet]
    assert [only_poison for _, only_poison in net.raised] == [True, True, True]   # its round, then alone twice
    assert isinstance(poison.error, RuntimeError)
    wave = (0.3 * rng.standard_normal(3 * CFG.sample_rate)).astype(np.float32)
    quiet.feed(wave)
    quiet.finish()
    events = pool.score().get(quiet, [])
    reference = detection.EventStream(numpy_scorer(WINDOW, HOP, 4)[0], CFG.sample_rate, config)
    assert events == reference.push(wave) + reference.close() and events and pool.streams == []


class DownFor:
    """score_frames that fails on calls first..end-1 (0-based; end None: until `up` is set) and
    otherwise works: the network down for every stream."""

    def __init__(self, score_frames, first, end=None):
        self.score_frames, self.first, self.end, self.calls = score_frames, first, end, 0

    def __call__(self, waves):
        self.calls += 1
        if self.first <= self.calls - 1 and (self.end is None or self.calls - 1 < self.end):
            raise RuntimeError('the engine is down')
        return self.score_frames(waves)


# (0, 2): the batch call and a stream's first call alone fail, its second works: a brief error.
@pytest.mark.parametrize('first,end', [(0, 1), (0, 2), (3, 4), (0, None), (4, None)])
def test_a_network_failing_for_every_stream_fails_no_stream_and_loses_nothing(first, end):
    """Once (end = first + 1) or until it is back (end None), from the start or after some calls:
    score() raises the network's error, no stream is failed, and once the network works the
    streams report what they report alone."""
    rng = np.random.default_rng(first)
    streams = plans(rng, 6)
    config = config_for(waves_of(streams))
    want = [alone(plan, config, 3) for plan in streams]
    scorer = numpy_scorer(WINDOW, HOP, 3)[0]
    net = scorer.score_frames = DownFor(scorer.score_frames, first, end)
    pool = detection.StreamPool(scorer, config, 3)
    opened = [pool.open(rate, channels) for rate, channels, _ in streams]
    for stream, (_, _, chunks) in zip(opened, streams):
        for chunk in chunks:
            stream.feed(chunk)
        stream.finish()
    got = {id(s): [] for s in opened}
    for _ in range(1 if end else 3):
        with pytest.raises(RuntimeError, match='engine is down'):
            pool.score()
        assert pool.failed == {} and pool.streams == opened and all(s.error is None for s in opened)
    net.end = net.calls   # up again
    for stream, events in pool.score().items():
        got[id(stream)] += events
    assert pool.streams == [] and pool.failed == {}
    assert [got[id(s)] for s in opened] == want


def test_a_discarded_stream_is_dropped_at_once_and_the_others_go_on():
    rng = np.random.default_rng(4)
    streams = plans(rng, 3)
    config = config_for(waves_of(streams))
    want = [alone(plan, config, 4) for plan in streams]
    scorer = numpy_scorer(WINDOW, HOP, 4)[0]
    batches = []
    score = scorer.score_frames
    scorer.score_frames = lambda waves: (batches.append(holds(waves, DISCARDED).any()), score(waves))[1]
    pool = detection.StreamPool(scorer, config, 4)
    opened = [pool.open(rate, channels) for rate, channels, _ in streams]
    dropped = pool.open()
    got = {id(s): [] for s in opened + [dropped]}

    def collect():
        for stream, events in pool.score().items():
            got[id(stream)] += events

    for stream, (_, _, chunks) in zip(opened, streams):
        for chunk in chunks[:len(chunks) // 2]:
            stream.feed(chunk)
    dropped.feed(np.full(2 * CFG.sample_rate, DISCARDED, np.float32))
    collect()
    assert any(batches)   # its windows were scored with the others'
    dropped.feed(np.full(3 * CFG.sample_rate, DISCARDED, np.float32))   # windows complete, unscored
    before = list(got[id(dropped)])
    pool.discard(dropped)
    assert dropped not in pool.streams and dropped.frames.windows is None and not dropped.frames.returned
    pool.discard(dropped)   # again: nothing to do
    with pytest.raises(ArgumentError, match='closed'):
        dropped.feed(np.zeros(100, np.float32))
    seen = len(batches)
    for stream, (_, _, chunks) in zip(opened, streams):
        for chunk in chunks[len(chunks) // 2:]:
            stream.feed(chunk)
        stream.finish()
    collect()
    assert not any(batches[seen:]) and len(batches) > seen   # none of its windows went through after
    assert [got[id(s)] for s in opened] == want and pool.streams == []
    assert got[id(dropped)] == before   # nothing reported after it was discarded
    other = detection.StreamPool(scorer, config).open()
    for stranger in (other, detection.EventStream(scorer, CFG.sample_rate, config)):
        with pytest.raises(ArgumentError, match='not opened by this pool'):
            pool.discard(stranger)
