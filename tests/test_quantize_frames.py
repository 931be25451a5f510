"""int8 event detection: quantize_export also quantizes the frame-scores graph (model.frames.int8.onnx),
checks its frame scores and events against the float graph, and Predictor detects with it."""
import json
import logging
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf

from test_quantize import SR, make_clip, train_small_model, write_set
from paddle_soundcls import cli
from paddle_soundcls.deploy import ExportError, Predictor, exportdir
from paddle_soundcls.deploy.event_metrics import event_based_metrics
from paddle_soundcls.export import export_static, parity, quantize
from paddle_soundcls.features.mel import logmel


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A trained CNN6 float export (with its frames graph), calibration clips and other check clips."""
    root = tmp_path_factory.mktemp('int8_frames')
    export_static(train_small_model(), root / 'export', opset=13)
    write_set(root / 'calib', 4, seed=1)
    write_set(root / 'check', 4, seed=2)
    return root


@pytest.fixture(scope='module')
def quantized(work, tmp_path_factory):
    out = tmp_path_factory.mktemp('quantized_frames') / 'export'
    shutil.copytree(work / 'export', out)
    info = quantize.quantize_export(out, work / 'calib', check=work / 'check', progress=False)
    return out, info


def copy_export(work, tmp_path):
    out = tmp_path / 'export'
    shutil.copytree(work / 'export', out)
    return out


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def check_paths(work):
    return sorted(str(p) for p in (work / 'check').rglob('*.wav'))


def test_frames_int8_file_is_made_and_recorded(work, quantized):
    out, info = quantized
    meta = exportdir.read_export(out)
    frames = info['frames']
    assert meta['int8'] == info and frames['file'] == exportdir.FRAMES_INT8_FILE == 'model.frames.int8.onnx'
    assert meta['files'][exportdir.FRAMES_INT8_FILE] == exportdir.file_record(out / exportdir.FRAMES_INT8_FILE)
    assert frames['source_sha256'] == exportdir.sha256_file(out / 'model.frames.onnx')
    assert (out / 'model.frames.onnx').read_bytes() == (work / 'export' / 'model.frames.onnx').read_bytes()
    assert frames['checked'] is True and frames['check']['passed'] is True and 'forced' not in frames
    check = frames['check']
    assert check['model_dir'] == str(out) and check['clips'] == 16 and check['events_source'] == 'default'
    assert 0 < check['mean_abs_diff'] <= check['max_abs_diff'] and check['event_f1'] >= parity.INT8_FRAMES_MIN_EVENT_F1
    assert check['mean_abs_diff'] <= parity.INT8_FRAMES_MAX_MEAN_ABS_DIFF
    import onnx
    graph = onnx.load(str(out / exportdir.FRAMES_INT8_FILE)).graph
    ops = [node.op_type for node in graph.node]
    assert 'QuantizeLinear' in ops
    # The node writing the frame scores stays float, as in the clip model.
    [last] = [node for node in graph.node if graph.output[0].name in node.output]
    assert last.op_type not in ('DequantizeLinear', 'QuantizeLinear') and last.name in frames['nodes_excluded']


def test_int8_predictor_detects_with_the_int8_frames_graph(work, quantized):
    out, info = quantized
    fp32, int8 = Predictor(out), Predictor(out, engine='onnxruntime_int8')
    assert (fp32.frames_precision, int8.frames_precision) == ('fp32', 'int8')
    waves = np.stack([make_clip('chirp', np.random.default_rng(5), seconds=5.0) for _ in range(2)])
    features = logmel(waves, int8.frontend_cfg)
    session = ort.InferenceSession(str(out / exportdir.FRAMES_INT8_FILE), providers=['CPUExecutionProvider'])
    [reference] = session.run(None, {exportdir.INPUT_NAME: features})
    got = int8.score_frames(waves)
    np.testing.assert_allclose(got, reference, atol=1e-6)
    float_scores = fp32.score_frames(waves)
    assert not np.array_equal(got, float_scores) and np.abs(got - float_scores).max() < 0.1
    # Detection on the check clips gives the events and F1 the check recorded.
    paths = check_paths(work)
    a, b = fp32.detect(paths), int8.detect(paths)
    micro = event_based_metrics({str(i): r['events'] for i, r in enumerate(a)},
                                {str(i): r['events'] for i, r in enumerate(b)}, fp32.labels)['micro']
    check = info['frames']['check']
    assert (micro['n_ref'], micro['n_est'], micro['tp']) == (check['events_fp32'], check['events_int8'],
                                                             check['events_matched'])
    diff = np.abs(np.concatenate([r['frame_scores'] for r in a]) - np.concatenate([r['frame_scores'] for r in b]))
    assert diff.max() == pytest.approx(check['max_abs_diff'], abs=1e-6)


def test_detect_batch_size_one_equals_default(quantized):
    out, _ = quantized
    rng = np.random.default_rng(3)
    # Of several lengths, longer than a window, so windows of different lengths share the inputs.
    waves = [make_clip(label, rng, seconds=s) for label, s in (('tone', 7.0), ('clicks', 3.2), ('noise', 12.5))]
    for engine in ('onnxruntime', 'onnxruntime_int8'):
        predictor = Predictor(out, engine=engine)
        default, single = predictor.detect(waves, SR), predictor.detect(waves, SR, batch_size=1)
        for d, s in zip(default, single):
            np.testing.assert_allclose(d['frame_scores'], s['frame_scores'], atol=1e-5)
            assert [e['label'] for e in d['events']] == [e['label'] for e in s['events']]
            np.testing.assert_allclose([e['onset'] for e in d['events']], [e['onset'] for e in s['events']])
    with pytest.raises(ValueError, match='batch_size'):
        Predictor(out).detect(waves, SR, batch_size=0)


def test_failing_frames_check_drops_the_frames_graph_only(work, tmp_path, monkeypatch, caplog):
    out = copy_export(work, tmp_path)
    real = quantize.check_int8_frames

    def strict(*args, **kwargs):   # no int8 frame score is ever exactly the float one
        return real(*args, **kwargs, max_mean_abs_diff=0.0)

    monkeypatch.setattr(quantize, 'check_int8_frames', strict)
    with caplog.at_level(logging.WARNING):
        info = quantize.quantize_export(out, work / 'calib', check=work / 'check', limit=8, check_limit=6,
                                        progress=False)
    assert 'model.frames.int8.onnx was not kept' in caplog.text and str(out) in caplog.text
    meta = exportdir.read_export(out)
    assert info['check']['passed'] and (out / 'model.int8.onnx').exists()
    assert not (out / exportdir.FRAMES_INT8_FILE).exists() and exportdir.FRAMES_INT8_FILE not in meta['files']
    frames = meta['int8']['frames']
    assert frames['file'] is None and frames['checked'] and not frames['check']['passed']
    assert '--calibration' in frames['dropped'] and 'float model.frames.onnx' in frames['dropped']
    int8 = Predictor(out, engine='onnxruntime_int8')
    assert (int8.precision, int8.frames_precision) == ('int8', 'fp32')
    waves = np.stack([make_clip('tone', np.random.default_rng(1), seconds=3.0)])
    np.testing.assert_array_equal(int8.score_frames(waves), Predictor(out).score_frames(waves))


def test_forced_frames_graph_is_kept_and_marked(work, tmp_path, monkeypatch):
    out = copy_export(work, tmp_path)
    real = quantize.check_int8_frames
    monkeypatch.setattr(quantize, 'check_int8_frames', lambda *a, **k: real(*a, **k, max_mean_abs_diff=0.0))
    info = quantize.quantize_export(out, work / 'calib', check=work / 'check', limit=8, check_limit=6, force=True,
                                    progress=False)
    assert info['frames']['forced'] is True and (out / exportdir.FRAMES_INT8_FILE).exists()
    assert Predictor(out, engine='onnxruntime_int8').frames_precision == 'int8'


def test_frames_graph_of_another_model_is_refused(quantized, tmp_path):
    out = tmp_path / 'export'
    shutil.copytree(quantized[0], out)
    meta = json.loads((out / 'export.json').read_text())
    meta['int8']['frames']['source_sha256'] = '0' * 64
    (out / 'export.json').write_text(json.dumps(meta))
    with pytest.raises(ExportError, match='made from another model.frames.onnx.*--quantize int8'):
        Predictor(out, engine='onnxruntime_int8')
    assert Predictor(out).frames_precision == 'fp32'   # float detection does not need it
    # A replaced file (its sha256 no longer the recorded one) is refused when detection loads it.
    shutil.copytree(quantized[0], out, dirs_exist_ok=True)
    shutil.copy(out / 'model.frames.onnx', out / exportdir.FRAMES_INT8_FILE)
    predictor = Predictor(out, engine='onnxruntime_int8')
    with pytest.raises(ExportError, match='model.frames.int8.onnx is not the file this export wrote'):
        predictor.score_frames(np.zeros((1, SR * 2), dtype='float32'))


@pytest.mark.parametrize('fail_in', ['quantize', 'check'])
def test_a_failure_midway_leaves_the_export_as_it_was(work, quantized, tmp_path, monkeypatch, fail_in):
    out = tmp_path / 'export'
    shutil.copytree(quantized[0], out)   # already quantized: the old int8 files must survive too
    before = snapshot(out)
    if fail_in == 'quantize':
        real, calls = quantize.quantize_onnx, []

        def fails_on_the_frames_graph(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == 2:
                raise RuntimeError('quantization failed')
            return real(*args, **kwargs)
        monkeypatch.setattr(quantize, 'quantize_onnx', fails_on_the_frames_graph)
    else:
        def fails(*args, **kwargs):
            raise RuntimeError('quantization failed')
        monkeypatch.setattr(quantize, 'check_int8_frames', fails)
    with pytest.raises(RuntimeError, match='quantization failed'):
        quantize.quantize_export(out, work / 'calib', check=work / 'check', limit=8, check_limit=6, progress=False)
    if fail_in == 'quantize':
        assert calls[1].endswith('model.frames.onnx')
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['export']   # no staging folder left


def test_refused_clip_model_leaves_no_frames_graph(work, tmp_path, monkeypatch):
    out = copy_export(work, tmp_path)
    before = snapshot(out)
    monkeypatch.setattr(quantize, 'check_int8', lambda *a, **k: {
        'clips': 6, 'top1_agreement': 0.5, 'accuracy_drop': None, 'passed': False,
        'rule': {'min_top1_agreement': 0.99, 'max_accuracy_drop_points': 0.5}})
    from paddle_soundcls.errors import QuantizationRefused
    with pytest.raises(QuantizationRefused):
        quantize.quantize_export(out, work / 'calib', check=work / 'check', limit=8, check_limit=6, progress=False)
    assert snapshot(out) == before


def test_unchecked_frames_graph_is_recorded_unchecked(work, tmp_path, caplog):
    out = copy_export(work, tmp_path)
    with caplog.at_level(logging.WARNING):
        info = quantize.quantize_export(out, work / 'calib', limit=4, progress=False)
    assert 'UNCHECKED' in caplog.text and 'model.frames.int8.onnx' in caplog.text
    assert info['frames']['checked'] is False and info['frames']['check'] is None
    assert Predictor(out, engine='onnxruntime_int8').frames_precision == 'int8'


def test_cli_prints_the_frames_figures(work, tmp_path, capsys):
    out = copy_export(work, tmp_path)
    status = cli.main(['export', '--model-dir', str(out), '--quantize', 'int8', '--calibration', str(work / 'calib'),
                       '--calibration-limit', '8', '--check', str(work / 'check'), '--check-limit', '6'])
    printed = json.loads(capsys.readouterr().out)
    assert status == 0
    frames = printed['int8']['frames']
    assert frames == exportdir.read_export(out)['int8']['frames'] and frames['check']['clips'] == 6
    assert {'event_f1', 'mean_abs_diff', 'max_abs_diff'} <= set(frames['check'])


def test_check_int8_frames_needs_the_int8_frames_graph(work, quantized, tmp_path):
    out = tmp_path / 'export'
    shutil.copytree(quantized[0], out)
    meta = json.loads((out / 'export.json').read_text())
    meta['int8']['frames']['file'] = None   # as after a failed frames check
    (out / 'export.json').write_text(json.dumps(meta))
    with pytest.raises(ExportError, match='records no model.frames.int8.onnx.*--quantize int8'):
        parity.check_int8_frames(out, work / 'check', limit=1)


def test_compare_int8_frames_on_known_events():
    labels = ['a', 'b']
    hop = 0.01
    scores = np.zeros((300, 2), dtype='float32')
    scores[50:150, 0] = 0.9
    events = [{'label': 'a', 'onset': 0.5, 'offset': 1.5, 'confidence': 0.9}]
    same = {'frame_scores': scores, 'frame_hop': hop, 'events': events}
    moved = {'frame_scores': scores + 0.01, 'frame_hop': hop,
             'events': [{'label': 'a', 'onset': 1.0, 'offset': 1.5, 'confidence': 0.9}]}   # onset past the collar
    summary = parity.compare_int8_frames([same], [moved], labels)
    assert summary['mean_abs_diff'] == pytest.approx(0.01, abs=1e-6)
    assert (summary['events_fp32'], summary['events_int8'], summary['events_matched']) == (1, 1, 0)
    assert summary['event_f1'] == 0.0 and summary['passed'] is False
    quiet = {'frame_scores': np.zeros((300, 2), dtype='float32'), 'frame_hop': hop, 'events': []}
    agree = parity.compare_int8_frames([quiet], [quiet], labels)
    assert agree['event_f1'] == 1.0 and agree['passed'] is True and agree['min_class_correlation'] is None


def test_converting_again_drops_both_int8_graphs(quantized, tmp_path):
    from paddle_soundcls.export.onnx import export_onnx
    out = tmp_path / 'again'
    shutil.copytree(quantized[0], out)
    assert (out / exportdir.FRAMES_INT8_FILE).exists()
    export_onnx(out)
    meta = json.loads((out / exportdir.EXPORT_FILE).read_text())
    for name in (exportdir.INT8_FILE, exportdir.FRAMES_INT8_FILE):
        assert not (out / name).exists() and name not in meta['files']
    assert 'int8' not in meta


@pytest.mark.parametrize('verify', [True, False])
def test_a_damaged_frames_graph_is_refused_when_the_scorer_is_made(quantized, tmp_path, verify):
    """A truncated model.frames.int8.onnx is an ExportError naming the file as soon as a frame
    scorer (detect, stream, a server's first events request) is made, not a runtime's own error
    at the first window: with verify=True from its recorded size, without from the file itself."""
    out = tmp_path / 'export'
    shutil.copytree(quantized[0], out)
    frames = out / exportdir.FRAMES_INT8_FILE
    frames.write_bytes(frames.read_bytes()[:1000])
    predictor = Predictor(out, engine='onnxruntime_int8', verify=verify)   # the clip model is intact
    with pytest.raises(ExportError, match=exportdir.FRAMES_INT8_FILE):
        predictor.frame_scorer(1.0, 0.5)
    Predictor(out).frame_scorer(1.0, 0.5)   # the float graph is untouched


@pytest.mark.parametrize('entry', ['int8', ['frames'], {'frames': ['model.frames.int8.onnx']}, {'frames': 'x'}])
def test_a_hand_edited_int8_entry_of_the_wrong_type_is_refused_by_name(quantized, tmp_path, entry):
    out = tmp_path / 'export'
    shutil.copytree(quantized[0], out)
    meta = json.loads((out / 'export.json').read_text())
    meta['int8'] = entry
    (out / 'export.json').write_text(json.dumps(meta))
    with pytest.raises(ExportError, match='"int8" must be an object'):
        Predictor(out, engine='onnxruntime_int8')
