"""Event detection with windows scored in batches (deploy/detection.py): the frame scores and
events of offline detection, of detection of many recordings at once and of live streams fed in
random chunks are those of scoring every window alone, for numpy scorers, Paddle modules and
exported models (one and an ensemble, onnxruntime), whatever the batch size and the lengths."""
import numpy as np
import pytest

from helpers import prime_batchnorm
from paddle_soundcls import Ensemble, Module
from paddle_soundcls.deploy import Predictor, detection
from paddle_soundcls.deploy.events import EventConfig
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.export import export_static
from paddle_soundcls.features.config import FrontendConfig
from paddle_soundcls.frames import FrameGeometry

LABELS = ['a', 'b', 'c']
RATE = 32000


# ----- a numpy network whose scores depend on the whole window -----

class NormalisingNet:
    """Frame scores [batch, frames', classes] of windows: every 8 front-end frames (80 samples
    each), a sigmoid of a fixed projection of the frame's samples divided by the mean magnitude of
    the WHOLE window (per-clip normalisation, as CP-Mobile's receptive-field norm or PaSST): zero
    padding to another window's length would change every score. Records each call's shape."""

    def __init__(self, classes=3, seed=1):
        self.weights = np.random.default_rng(seed).standard_normal((640, classes)).astype(np.float32) / 8
        self.calls = []

    def __call__(self, waves):
        waves = np.asarray(waves)
        self.calls.append(waves.shape)
        count = max(1, waves.shape[1] // 640)
        frames = np.zeros((len(waves), count, 640), np.float32)
        usable = min(waves.shape[1], count * 640)
        frames.reshape(len(waves), -1)[:, :usable] = waves[:, :usable]
        frames /= 1e-3 + np.abs(waves).mean(axis=1)[:, None, None]
        return 1 / (1 + np.exp(-(frames @ self.weights)))


CFG = FrontendConfig(sample_rate=8000, hop_length=80, n_fft=256, win_length=256)


def numpy_scorer(window, hop, batch_size, net=None, min_seconds=0.5):
    net = net or NormalisingNet()
    return detection.FrameScorer(net, CFG, LABELS, FrameGeometry(8, 3.5), window, hop, min_seconds,
                                 batch_size=batch_size), net


def lone_window_frames(window, hop, wave, min_seconds=0.5):
    """The reference: every window of SlidingWindow's cut scored alone (batch of 1), each mapped to
    the frame rate with np.interp and keeping the frames of its central hop (the first from its
    start, the last to the end of the last whole frame), as FrameStream documents."""
    net = NormalisingNet()
    geometry = FrameGeometry(8, 3.5)
    fs = CFG.hop_length
    w_frames, h_frames = round(window * CFG.sample_rate / fs), round(hop * CFG.sample_rate / fs)
    margin = (w_frames - h_frames) // 2
    total = len(wave) // fs
    min_samples = round(min_seconds * CFG.sample_rate)
    out, emitted, start = [], 0, 0

    def score(a, b):
        segment = wave[a * fs:b * fs]
        padded = np.pad(segment, (0, max(0, min_samples - len(segment))))
        coarse = net(padded[None])[0]
        positions = np.arange(b - a) + 0.5
        centres = geometry.offset + geometry.stride * np.arange(len(coarse))
        return np.stack([np.interp(positions, centres, coarse[:, c]) for c in range(coarse.shape[1])], 1)

    while (start + w_frames) * fs <= len(wave):
        fine = score(start, start + w_frames)
        kept = fine[emitted - start:margin + h_frames]
        out.append(kept)
        emitted += len(kept)
        start += h_frames
    if emitted < total:
        a = max(total - w_frames, 0)
        out.append(score(a, total)[emitted - a:])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 3), np.float32)


def chunked(stream, wave, rng):
    parts, i = [], 0
    while i < len(wave):
        size = int(rng.integers(1, 6000))
        parts.append(stream.push(wave[i:i + size]))
        i += size
    parts.append(stream.close())
    return np.concatenate(parts)


def recording_lengths(window, hop, rate):
    """Samples: shorter than a window, exactly one window, a whole number of hops after it, and
    not a whole number of hops (nor of frames)."""
    w, h = int(window * rate), int(hop * rate)
    return [int(0.3 * w), w, w + 5 * h, w + 7 * h + h // 3 + 17, 37]


@pytest.mark.parametrize('window, hop', [(1.0, 0.25), (1.5, 0.7), (0.8, 0.8)])
def test_batched_offline_and_streamed_frames_are_those_of_lone_windows(window, hop):
    rng = np.random.default_rng(int(window * 10 + hop * 100))
    for n in recording_lengths(window, hop, CFG.sample_rate):
        wave = rng.standard_normal(n).astype(np.float32)
        reference = lone_window_frames(window, hop, wave)
        assert len(reference) == n // CFG.hop_length
        for batch_size in (1, 2, int(rng.integers(3, 9)), 16):
            scorer, net = numpy_scorer(window, hop, batch_size)
            got = detection.detect(scorer, wave)['frame_scores']
            np.testing.assert_array_equal(got, reference)
            # Every call had at most batch_size windows, all of one length.
            assert all(shape[0] <= batch_size for shape in net.calls)
            assert detection.detect(scorer, wave, batch_size=1)['frame_scores'].tobytes() == reference.tobytes()
            stream = detection.FrameStream(numpy_scorer(window, hop, batch_size)[0])
            np.testing.assert_array_equal(chunked(stream, wave, rng), reference)


def test_windows_of_one_recording_share_calls_and_different_lengths_never_do():
    scorer, net = numpy_scorer(1.0, 0.25, batch_size=4)
    wave = np.random.default_rng(0).standard_normal(8000 * 3 + 1234).astype(np.float32)
    detection.detect(scorer, wave)
    # 3.15 s: 9 windows of 1 s every 0.25 s and the last one ending at the last whole frame
    # (also 1 s long): 10 windows of 8000 samples in calls of 4, 4 and 2.
    assert net.calls == [(4, 8000), (4, 8000), (2, 8000)]
    scorer, net = numpy_scorer(1.0, 0.25, batch_size=4)
    waves = [np.ones(n, np.float32) for n in (8000 * 2, 1000, 8000 * 2, 3000, 1000)]
    results = detection.detect_inputs(scorer, waves, sample_rate=8000)
    # Across recordings: 6 + 6 full windows (2 s: windows every 0.25 s to 1 s, and the last one
    # ending at the end, again at 1 s) in calls of 4; the three short recordings, padded to
    # min_seconds (4000 samples) as when alone, in one call of their own, never padded to a window.
    assert net.calls == [(4, 8000), (4, 8000), (4, 8000), (3, 4000)]
    for wave, got in zip(waves, results):
        np.testing.assert_array_equal(got['frame_scores'], lone_window_frames(1.0, 0.25, wave))


def test_many_recordings_are_those_of_each_alone_with_few_windows_held():
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(int(rng.integers(30, 8000 * 6))).astype(np.float32) for _ in range(15)]
    waves.append(rng.standard_normal(8000 * 60).astype(np.float32))   # a minute: 237 windows
    held, cut = [0], [0]
    original_next = detection.FrameStream.next_window

    def counting_next(self):
        window = original_next(self)
        if window is not None:
            cut[0] += 1
        return window
    scorer, net = numpy_scorer(1.0, 0.25, batch_size=6)

    def scoring(waves_batch):
        held[0] = max(held[0], cut[0] - sum(s[0] for s in net.calls))
        return NormalisingNet.__call__(net, waves_batch)
    scorer.score_frames = scoring
    detection.FrameStream.next_window = counting_next
    try:
        results = detection.detect_inputs(scorer, waves, sample_rate=8000, config=EventConfig())
    finally:
        detection.FrameStream.next_window = original_next
    for wave, got in zip(waves, results):
        assert got['frame_scores'].tobytes() == lone_window_frames(1.0, 0.25, wave).tobytes()
        assert got['events'] == detection.detect(numpy_scorer(1.0, 0.25, 1)[0], wave)['events']
    # Windows wait for their batch, never a minute of them: at most a batch per length, and the
    # bounded wait of the short recordings (twice the batch).
    assert held[0] <= 3 * 6 + 1, held[0]


def test_a_live_stream_scores_each_window_when_it_completes():
    """Batching does not delay a stream: the frames of a window come with the push that completes it."""
    scorer, net = numpy_scorer(1.0, 0.5, batch_size=16)
    stream = detection.FrameStream(scorer)
    wave = np.random.default_rng(5).standard_normal(8000 * 4).astype(np.float32)
    assert len(stream.push(wave[:7999])) == 0
    # The first window keeps its start and its central hop: 25 + 50 frames.
    assert len(stream.push(wave[7999:8000])) == 75
    assert len(stream.push(wave[8000:12000])) == 50
    # Two windows complete within one push: one call scores both.
    net.calls.clear()
    assert len(stream.push(wave[12000:20000])) == 100
    assert net.calls == [(2, 8000)]


def test_frames_at_rate_is_np_interp_of_each_window():
    rng = np.random.default_rng(7)
    for stride, offset in [(8, 0.0), (8, 3.5), (16, 7.5), (32, 0.0), (2, 0.5), (1, 0.0)]:
        geometry = FrameGeometry(stride, offset)
        for count in (1, 2, 9):
            for num_frames in (1, stride * count - 3, stride * count, stride * count + 11):
                if num_frames < 1:
                    continue
                coarse = rng.random((5, count, 4)).astype(np.float32)
                got = detection.frames_at_rate(geometry, coarse, num_frames)
                positions = np.arange(num_frames) + 0.5
                centres = offset + stride * np.arange(count)
                for w in range(5):
                    want = np.stack([np.interp(positions, centres, coarse[w, :, c]) for c in range(4)], 1)
                    assert got[w].tobytes() == want.astype(np.float32).tobytes()
    with pytest.raises(ArgumentError, match='at least one frame'):
        detection.frames_at_rate(FrameGeometry(8), np.zeros((2, 0, 3)), 4)


def test_batch_size_must_be_a_positive_integer():
    scorer, _ = numpy_scorer(1.0, 0.5, batch_size=4)
    for bad in (0, -1, 2.5, 'x'):
        with pytest.raises(ArgumentError, match='batch_size'):
            detection.detect(scorer, np.zeros(8000, np.float32), batch_size=bad)
        with pytest.raises(ArgumentError, match='batch_size'):
            numpy_scorer(1.0, 0.5, batch_size=bad)


# ----- real networks -----

def clear_thresholds(scores):
    """Per-class onset/offset thresholds in wide gaps between the reference's frame scores (the
    widest in the upper scores, and the widest below it), so that rounding of the order of the
    engine's (1e-6) cannot move an event's edge."""
    onsets, offsets = [], []
    for c in range(scores.shape[1]):
        values = np.unique(scores[:, c].astype(np.float64))
        gaps = [(b - a, (a + b) / 2) for a, b in zip(values[:-1], values[1:]) if b - a > 1e-4]
        upper = [g for g in gaps if g[1] >= np.quantile(values, 0.4)]
        onset = max(upper)[1] if upper else (values[-1] + 1) / 2
        lower = [g for g in gaps if g[1] < onset]
        onsets.append(float(onset))
        offsets.append(float(max(lower)[1]) if lower else float(onset))
    return EventConfig(onset_threshold=onsets, offset_threshold=offsets, median_filter_seconds=0.0,
                       min_duration_seconds=0.0, min_gap_seconds=0.0)


def assert_same_events(got, want, atol):
    assert [(e['label'], e['onset'], e['offset']) for e in got] == [(e['label'], e['onset'], e['offset'])
                                                                    for e in want]
    np.testing.assert_allclose([e['confidence'] for e in got], [e['confidence'] for e in want], atol=atol, rtol=0)


def module(name, seed):
    m = Module(name, task='sound-cls', label_map=LABELS, multi_label=True, pretrained=False, seed=seed)
    rng = np.random.default_rng(seed)
    return prime_batchnorm(m, (0.1 * rng.standard_normal((3, RATE))).astype(np.float32))


@pytest.fixture(scope='module')
def engines(tmp_path_factory):
    """name -> (scorer factory (window, hop, batch_size) -> FrameScorer, atol)."""
    root = tmp_path_factory.mktemp('batching')
    modules = {name: module(name, seed) for seed, name in enumerate(['panns_cnn6', 'efficientat_mn04', 'cpmobile'])}
    export_static(modules['efficientat_mn04'], root / 'mn04', opset=13)
    export_static(Ensemble([modules['efficientat_mn04'], modules['panns_cnn6']]), root / 'ensemble', opset=13)
    made = {}
    # Paddle's convolutions round a batch a little differently from one window (a few 1e-7 here,
    # 1.1e-6 once for mn04 on a loaded machine: oneDNN picks kernels by load and shape);
    # onnxruntime gives the same float32 scores whatever the batch.
    for name, m in modules.items():
        made[name] = (lambda window, hop, batch_size, m=m: _with_batch(m.frame_scorer(window, hop), batch_size), 3e-6)
    for name in ('mn04', 'ensemble'):
        p = Predictor(root / name)
        made[f'{name} onnxruntime'] = (lambda window, hop, batch_size, p=p: _with_batch(p.frame_scorer(window, hop),
                                                                                        batch_size), 0.0)
    return made


def _with_batch(scorer, batch_size):
    scorer.batch_size = batch_size
    return scorer


@pytest.mark.parametrize('name', ['panns_cnn6', 'efficientat_mn04', 'cpmobile', 'mn04 onnxruntime',
                                  'ensemble onnxruntime'])
def test_batched_detection_of_real_networks_is_that_of_lone_windows(name, engines):
    make, atol = engines[name]
    rng = np.random.default_rng(len(name))
    window, hop = 1.0, 0.4
    lengths = recording_lengths(window, hop, RATE)[:4]
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    lone = [detection.detect(make(window, hop, 1), w) for w in waves]
    configs = [clear_thresholds(r['frame_scores']) for r in lone]
    batch_size = int(rng.integers(2, 7))
    together = detection.detect_inputs(make(window, hop, batch_size), waves, sample_rate=RATE)
    for wave, alone, config, batched in zip(waves, lone, configs, together):
        want = alone['frame_scores']
        assert want.shape == (len(wave) // make(window, hop, 1).frame_samples, len(LABELS))
        offline = detection.detect(make(window, hop, batch_size), wave, config)
        streamed = chunked(detection.FrameStream(make(window, hop, batch_size)), wave, rng)
        for got in (offline['frame_scores'], batched['frame_scores'], streamed):
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)
        want_events = detection.detect(make(window, hop, 1), wave, config)['events']
        assert_same_events(offline['events'], want_events, atol)
        assert_same_events(detection.result(make(window, hop, 1), [streamed], config)['events'], want_events, atol)


def test_scores_an_engine_rounds_just_above_one_are_probabilities():
    """onnxruntime's sigmoid gives 1.0000001 for some saturated logits: detection takes them as 1."""
    scorer, _ = numpy_scorer(1.0, 0.25, 4, net=lambda waves: np.full((len(waves), 8, len(LABELS)),
                                                                       np.nextafter(np.float32(1), np.float32(2))))
    result = detection.detect(scorer, np.zeros(CFG.sample_rate * 3, np.float32))
    assert result['frame_scores'].max() == 1.0 and len(result['events']) == len(LABELS)


# ----- scorers of features: the windows of a stream share their front-end frames -----

class FeatureNet:
    """Frame scores of log-mel features [batch, frames, n_mels]: every 8 front-end frames, a sigmoid
    of a fixed projection of their mean. Records the shape of each call."""

    def __init__(self, classes=3, seed=2):
        self.weights = np.random.default_rng(seed).standard_normal((CFG.n_mels, classes)).astype(np.float32) / 40
        self.calls = []

    def __call__(self, features):
        features = np.asarray(features)
        self.calls.append(features.shape)
        count = max(1, features.shape[1] // 8)
        blocks = features[:, :count * 8].reshape(len(features), count, 8, -1).mean(axis=2)
        return 1 / (1 + np.exp(-(blocks @ self.weights + 1.0)))


def feature_scorers(window, hop, batch_size=4):
    """The same network scoring features (windows share their frames) and scoring samples (each
    window's features computed from its samples alone)."""
    from paddle_soundcls.features.mel import logmel
    net = FeatureNet()
    args = (CFG, LABELS, FrameGeometry(8, 3.5), window, hop, 0.5)
    by_features = detection.FrameScorer(lambda waves: net(logmel(waves, CFG)), *args, batch_size=batch_size,
                                        score_features=net)
    by_samples = detection.FrameScorer(lambda waves: net(logmel(waves, CFG)), *args, batch_size=batch_size)
    return by_features, by_samples, net


@pytest.mark.parametrize('window, hop', [(1.0, 0.25), (1.5, 0.7), (0.8, 0.8)])
def test_windows_that_share_features_give_the_frames_of_windows_scored_from_their_samples(window, hop,
                                                                                        monkeypatch):
    from paddle_soundcls.features import mel
    rows = []
    mel_power = mel.mel_power
    monkeypatch.setattr(mel, 'mel_power', lambda frames, cfg: (rows.append(frames.shape[-2]), mel_power(frames, cfg))[1])
    rng = np.random.default_rng(int(window * 10 + hop * 100) + 1)
    for n in recording_lengths(window, hop, CFG.sample_rate):
        wave = (0.3 * rng.standard_normal(n)).astype(np.float32)
        by_features, by_samples, net = feature_scorers(window, hop)
        rows.clear()
        got = detection.detect(by_features, wave)['frame_scores']
        computed, net_calls = sum(rows), list(net.calls)
        want = detection.detect(by_samples, wave)['frame_scores']
        # Each front-end frame is computed on its own: the shared frames are those of each window alone.
        np.testing.assert_array_equal(got, want)
        assert all(len(shape) == 3 and shape[2] == CFG.n_mels for shape in net_calls)   # features went in
        if n > 4 * window * CFG.sample_rate:   # many windows: each frame computed about once
            windows = sum(shape[0] for shape in net_calls)
            assert computed < 1.3 * n / CFG.hop_length
            assert hop == window or computed < 0.6 * windows * by_features.window_frames   # not once per window
        # A live stream of any chunking and a pool give the offline frames bit for bit.
        stream = detection.FrameStream(feature_scorers(window, hop)[0])
        np.testing.assert_array_equal(chunked(stream, wave, rng), got)


def test_shared_features_are_refused_for_a_front_end_that_normalises_each_clip():
    from paddle_soundcls.features.mel import OverlapFeatures
    clip_normalised = FrontendConfig(sample_rate=8000, hop_length=80, n_fft=256, win_length=256, top_db=80.0)
    with pytest.raises(ArgumentError, match='top_db'):
        OverlapFeatures(clip_normalised)
    net = FeatureNet()
    scorer = detection.FrameScorer(lambda waves: net(waves), clip_normalised, LABELS, FrameGeometry(8, 3.5), 1.0,
                                   0.25, 0.5, score_features=net)
    assert scorer.score_features is None   # its windows are scored from their samples
    with pytest.raises(ArgumentError, match='start on a frame'):
        OverlapFeatures(CFG).window(81, np.zeros(8000, np.float32))


def test_windows_cut_with_deferred_features_are_the_windows_cut_at_once():
    """next_window(defer=True) (the server's event streams: features computed in its engine thread)
    gives windows whose shape is known before their features, and whose prepared() features are
    those of next_window() bit for bit."""
    rng = np.random.default_rng(5)
    for window, hop in ((1.0, 0.25), (1.5, 0.7)):
        for n in recording_lengths(window, hop, CFG.sample_rate):
            wave = (0.3 * rng.standard_normal(n)).astype(np.float32)
            at_once, deferred = (detection.FrameStream(feature_scorers(window, hop)[0]) for _ in range(2))
            for stream in (at_once, deferred):
                stream.feed(wave)
                stream.finish()
            while (want := at_once.next_window()) is not None:
                got = deferred.next_window(defer=True)
                assert got.shape == want.shape and (got.start, got.frames, got.final) == (want.start, want.frames,
                                                                                         want.final)
                np.testing.assert_array_equal(got.prepared(), want.inputs)
            assert deferred.next_window(defer=True) is None
