"""Where network frames sit in time, for every registered model (generated from list_models()).

Each model is made into a time-symmetric detector: every convolution averages its window with
equal weights, every Linear averages its inputs, BatchNorm is the identity (the first one adds a
constant that keeps every activation positive, so no ReLU clips and the network is linear in
its log-mel input). Such a network answers a tone burst centred at c with frame logits that are
symmetric about c, so wherever the detection pipeline puts its frames, the logit difference
between the clip with the burst and the clip without must be centred at c. The centre is the
centroid of that difference (a peak would sit on the nearest network frame, up to half a frame
spacing away: 0.16 s for the MobileNets). Checked in Module.detect (dygraph), Predictor.detect
on the export (onnxruntime), frame scores of a stream fed in random chunks, and the events of
Predictor.stream. Spreading a window's network frames evenly over it (what detection did
before frame geometry) misses these centres by 27-60 ms.
"""
import math

import numpy as np
import paddle
import pytest

from paddle_soundcls import Module, list_models
from paddle_soundcls.deploy import Predictor, detection
from paddle_soundcls.deploy.events import EventConfig
from paddle_soundcls.export import export_static
from paddle_soundcls.features.mel import logmel
from paddle_soundcls.frames import FrameGeometry
from paddle_soundcls.models import registry
from helpers import WEIGHTS_ONLY_TWINS

LARGE = 12_000_000           # parameters; larger models run with -m slow
TOLERANCE = 0.020            # seconds
SECONDS = 14.0
CENTRES = (3.6, 7.45, 10.4)   # 7.45: where two detection windows are stitched (default window 10 s)
FIRST_BIAS = 110.0           # above the -100 dB floor of the PANNs log-mel


# The symmetric detector below makes every channel of a token equal, which a transformer's per-token
# LayerNorm maps to zero: PaSST's geometry is checked on its patch spans in tests/test_passt.py.
NO_SYMMETRIC_DETECTOR = {'passt': 'per-token LayerNorm erases a constant-channel response; see tests/test_passt.py'}


def cases():
    """Every model; by default the smallest of each family and frame geometry (its siblings are
    the same layers, wider or deeper: they run with -m slow, as do models above LARGE)."""
    smallest = {}
    for name in list_models():
        if name in WEIGHTS_ONLY_TWINS:   # slow wherever every model is tested (conftest.py)
            continue
        spec = registry.get_spec(name)
        key = (spec.family, getattr(spec.build, 'func', spec.build).__module__, spec.frame_geometry)
        params = spec.published.get('params') or float('inf')   # unpublished: after any published size
        if key not in smallest or params < smallest[key][0]:
            smallest[key] = (params, name)
    representatives = {name for _, name in smallest.values()}
    out = []
    for name in list_models():
        spec = registry.get_spec(name)
        if spec.family in NO_SYMMETRIC_DETECTOR:
            out.append(pytest.param(name, marks=pytest.mark.skip(reason=NO_SYMMETRIC_DETECTOR[spec.family])))
        elif spec.published.get('params', 0) > LARGE or name not in representatives:
            out.append(pytest.param(name, marks=pytest.mark.slow))
        else:
            out.append(name)
    return out


def symmetric_detector(name):
    module = Module(name, task='sound-cls', label_map=['burst'], multi_label=True, pretrained=False, seed=0)
    first = True
    for layer in module.sublayers():
        if isinstance(layer, (paddle.nn.Conv1D, paddle.nn.Conv2D)):
            shape = layer.weight.shape
            layer.weight.set_value(np.full(shape, 1.0 / int(np.prod(shape[1:])), 'float32'))
            if layer.bias is not None:
                layer.bias.set_value(np.zeros(layer.bias.shape, 'float32'))
        elif isinstance(layer, (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D)):
            layer.weight.set_value(np.ones(layer.weight.shape, 'float32'))
            layer.bias.set_value(np.full(layer.bias.shape, FIRST_BIAS if first else 0.0, 'float32'))
            layer._mean.set_value(np.zeros(layer._mean.shape, 'float32'))
            layer._variance.set_value(np.ones(layer._variance.shape, 'float32'))
            first = False
        elif isinstance(layer, paddle.nn.Linear):
            layer.weight.set_value(np.full(layer.weight.shape, 1.0 / layer.weight.shape[0], 'float32'))
            if layer.bias is not None:
                layer.bias.set_value(np.zeros(layer.bias.shape, 'float32'))
    module.eval()
    # Scale the head so the logits of the clips below span [-3, 3]: no sigmoid saturates.
    sr = module.frontend_cfg.sample_rate
    with paddle.no_grad():
        base, burst = (module.frame_logits(module.frontend(paddle.to_tensor(scene(sr, centres)[None]))).numpy()
                       for centres in ((), CENTRES))
    low, high = float(base.min()), float(burst.max())
    scale = 6.0 / (high - low)
    module.fc.weight.set_value(module.fc.weight.numpy() * scale)
    module.fc.bias.set_value(np.asarray([-(low + high) / 2 * scale], 'float32'))
    return module


def tone(freq, count, sr, amp):
    return (amp * np.sin(2 * np.pi * freq * np.arange(count) / sr)).astype(np.float32)


def scene(sr, centres, burst_seconds=0.4, ramp_seconds=0.02):
    """A steady 300-Hz tone with 1-kHz bursts of burst_seconds centred at `centres`, faded in and
    out over ramp_seconds: a burst switched on at once clicks at both ends, and a network that
    answers the broadband clicks more than the tone (CP-ResNet's damped kernels) would score
    each burst as two events."""
    wave = tone(300, int(SECONDS * sr), sr, 0.05)
    ramp = int(ramp_seconds * sr)
    rise = (0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)).astype(np.float32)
    for c in centres:
        start, end = int(round((c - burst_seconds / 2) * sr)), int(round((c + burst_seconds / 2) * sr))
        burst = tone(1000, end - start, sr, 0.3)
        burst[:ramp] *= rise
        burst[-ramp:] *= rise[::-1]
        wave[start:end] += burst
    return wave


def logit(scores):
    p = np.asarray(scores, dtype=np.float64)
    return np.log(p / (1 - p))


def burst_centres(with_bursts, without, hop, radius):
    """The centroid of the logit difference around each burst."""
    diff = logit(with_bursts[:, 0]) - logit(without[:, 0])
    times = (np.arange(len(diff)) + 0.5) * hop
    found = []
    for c in CENTRES:
        near = np.abs(times - c) <= radius
        found.append(float((diff[near] * times[near]).sum() / diff[near].sum()))
    return np.array(found)


@pytest.fixture(scope='module')
def detectors(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            module = symmetric_detector(name)
            out = tmp_path_factory.mktemp(name) / 'export'
            export_static(module, out, opset=13)
            made[name] = (module, Predictor(out))
        return made[name]
    return get


@pytest.mark.parametrize('name', cases())
def test_frame_scores_are_centred_on_the_sound(name, detectors):
    module, predictor = detectors(name)
    sr = module.frontend_cfg.sample_rate
    waves = [scene(sr, CENTRES), scene(sr, ())]
    spacing = module.frame_geometry.seconds(module.frontend_cfg)
    radius = max(0.6, 2 * spacing)

    dygraph = module.detect(waves, sample_rate=sr)
    hop = dygraph[0]['frame_hop']
    assert hop == module.frontend_cfg.hop_length / sr
    exported = predictor.detect(waves, sample_rate=sr)
    # A stream fed chunks of random lengths gives the frames of offline detection.
    rng = np.random.default_rng(0)
    streamed = []
    for wave in waves:
        frames = detection.FrameStream(predictor.frame_scorer(), batch_size=1)
        parts, start = [], 0
        while start < len(wave):
            size = int(rng.integers(1, sr))
            parts.append(frames.push(wave[start:start + size]))
            start += size
        parts.append(frames.close())
        streamed.append(np.concatenate([p for p in parts if len(p)]))

    for what, (a, b) in {'Module.detect': (dygraph[0]['frame_scores'], dygraph[1]['frame_scores']),
                         'Predictor.detect': (exported[0]['frame_scores'], exported[1]['frame_scores']),
                         'stream': tuple(streamed)}.items():
        found = burst_centres(a, b, hop, radius)
        assert np.abs(found - CENTRES).max() <= TOLERANCE, f'{name} {what}: centres {found} for bursts at {CENTRES}'
    # The same windows scored one at a time, as a live stream mostly scores them: the same frames
    # however the audio is chunked. Offline detection batches its windows, and onnxruntime rounds
    # a batch of one apart from larger ones (by up to 3e-4 with these weights for RFN and dynamic
    # convolutions, 3e-8 with random ones).
    alone = detection.detect(predictor.frame_scorer(), waves[0], batch_size=1)['frame_scores']
    np.testing.assert_allclose(streamed[0], alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(exported[0]['frame_scores'], alone, rtol=0, atol=1e-3)


@pytest.mark.parametrize('name', cases())
def test_stream_events_are_centred_on_the_sound(name, detectors):
    """Events of Predictor.stream (2-channel PCM in chunks of random size, some a single frame):
    with a threshold halfway up the bursts' score, each event is centred on its burst."""
    module, predictor = detectors(name)
    sr = module.frontend_cfg.sample_rate
    wave = scene(sr, CENTRES)
    offline = predictor.detect([wave], sample_rate=sr)[0]['frame_scores'][:, 0]
    hop = module.frontend_cfg.hop_length / sr
    times = (np.arange(len(offline)) + 0.5) * hop
    peaks = [offline[np.abs(times - c) <= 0.3].max() for c in CENTRES]
    # Halfway between the loudest answer away from the bursts (the clip's edges included, where a
    # network that normalises each clip, such as cpmobile_rfn, answers the padding) and the
    # weakest burst.
    away = np.min(np.abs(times[:, None] - np.asarray(CENTRES)[None]), axis=1) > 0.5
    floor = offline[away].max()
    assert floor < min(peaks), f'{name}: scores away from the bursts reach {floor}, the bursts {peaks}'
    threshold = float(floor + (min(peaks) - floor) / 2)
    config = EventConfig(onset_threshold=threshold, offset_threshold=threshold, median_filter_seconds=0.0,
                         min_duration_seconds=0.0, min_gap_seconds=0.0)
    stream = predictor.stream(sample_rate=sr, config=config, channels=2)
    stereo = np.stack([wave, wave], axis=1)
    rng = np.random.default_rng(1)
    reports, start = [], 0
    while start < len(stereo):
        size = 1 if rng.random() < 0.05 else int(rng.integers(1, sr // 2))
        reports += stream.push(stereo[start:start + size])
        start += size
    reports += stream.close()
    ends = [r for r in reports if r['type'] == 'end']
    assert len(ends) == len(CENTRES), reports
    middles = np.array([(r['onset'] + r['offset']) / 2 for r in ends])
    # Event times are on the 10-ms frame grid: half a frame more.
    assert np.abs(middles - CENTRES).max() <= TOLERANCE + hop / 2, f'{name}: events {ends}'


@pytest.mark.parametrize('name', list_models())
@pytest.mark.parametrize('hop', [5.0, 10.0])
def test_detection_places_frames_where_the_geometry_says(name, hop):
    """Detection alone, for every registered model's front end and geometry: a numpy "network"
    whose frame j is a Hann-weighted mean of the log-mel energy centred on j's declared centre
    (front-end frame k is centred on k; the window spans four network frames), scored window by
    window as detect() does. Bursts near the start and the end of a window, where spreading
    frames evenly over the window was off by the most (+0.14 s for the MobileNets)."""
    spec = registry.get_spec(name)
    cfg, geometry = spec.frontend, spec.frame_geometry

    def score_frames(waves):
        energy = logmel(waves, cfg).mean(axis=2)                 # [batch, front-end frames]
        count = energy.shape[1] // geometry.stride
        distance = np.arange(energy.shape[1])[None, :] - geometry.centres(count)[:, None]
        weights = np.where(np.abs(distance) < 2 * geometry.stride, np.cos(np.pi * distance / (4 * geometry.stride)) ** 2,
                           0.0)
        means = energy @ (weights / weights.sum(axis=1, keepdims=True)).T
        return 1 / (1 + np.exp(-means[..., None] / 50))          # monotone: still symmetric

    scorer = detection.FrameScorer(score_frames, cfg, ['burst'], geometry, window=10.0, hop=hop,
                                   min_seconds=spec.min_seconds)
    sr, centres = cfg.sample_rate, (1.5, 8.5, 11.3)
    a, b = (detection.detect(scorer, scene(sr, c))['frame_scores'] for c in (centres, ()))
    diff = (a - b)[:, 0]
    times = (np.arange(len(diff)) + 0.5) * cfg.hop_length / sr
    for c in centres:
        near = np.abs(times - c) <= 0.6
        found = (diff[near] * times[near]).sum() / diff[near].sum()
        assert abs(found - c) <= TOLERANCE, f'{name}: burst at {c} s detected at {found:.3f} s'


# The geometry itself ---------------------------------------------------------------------------

def test_to_frame_rate_places_each_network_frame_at_its_centre():
    geometry = FrameGeometry(stride=32, offset=15.5)
    coarse = np.zeros((10, 1), np.float32)
    coarse[4] = 1.0                       # centred on front-end frame 15.5 + 4 * 32 = 143.5
    fine = geometry.to_frame_rate(coarse, 320)[:, 0]
    # output frame i is centred on i + 0.5: frame 143 holds the peak, and the ramps are linear
    assert fine.argmax() == 143 and fine[143] == 1.0
    np.testing.assert_allclose(fine[143 - 32:144], np.linspace(0, 1, 33), atol=1e-6)
    assert fine[0] == 0.0 and fine[-1] == 0.0   # held beyond the first and last network frames


def test_spans_tile_the_time_axis_and_pool_targets_is_the_max_over_each_span():
    for geometry in (FrameGeometry(32, 15.5), FrameGeometry(32, 0), FrameGeometry(16, 7.5), FrameGeometry(8, 0)):
        count, num_frames = 20, 20 * geometry.stride + 5
        first, end = geometry.spans(count, num_frames)
        assert first[0] == 0 and np.all(first[1:] == end[:-1])          # no gap, no overlap
        centres = geometry.centres(count)
        for j in range(count):
            inside = [i for i in range(num_frames) if centres[j] - geometry.stride / 2 <= i + 0.5
                      < centres[j] + geometry.stride / 2]
            assert list(range(first[j], end[j])) == inside
        targets = np.random.default_rng(0).random((2, num_frames, 3)) > 0.97
        pooled = geometry.pool_targets(targets, count)
        expected = np.stack([targets[:, a:b].max(axis=1) if b > a else np.zeros((2, 3), bool)
                             for a, b in zip(first, end)], axis=1)
        np.testing.assert_array_equal(pooled, expected.astype(np.float32))


@pytest.mark.parametrize('name', cases())
def test_every_model_declares_where_its_network_frames_are_centred(name):
    """The network alone, without the front end or detection: a small bump of log-mel at input
    frame k changes network frame j of the time-symmetric detector by a response symmetric
    about j's true centre; its centroid over k must be the declared one (to half a frame)."""
    module = symmetric_detector(name)
    spec, net = module.spec, module.backbone
    # Long enough that the frame in the middle is far from both edges even for ResNet-34's wide
    # receptive field (with 256 input frames its zero padding pulled the centroid 1.4 frames off).
    frames, n_mels = 512, spec.frontend.n_mels
    with paddle.no_grad():
        base = net.forward_frames(paddle.zeros([1, frames, n_mels]))[0, :, 0].numpy()
    geometry = spec.frame_geometry
    j = len(base) // 2
    centre = geometry.centres(len(base))[j]
    positions = np.arange(math.floor(centre - geometry.stride), math.ceil(centre + geometry.stride) + 1)
    bumps = np.zeros((len(positions), frames, n_mels), np.float32)
    bumps[np.arange(len(positions)), positions] = 1.0
    with paddle.no_grad():
        response = net.forward_frames(paddle.to_tensor(bumps))[:, j, 0].numpy() - base[j]
    assert response.min() >= 0 and response.sum() > 0
    found = float((response * positions).sum() / response.sum())
    assert abs(found - centre) <= 0.5, f'{name}: network frame {j} is centred on input frame {found}, declared {centre}'


def test_exports_record_the_geometry_and_older_ones_refuse_detection(detectors, tmp_path):
    import json
    import shutil

    from paddle_soundcls.deploy.exportdir import ExportError
    module, predictor = detectors('panns_cnn6')
    expected = {'stride': 16, 'offset': 7.5, 'context': 54}   # CNN6: its frames see 54 front-end frames
    assert predictor.meta['frame_geometry'] == expected == module.frame_geometry.to_dict()
    old = tmp_path / 'old'
    shutil.copytree(predictor.model_dir, old)
    meta = json.loads((old / 'export.json').read_text())
    del meta['frame_geometry']
    (old / 'export.json').write_text(json.dumps(meta))
    older = Predictor(old)
    wave = scene(module.frontend_cfg.sample_rate, ())
    assert older.predict([wave], sample_rate=module.frontend_cfg.sample_rate)   # scores need no geometry
    with pytest.raises(ExportError, match='frame_geometry.*export the model again'):
        older.detect([wave], sample_rate=module.frontend_cfg.sample_rate)


def test_windows_shorter_than_the_network_takes_are_refused(detectors):
    module, predictor = detectors('panns_cnn6')
    for engine in (module, predictor):
        with pytest.raises(ValueError, match=r'window \(0.5 s\) is shorter than .*1 s'):
            engine.detect([scene(32000, ())], sample_rate=32000, window=0.5, hop=0.25)
        with pytest.raises(ValueError, match='window'):
            engine.stream(window=0.5)


def test_models_trained_on_clips_shorter_than_the_network_takes_detect_with_the_default_window(detectors):
    """clip_seconds below min_seconds (a Trainer on 0.5-s clips): the default window is the
    network's shortest input, not a refused 0.5 s; 0, False or NaN are refused, not defaulted."""
    module, predictor = detectors('panns_cnn6')
    module.clip_seconds = 0.5
    try:
        scorer = module.frame_scorer()
        assert scorer.window_frames * scorer.frame_seconds == pytest.approx(1.0)
        [result] = module.detect([scene(32000, ())], sample_rate=32000)
        assert len(result['frame_scores']) == int(SECONDS * 100)
        module.stream().close()
    finally:
        module.clip_seconds = None
    for engine in (module, predictor):
        for bad in (0, False, float('nan')):
            with pytest.raises(ValueError, match='window'):
                engine.detect([scene(32000, ())], sample_rate=32000, window=bad)
            with pytest.raises(ValueError, match='sample_rate'):
                engine.stream(sample_rate=bad)


def test_a_tampered_frame_geometry_is_refused_when_the_export_is_read(detectors, tmp_path):
    import json
    import shutil

    from paddle_soundcls.deploy.exportdir import ExportError
    _, predictor = detectors('panns_cnn6')
    for bad in ({'stride': 16, 'offset': 1e300}, {'stride': 0, 'offset': 0}, {'stride': 16}, [16, 7.5]):
        copy = tmp_path / f'bad{len(list(tmp_path.iterdir()))}'
        shutil.copytree(predictor.model_dir, copy)
        meta = json.loads((copy / 'export.json').read_text())
        meta['frame_geometry'] = bad
        (copy / 'export.json').write_text(json.dumps(meta))
        with pytest.raises(ExportError, match=r'export\.json: frame geometry'):
            Predictor(copy)
