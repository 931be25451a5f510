"""Overlapping windows scored once (deploy/detection.py, FrameScorer.mergeable_windows, merge=True).

Where a network frame sees only `context` front-end frames around it (FrameGeometry.context),
k consecutive windows can be scored as one segment and each keeps the same frames. Checked bit for
bit against the per-window path (the same scorer with merge_windows 1) with a network whose frames
are computed the same way whatever the input's length (LocalNetwork), at the geometries and front
ends of CP-Mobile and the PANNs; the registered networks themselves (random weights, Paddle dygraph
and the export through onnxruntime) give the same frames up to rounding, as their engines round a
frame differently with the input's length; Module.detect and Predictor.detect merge by default,
and frame_scorer(merge=False) scores window by window. The refusals (hop off
the network's frame grid, margin too small, networks that see their whole input) are checked
against what merging would give there, the declared contexts against perturbations of the input,
live streams against offline detection.
"""
import copy
import math

import numpy as np
import paddle
import pytest

from paddle_soundcls import Module
from paddle_soundcls.deploy import Predictor, detection
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.export import export_static
from paddle_soundcls.frames import FrameGeometry, check_geometry
from paddle_soundcls.models import registry

WITH_CONTEXT = ['panns_cnn6', 'panns_cnn10', 'cpmobile', 'cpmobile_ssn', 'cpresnet', 'cpresnet_damped',
                pytest.param('panns_cnn14', marks=pytest.mark.slow),
                pytest.param('resnet18_mel', marks=pytest.mark.slow),
                pytest.param('resnet34_mel', marks=pytest.mark.slow)]
MODULES = {}


def random_module(name):
    """A Module of `name` with random weights in eval mode; parameters initialised to zeros (CP-ResNet's
    Fixup-style conv2) get random values too, so no branch is silent."""
    if name not in MODULES:
        module = Module(name, task='sound-cls', label_map=['a', 'b', 'c'], multi_label=True, pretrained=False,
                        seed=0)
        rng = np.random.default_rng(3)
        for p in module.parameters():
            value = p.numpy()
            if not value.any():
                p.set_value((0.1 * rng.standard_normal(value.shape)).astype(value.dtype))
        module.eval()
        MODULES[name] = module
    return MODULES[name]


def per_window(scorer):
    """The same scorer, scoring every window on its own."""
    reference = copy.copy(scorer)
    reference.merge_windows = 1
    return reference


def merging(scorer):
    """The same scorer, merging all the windows it may."""
    merged = copy.copy(scorer)
    merged.merge_windows = merged.mergeable_windows
    return merged


def recordings(scorer, seed=0):
    """Waves at the model's rate: shorter than a window, a whole number of windows plus a fraction of
    a hop, and long enough for two merged segments and a partial one."""
    sr, window = scorer.frontend.sample_rate, scorer.window_frames * scorer.frame_seconds
    hop = scorer.hop_frames * scorer.frame_seconds
    lengths = [0.6 * window, window + 2.37 * hop, window + (2 * scorer.mergeable_windows + 1.4) * hop]
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(sr * seconds))).astype('float32') for seconds in lengths]


def counting(scorer):
    """A copy of `scorer` whose network calls record the length in samples of each input they are
    given (a scorer of features is given its front-end frames: one per frame_samples)."""
    scorer, lengths = copy.copy(scorer), []
    score = scorer.score_inputs
    per_item = 1 if scorer.score_features is None else scorer.frame_samples

    def score_inputs(batch):
        lengths.extend([batch.shape[1] * per_item] * len(batch))
        return score(batch)
    scorer.score_inputs = score_inputs
    return scorer, lengths


class LocalNetwork:
    """score_frames of a network whose frame j is a fixed function of the samples within `context`
    front-end frames (plus half an STFT window) of its centre, zeros beyond the input (a
    convolution's padding), computed the same way whatever the input's length: each frame's
    samples copied out and reduced on their own. Frames: one per `stride` front-end frames."""

    def __init__(self, cfg, geometry, classes=3):
        self.cfg, self.geometry = cfg, geometry
        self.reach = int(geometry.context * cfg.hop_length + cfg.n_fft // 2)
        self.kernel = np.random.default_rng(0).standard_normal((classes, 2 * self.reach)) / math.sqrt(self.reach)

    def __call__(self, waves):
        waves = np.asarray(waves, dtype=np.float64)
        count = max(1, (waves.shape[1] // self.cfg.hop_length + 1) // self.geometry.stride)
        padded = np.pad(waves, ((0, 0), (self.reach, self.reach)))
        out = np.empty((len(waves), count, len(self.kernel)), np.float32)
        for j, centre in enumerate(self.geometry.centres(count)):
            first = int(round(centre * self.cfg.hop_length))
            for b in range(len(waves)):
                seen = padded[b, first:first + 2 * self.reach].copy()
                for c, row in enumerate(self.kernel):
                    out[b, j, c] = 1 / (1 + math.exp(-float(np.sum(seen * row))))
        return out


def local_scorer(name, window, hop, merge=True):
    """A FrameScorer of LocalNetwork with `name`'s front end and frame geometry."""
    spec = registry.get_spec(name)
    return detection.FrameScorer(LocalNetwork(spec.frontend, spec.frame_geometry), spec.frontend, ['a', 'b', 'c'],
                                 spec.frame_geometry, window, hop, spec.min_seconds, merge=merge)


# (model, window, hop) where merging holds: hops on the network's frame grid (CNN6: 16 frames of
# 10 ms; CP-Mobile: 8 of 15.625 ms; CP-ResNet: 4 of 23.4375 ms), margins wider than the context.
LOCAL = [('cpmobile', 2.0, 0.5), ('cpmobile', 10.0, 5.0), ('panns_cnn6', 2.0, 0.32), ('panns_cnn6', 10.24, 5.12),
         ('cpresnet', 2.0, 0.375)]


@pytest.mark.parametrize('name, window, hop', LOCAL)
def test_merged_windows_give_bit_for_bit_the_frames_of_windows_one_by_one(name, window, hop):
    scorer = local_scorer(name, window, hop)
    assert scorer.merge_windows == scorer.mergeable_windows > 1
    waves = recordings(scorer)
    counted, lengths = counting(scorer)
    merged = detection.recording_frames(counted, waves)
    reference = detection.recording_frames(per_window(scorer), waves)
    assert max(lengths) > scorer.window_frames * scorer.frame_samples   # segments of several windows
    for got, want, wave in zip(merged, reference, waves):
        assert len(want) == len(wave) // scorer.frame_samples
        np.testing.assert_array_equal(got, want)
    for result, want in zip(detection.detect_inputs(scorer, waves, scorer.frontend.sample_rate), reference):
        np.testing.assert_array_equal(result['frame_scores'], want)
    # Batches of one segment, or of many, give the same frames.
    for got, want in zip(detection.recording_frames(scorer, waves, batch_size=1), reference):
        np.testing.assert_array_equal(got, want)


def test_merged_segments_score_each_second_once():
    """k windows of W frames every H: merged, W + (k - 1) H frames go through the network, not k W."""
    scorer = local_scorer('cpmobile', 2.0, 0.5)
    k, W, H = scorer.mergeable_windows, scorer.window_frames, scorer.hop_frames
    # 2k windows then the final one (whose end is the audio's last whole frame).
    wave = np.zeros(scorer.frame_samples * (W + (2 * k - 1) * H), np.float32)
    merged, merged_lengths = counting(scorer)
    plain, plain_lengths = counting(per_window(scorer))
    detection.recording_frames(merged, [wave])
    detection.recording_frames(plain, [wave])
    fs = scorer.frame_samples
    assert merged_lengths == [(W + (k - 1) * H) * fs] * 2 + [W * fs]
    assert plain_lengths == [W * fs] * (2 * k + 1)


@pytest.mark.parametrize('name, window, hop', [('cpmobile', 2.0, 0.5), ('panns_cnn6', 10.24, 5.12)])
def test_a_live_stream_gives_the_frames_of_merged_offline_detection(name, window, hop):
    scorer = local_scorer(name, window, hop)
    wave = recordings(scorer, seed=5)[2]
    [offline] = detection.recording_frames(scorer, [wave])
    stream = detection.FrameStream(scorer)      # live: one window at a time
    assert stream.merge_windows == 1
    rng = np.random.default_rng(1)
    parts, at = [], 0
    while at < len(wave):
        size = int(rng.integers(1, 3 * scorer.hop_frames * scorer.frame_samples))
        parts.append(stream.push(wave[at:at + size]))
        at += size
    parts.append(stream.close())
    np.testing.assert_array_equal(np.concatenate(parts), offline)


# (model, window, hop) of the registered networks, through Module (Paddle dygraph).
EXACT = [
    ('panns_cnn6', 2.0, 0.32), ('panns_cnn6', 10.24, 5.12),
    ('cpmobile', 2.0, 0.5), ('cpmobile', 10.0, 5.0), ('cpmobile_ssn', 2.0, 0.5),
    ('cpresnet', 2.0, 0.375), ('cpresnet', 10.0, 4.875),
    pytest.param('panns_cnn10', 2.0, 0.32, marks=pytest.mark.slow),
    pytest.param('resnet18_mel', 10.24, 5.12, marks=pytest.mark.slow),
]


@pytest.mark.parametrize('name, window, hop', EXACT)
def test_merging_the_registered_networks_changes_frames_by_rounding_only(name, window, hop):
    """Module.detect merges (merge_windows > 1); the frames are those of the windows one by one
    (frame_scorer(merge=False)) up to float32 rounding (their engines' arithmetic depends on the
    input's length)."""
    module = random_module(name)
    scorer, one_by_one = module.frame_scorer(window, hop), module.frame_scorer(window, hop, merge=False)
    assert scorer.merge_windows == scorer.mergeable_windows > 1 and one_by_one.merge_windows == 1
    waves = recordings(scorer)
    with paddle.no_grad():
        reference = detection.recording_frames(one_by_one, waves)
        merged = detection.recording_frames(scorer, waves)
        detected = module.detect(waves, sample_rate=scorer.frontend.sample_rate, window=window, hop=hop)
    for got, want, result in zip(merged, reference, detected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        # The same windows in other batches: oneDNN's kernels may round differently per batch
        # shape (seen: 1.6e-6 for CNN6 on a loaded machine, also before any change here).
        np.testing.assert_allclose(result['frame_scores'], got, rtol=0, atol=3e-6)


def spec_scorer(name, window, hop):
    """A FrameScorer with `name`'s frame geometry and front end (no network: mergeable_windows only)."""
    spec = registry.get_spec(name)
    return detection.FrameScorer(None, spec.frontend, ['a'], spec.frame_geometry, window, hop, spec.min_seconds,
                                 merge=True)


# (model, window, hop, why merging is refused)
REFUSED = [
    ('panns_cnn6', 10.0, 5.0, 'hop of 500 frames, not a multiple of the stride 16'),
    ('cpresnet', 2.0, 0.5, 'hop of 21 frames, not a multiple of the stride 4'),
    ('panns_cnn6', 2.0, 0.64, 'margin of 68 frames: the kept frames see beyond the window'),
    ('cpmobile', 1.0, 0.5, 'margin of 16 frames: the kept frames see beyond the window'),
    ('panns_cnn14', 2.0, 0.64, 'margin of 68 frames, context 174'),
    ('cpmobile_rfn', 2.0, 0.5, 'RelaxedFreqNorm: statistics of the whole input'),
    ('efficientat_mn04', 2.0, 0.64, 'squeeze-excitation: pooling over the whole input'),
    ('efficientat_dymn04', 2.0, 0.64, 'dynamic convolutions: pooling over the whole input'),
    ('passt_s_p16_128_ap472', 10.0, 5.0, 'attention over the whole input'),
]


@pytest.mark.parametrize('name, window, hop, why', REFUSED)
def test_merging_is_refused_where_it_would_change_frames(name, window, hop, why):
    scorer = spec_scorer(name, window, hop)
    assert scorer.merge_windows == 1, why
    with pytest.raises(ArgumentError, match='merge_windows=2: .*at most 1'):
        detection.FrameStream(scorer, merge_windows=2)


def forced(scorer, windows=4):
    """`scorer` merging `windows` windows whether or not they may be."""
    scorer = copy.copy(scorer)
    scorer.merge_windows = scorer.mergeable_windows = windows
    return scorer


@pytest.mark.parametrize('name, window, hop', [('cpmobile', 1.0, 0.5), ('cpresnet', 2.0, 0.5),
                                               ('panns_cnn6', 2.0, 0.64)])
def test_forced_merging_where_refused_changes_frames(name, window, hop):
    """The refusals are needed: merging anyway where the margin is too small or the hop is off the
    network's frame grid gives other frame scores, even with a network exact at any length."""
    scorer = local_scorer(name, window, hop)
    assert scorer.merge_windows == 1
    wave = recordings(scorer, seed=2)[2]
    [want] = detection.recording_frames(scorer, [wave])
    [got] = detection.recording_frames(forced(scorer), [wave])
    assert got.shape == want.shape and not np.array_equal(got, want)


def test_forced_merging_of_a_network_normalising_over_its_input_changes_frames():
    """cpmobile_rfn (RelaxedFreqNorm: the input's statistics): no context, and merging anyway changes
    its frames far beyond rounding."""
    module = random_module('cpmobile_rfn')
    scorer = module.frame_scorer(2.0, 0.5)
    assert module.frame_geometry.context is None and scorer.mergeable_windows == 1
    wave = recordings(scorer, seed=2)[2]
    wave[len(wave) // 2:] *= 30   # louder from the middle: windows and segments differ in their statistics
    with paddle.no_grad():
        [want] = detection.recording_frames(scorer, [wave])
        [got] = detection.recording_frames(forced(scorer), [wave])
    assert np.abs(got - want).max() > 1e-3


def test_ensembles_and_geometries_without_context_never_merge():
    from paddle_soundcls.deploy.ensemble import FRONTEND_RATE
    assert FRONTEND_RATE.context is None
    spec = registry.get_spec('cpmobile')
    for geometry in (FrameGeometry(8, 0), FRONTEND_RATE):
        assert detection.FrameScorer(None, spec.frontend, ['a'], geometry, 2.0, 0.5, 0.15).merge_windows == 1
    scorer = detection.FrameScorer(None, spec.frontend, ['a'], spec.frame_geometry, 2.0, 0.5, 0.15)
    assert scorer.mergeable_windows == scorer.merge_windows == detection.MAX_MERGED_WINDOWS   # on by default
    assert detection.FrameScorer(None, spec.frontend, ['a'], spec.frame_geometry, 2.0, 0.5, 0.15,
                                 merge=False).merge_windows == 1
    with pytest.raises(ArgumentError, match='merge must be True or False'):
        detection.FrameScorer(None, spec.frontend, ['a'], spec.frame_geometry, 2.0, 0.5, 0.15, merge=1)
    # A segment stays within MAX_MERGED_SECONDS: 10-s windows every 5 s, 5 of them (30 s).
    assert spec_scorer('cpmobile', 10.0, 5.0).merge_windows == 5
    assert spec_scorer('cpmobile', 30.0, 5.0).merge_windows == 1


def features_with(base, positions, noise_rng):
    x = base.copy()
    x[0, positions] += 5 * noise_rng.standard_normal((len(positions), x.shape[2])).astype('float32')
    return x


@pytest.mark.parametrize('name', WITH_CONTEXT)
def test_the_declared_context_is_what_a_frame_sees(name):
    """Changing every input frame farther than `context` from a network frame's centre leaves it
    bit for bit unchanged; changing those farther than context - 1 (the frame at the edge of its
    receptive field included) changes it, on either side."""
    module = random_module(name)
    geometry = module.spec.frame_geometry
    assert geometry.context is not None
    frames = max(512, 4 * geometry.context + 8 * geometry.stride)
    rng = np.random.default_rng(4)
    base = rng.standard_normal((1, frames, module.frontend_cfg.n_mels)).astype('float32')
    with paddle.no_grad():
        run = lambda x: module.backbone.forward_frames(paddle.to_tensor(x)).numpy()[0]
        reference = run(base)
        j = len(reference) // 2
        centre = geometry.centres(len(reference))[j]
        k = np.arange(frames)
        for side in (k > centre, k < centre):
            beyond = k[side & (np.abs(k - centre) > geometry.context)]
            within = k[side & (np.abs(k - centre) > geometry.context - 1)]
            np.testing.assert_array_equal(run(features_with(base, beyond, rng))[j], reference[j])
            assert not np.array_equal(run(features_with(base, within, rng))[j], reference[j])


@pytest.mark.parametrize('name', ['panns_cnn6', 'cpmobile', 'cpresnet'])
def test_samples_beyond_the_context_and_the_stft_window_leave_a_frame_unchanged(name):
    """With the front end: a network frame sees the samples of its context's front-end frames, each
    an STFT window of n_fft samples centred on it (one sample more with pre-emphasis); changing the
    samples beyond leaves its embedding bit for bit as it was, changing those from one front-end
    frame inside the context on changes it."""
    module = random_module(name)
    cfg, geometry = module.frontend_cfg, module.frame_geometry
    rng = np.random.default_rng(6)
    wave = (0.1 * rng.standard_normal(cfg.hop_length * (6 * geometry.context + 8 * geometry.stride))).astype('float32')
    with paddle.no_grad():
        run = lambda x: module.backbone.forward_frames(module.frontend(paddle.to_tensor(x[None]))).numpy()[0]
        reference = run(wave)
        j = len(reference) // 2
        centre = geometry.centres(len(reference))[j] * cfg.hop_length
        reach = geometry.context * cfg.hop_length + cfg.n_fft / 2 + (cfg.preemphasis is not None)
        samples = np.arange(len(wave))
        for side in (samples > centre, samples < centre):
            for changed_from, changes in ((reach, False), ((geometry.context - 1) * cfg.hop_length, True)):
                changed = wave.copy()
                picked = side & (np.abs(samples - centre) > changed_from)
                changed[picked] += rng.standard_normal(picked.sum()).astype('float32')
                assert (not np.array_equal(run(changed)[j], reference[j])) == changes


def test_frame_geometry_context_round_trips_and_is_checked():
    old = {'stride': 16, 'offset': 7.5}
    assert FrameGeometry.from_dict(old) == FrameGeometry(16, 7.5) and FrameGeometry.from_dict(old).context is None
    assert FrameGeometry(16, 7.5).to_dict() == old   # exports without a context read and write as before
    with_context = FrameGeometry(16, 7.5, 54)
    assert with_context.to_dict() == dict(old, context=54)
    assert check_geometry(with_context.to_dict()) == with_context
    assert FrameGeometry.from_dict(dict(old, context=None)).context is None
    assert len({with_context, FrameGeometry(16, 7.5, 54), FrameGeometry(16, 7.5)}) == 2   # hashable
    for bad in (-1, 2.5, True, '54'):
        with pytest.raises(ArgumentError, match='frame geometry: context must be an int >= 0 or None'):
            FrameGeometry(16, 7.5, bad)
    with pytest.raises(ArgumentError, match='optional "context"'):
        FrameGeometry.from_dict(dict(old, contxt=54))
    with pytest.raises(Exception):
        with_context.context = 3   # frozen


@pytest.fixture(scope='module')
def cpmobile_export(tmp_path_factory):
    module = random_module('cpmobile')
    out = tmp_path_factory.mktemp('overlap') / 'export'
    export_static(module, out, opset=13)
    return module, Predictor(out)


def test_exports_record_the_context_and_predictors_merge_as_modules_do(cpmobile_export):
    module, predictor = cpmobile_export
    assert predictor.meta['frame_geometry'] == module.frame_geometry.to_dict() == {'stride': 8, 'offset': 0.0,
                                                                                 'context': 39}
    for window, hop in ((2.0, 0.5), (10.0, 5.0), (1.0, 0.5)):
        mergeable = module.frame_scorer(window, hop).mergeable_windows
        assert predictor.frame_scorer(window, hop).mergeable_windows == mergeable


def test_predictor_merged_detection_is_within_rounding_of_windows_one_by_one(cpmobile_export):
    """Through the export (numpy front end, onnxruntime) Predictor.detect merges, and merging changes
    frame scores by rounding at most (an engine may round a frame differently with the length of its
    input; the numpy front end computes each frame on its own)."""
    _, predictor = cpmobile_export
    scorer, one_by_one = predictor.frame_scorer(2.0, 0.5), predictor.frame_scorer(2.0, 0.5, merge=False)
    assert scorer.merge_windows > 1 == one_by_one.merge_windows
    waves = recordings(scorer)
    counted, lengths = counting(scorer)
    detected = predictor.detect(waves, sample_rate=scorer.frontend.sample_rate, window=2.0, hop=0.5)
    reference = detection.recording_frames(one_by_one, waves)
    for got, want, result in zip(detection.recording_frames(counted, waves), reference, detected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(result['frame_scores'], got)   # Predictor.detect merges
    assert max(lengths) > scorer.window_frames * scorer.frame_samples   # segments longer than a window
