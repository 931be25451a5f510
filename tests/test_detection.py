"""When sounds happen: Module.detect, Predictor.detect and Predictor.stream on recordings with
known events, streaming equal to offline detection, silence, saved thresholds, bad chunks."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import BLOCK_PADDLE, loudness_weights
from paddle_soundcls import Module
from paddle_soundcls.deploy import Predictor
from paddle_soundcls.deploy.event_metrics import event_based_metrics
from paddle_soundcls.deploy.events import EventConfig
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.export import export_static
from signals import chirp, noise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000
EVENTS = [(2.0, 3.5), (6.3, 6.9), (9.0, 12.0), (15.2, 16.0)]   # seconds, clearly audible chirps


def loudness_detector():
    """CNN6 with weights set so that 'event' scores loud sound, frame by frame: every
    convolution averages, bn0 subtracts a -30 dB floor (quiet noise -> zero), fc1 averages the
    channels, and the head maps the frame embedding to P(event) = sigmoid(8 e / e_loud - 4)."""
    m = loudness_weights(Module('panns_cnn6', task='sound-cls', label_map=['background', 'event'], multi_label=True,
                                pretrained=False, seed=0))
    loud = chirp(500, 3000, 3.0, amp=0.5) + noise(3.0, amp=0.003, seed=9)
    with paddle.no_grad():
        frames = m.backbone.forward_frames(m.frontend(paddle.to_tensor(loud[None])))
    e_loud = float(frames.numpy()[0, 2:-2].mean())
    assert e_loud > 0
    fc_w = np.zeros([512, 2], 'float32')
    fc_w[:, 1] = 8.0 / (512 * e_loud)
    m.set_state_dict({'fc.weight': fc_w, 'fc.bias': np.array([-4.0, -4.0], 'float32')})
    return m


def recording(seconds=18.0):
    wave = noise(seconds, amp=0.003, seed=3)
    for onset, offset in EVENTS:
        if offset <= seconds:
            wave[int(onset * SR):int(offset * SR)] += chirp(400, 4000, offset - onset, amp=0.5)
    return wave


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('detection')
    model = loudness_detector()
    export_static(model, root / 'export', opset=13)
    sf.write(root / 'scene.wav', recording(), SR)
    return root, model


def found(result, label='event'):
    return [(e['onset'], e['offset']) for e in result['events'] if e['label'] == label]


def test_detected_events_match_the_known_times(setup):
    root, model = setup
    # The averaging network smears loudness over its receptive field (~0.2 s either side):
    # a high onset threshold puts onsets where the sound is, the offset threshold its end.
    config = EventConfig(onset_threshold=0.9, offset_threshold=0.5, median_filter_seconds=0.05)
    [offline] = model.detect([str(root / 'scene.wav')], window=4.0, hop=2.0, config=config)
    assert offline['frame_hop'] == 0.01 and offline['frame_scores'].shape[1] == 2
    events = found(offline)
    assert len(events) == len(EVENTS), events
    for (onset, offset), (ref_on, ref_off) in zip(events, EVENTS):
        assert abs(onset - ref_on) <= 0.2 and abs(offset - ref_off) <= max(0.2, 0.2 * (ref_off - ref_on))
    metrics = event_based_metrics({'scene': [(a, b, 'event') for a, b in EVENTS]},
                                  {'scene': [(a, b, 'event') for a, b in events]}, labels=['background', 'event'])
    assert metrics['micro']['f1'] == 1.0
    # The runtime gives the same frame scores and events from model.frames.onnx.
    [runtime] = Predictor(root / 'export').detect([str(root / 'scene.wav')], window=4.0, hop=2.0, config=config)
    np.testing.assert_allclose(runtime['frame_scores'], offline['frame_scores'], atol=1e-4)
    assert found(runtime) == events


def test_silence_gives_no_event(setup):
    root, model = setup
    [result] = Predictor(root / 'export').detect([noise(6.0, amp=0.003, seed=4)], SR, window=4.0)
    assert result['events'] == []
    [result] = model.detect([np.zeros(3 * SR, 'float32')], SR, window=4.0)
    assert result['events'] == []


def test_stream_reports_the_events_of_offline_detection_once(setup):
    root, _ = setup
    predictor = Predictor(root / 'export')
    wave = recording()
    [offline] = predictor.detect([wave], SR, window=4.0, hop=2.0)
    rng = np.random.default_rng(0)
    for trial in range(3):
        stream = predictor.stream(SR, window=4.0, hop=2.0)
        reports, start = [], 0
        while start < len(wave):
            size = int(rng.integers(100, 3 * SR)) if trial else SR // 10
            reports += stream.push(wave[start:start + size])
            start += size
        reports += stream.close()
        starts = [r for r in reports if r['type'] == 'start']
        ends = [r for r in reports if r['type'] == 'end']
        assert [(r['label'], r['onset']) for r in starts] == [(e['label'], e['onset']) for e in offline['events']]
        assert [(r['label'], r['onset'], r['offset']) for r in ends] == [
            (e['label'], e['onset'], e['offset']) for e in offline['events']]
    # Latency: one hop plus half the overlap of windows, plus half the median filter.
    assert stream.latency_seconds == pytest.approx(2.0 + 1.0 + 0.05, abs=0.011)
    assert stream.close() == []
    with pytest.raises(ValueError, match='closed'):
        stream.push(wave[:100])


def test_bad_chunks_are_refused_and_leave_the_stream_intact(setup):
    root, _ = setup
    predictor = Predictor(root / 'export')
    wave = recording(8.0)
    clean = predictor.stream(SR, window=4.0)
    good = clean.push(wave) + clean.close()
    stream = predictor.stream(SR, window=4.0)
    reports = stream.push(wave[:SR])
    bad = wave[:100].copy()
    bad[5] = np.nan
    for chunk, match in ((bad, 'NaN'), (np.array(['a', 'b']), 'numeric'), (np.zeros((2, 2, 2), 'float32'), 'shape')):
        with pytest.raises(ValueError, match=match):
            stream.push(chunk)
    reports += stream.push(wave[SR:]) + stream.close()
    assert reports == good
    with pytest.raises(ValueError, match='sample_rate'):
        predictor.stream(1)


def test_multichannel_streams_read_chunks_of_any_length_the_same_way(setup):
    """Stereo [frames, 2] chunks, pushed whole, in 4,800-frame pieces or one frame at a time, give
    the events of offline detection of the same audio: the channel count is the stream's, never
    guessed from a chunk's shape (a [1, 2] chunk is one frame of two channels)."""
    root, model = setup
    predictor = Predictor(root / 'export')
    wave = recording(6.0)
    stereo = np.stack([wave, 0.5 * wave], axis=1)
    [offline] = predictor.detect([0.75 * wave], SR, window=4.0)
    expected = [(e['label'], e['onset'], e['offset']) for e in offline['events']]
    assert expected
    for size in (len(stereo), 4800, 1):
        for engine in (predictor, model) if size != 1 else (predictor,):
            stream = engine.stream(SR, window=4.0, channels=2)
            reports = []
            for start in range(0, len(stereo), size):
                reports += stream.push(stereo[start:start + size])
            reports += stream.close()
            assert [(r['label'], r['onset'], r['offset']) for r in reports if r['type'] == 'end'] == expected, size
    stream = predictor.stream(SR, window=4.0, channels=2)
    for chunk in (wave[:100], stereo[:100].T.copy(), np.zeros((10, 3), 'float32')):   # mono, [2, frames], 3 channels
        with pytest.raises(ValueError, match=r'2 channel\(s\).*\[frames, 2\]'):
            stream.push(chunk)
    with pytest.raises(ValueError, match='channels'):
        predictor.stream(SR, channels=0)


def test_other_rates_and_int16_chunks(setup):
    root, _ = setup
    predictor = Predictor(root / 'export')
    wave = recording(12.0)
    [reference] = predictor.detect([wave], SR, window=4.0)
    import math
    from paddle_soundcls import audio
    at16k = audio.resample(wave, SR, 16000)
    pcm = np.round(np.clip(at16k, -1, 1) * 32767).astype(np.int16)
    stream = predictor.stream(16000, window=4.0)
    reports = []
    for start in range(0, len(pcm), 5000):
        reports += stream.push(pcm[start:start + 5000])
    reports += stream.close()
    ends = [(r['onset'], r['offset']) for r in reports if r['type'] == 'end']
    assert len(ends) == len(found(reference))
    for (a, b), (c, d) in zip(ends, found(reference)):
        assert math.isclose(a, c, abs_tol=0.05) and math.isclose(b, d, abs_tol=0.05)


def test_a_stream_at_another_rate_gives_the_events_of_offline_detection(setup):
    """One resampler for the whole stream: chunks of any size at 16 kHz give exactly the events
    of detect() of the same 16-kHz audio (resampled whole)."""
    root, _ = setup
    predictor = Predictor(root / 'export')
    from paddle_soundcls import audio
    at16k = audio.resample(recording(12.0), SR, 16000)
    [offline] = predictor.detect([at16k], 16000, window=4.0)
    expected = [(e['label'], e['onset'], e['offset'], round(e['confidence'], 5)) for e in offline['events']]
    assert expected
    rng = np.random.default_rng(3)
    for trial in range(2):
        stream = predictor.stream(16000, window=4.0)
        reports, start = [], 0
        while start < len(at16k):
            size = int(rng.integers(1, 20000))
            reports += stream.push(at16k[start:start + size])
            start += size
        reports += stream.close()
        got = [(r['label'], r['onset'], r['offset'], round(r['confidence'], 5)) for r in reports if r['type'] == 'end']
        assert got == expected


def test_tuned_thresholds_travel_with_the_checkpoint_and_export(setup, tmp_path):
    root, model = setup
    model.event_config = EventConfig(onset_threshold=[0.9, 0.6], offset_threshold=[0.5, 0.4])
    try:
        model.save(str(tmp_path / 'ckpt'))
        export_static(model, tmp_path / 'export', opset=13)
    finally:
        model.event_config = None
    restored = Module('panns_cnn6', load_checkpoint=str(tmp_path / 'ckpt'))
    assert restored.event_config == EventConfig(onset_threshold=[0.9, 0.6], offset_threshold=[0.5, 0.4])
    meta = json.loads((tmp_path / 'export' / 'export.json').read_text())
    assert meta['events']['onset_threshold'] == [0.9, 0.6]
    assert Predictor(tmp_path / 'export').event_config == restored.event_config
    # Overriding one saved threshold below the saved other one: the error says where the other came from.
    proc = cli('events', tmp_path / 'export', root / 'scene.wav', '--onset-threshold', '0.45')
    assert proc.returncode == 2 and b'Traceback' not in proc.stderr
    assert b"saved settings" in proc.stderr and b'--offset-threshold' in proc.stderr, proc.stderr
    # The same in Python: a dict of fields changes the saved settings; a clash names where the other came from.
    predictor = Predictor(tmp_path / 'export')
    with pytest.raises(ArgumentError, match=r'offset_threshold \(0.5\) must be <= onset_threshold \(0.45\)') as info:
        predictor.detect([str(root / 'scene.wav')], config={'onset_threshold': 0.45})
    message = str(info.value)
    assert 'settings saved with the model' in message and 'export.json' in message
    assert "'offset_threshold': [0.5, 0.4]" in message and 'offset_threshold together' in message
    with pytest.raises(ArgumentError, match='settings saved with the model'):
        predictor.stream(config={'onset_threshold': 0.45})
    with pytest.raises(ArgumentError, match="this Module's event_config"):
        restored.detect([str(root / 'scene.wav')], config={'onset_threshold': 0.45})
    # Both thresholds given: the saved median filter and durations are kept, the thresholds replaced.
    [merged] = predictor.detect([str(root / 'scene.wav')], config={'onset_threshold': 0.5, 'offset_threshold': 0.3})
    [plain] = predictor.detect([str(root / 'scene.wav')], config=EventConfig(onset_threshold=0.5, offset_threshold=0.3))
    assert merged['events'] == plain['events'] and merged['events']


def test_detection_runs_without_paddle(setup):
    root, _ = setup
    code = BLOCK_PADDLE + textwrap.dedent(f'''
        from paddle_soundcls.deploy import Predictor
        p = Predictor({str(root / 'export')!r})
        [r] = p.detect([{str(root / 'scene.wav')!r}], window=4.0)
        s = p.stream(window=4.0)
        import soundfile as sf
        wave, _ = sf.read({str(root / 'scene.wav')!r}, dtype='float32')
        reports = s.push(wave) + s.close()
        assert not any(m == 'paddle' or m.startswith('paddle.') for m in sys.modules)
        print(json.dumps({{'events': len(r['events']), 'reports': len(reports)}}))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['events'] == len(EVENTS) and out['reports'] == 2 * len(EVENTS)


def cli(*args, stdin=None, block_paddle=True):
    """paddle-soundcls ARGS in a subprocess (Paddle unimportable unless block_paddle=False)."""
    code = ((BLOCK_PADDLE if block_paddle else 'import sys\n')
            + 'from paddle_soundcls.cli import main\nsys.exit(main(sys.argv[1:]))\n')
    return subprocess.run([sys.executable, '-c', code] + [str(a) for a in args], input=stdin, capture_output=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=REPO))


def test_events_command_writes_csv_json_and_a_picture(setup, tmp_path):
    root, _ = setup
    export, scene = root / 'export', root / 'scene.wav'
    thresholds = ['--onset-threshold', '0.9', '--offset-threshold', '0.5', '--median-filter', '0.05']
    proc = cli('events', export, scene, '--window', '4', '--csv', tmp_path / 'e.csv', '--json', tmp_path / 'e.json',
               '--plot', tmp_path / 'timeline.png', *thresholds)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    import csv
    rows = list(csv.DictReader(open(tmp_path / 'e.csv')))
    assert [(float(r['onset']), float(r['offset'])) for r in rows if r['label'] == 'event'] == found(
        Predictor(export).detect([str(scene)], window=4.0, config=EventConfig(
            onset_threshold=0.9, offset_threshold=0.5, median_filter_seconds=0.05))[0])
    assert len(rows) >= len(EVENTS) and rows[0]['filename'] == str(scene)
    assert json.loads((tmp_path / 'e.json').read_text())[0]['input'] == str(scene)
    assert (tmp_path / 'timeline.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    proc = cli('events', export, scene, scene, '--plot', tmp_path / 'x.png')
    assert proc.returncode == 2 and b'one input' in proc.stderr


def test_events_from_standard_input_as_they_happen(setup):
    root, _ = setup
    wave = recording(12.0)
    pcm = np.round(np.clip(wave, -1, 1) * 32767).astype('<i2')
    proc = cli('events', root / 'export', '-', '--sample-rate', SR, '--window', '4', stdin=pcm.tobytes())
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    reports = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    stream = Predictor(root / 'export').stream(SR, window=4.0)
    expected = stream.push(pcm.astype(np.float32) / 32768) + stream.close()
    assert [(r['type'], r['label'], r['onset']) for r in reports] == [
        (r['type'], r['label'], r['onset']) for r in expected]
    assert sum(r['type'] == 'end' for r in reports) == 3
    assert b'listening' in proc.stderr
    stereo = np.stack([pcm, pcm], axis=1)   # interleaved: L R L R ...
    proc = cli('events', root / 'export', '-', '--sample-rate', SR, '--window', '4', '--channels', '2',
               stdin=stereo.tobytes())
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert [json.loads(line) for line in proc.stdout.decode().splitlines()] == reports
    proc = cli('events', root / 'export', '-', stdin=b'')
    assert proc.returncode == 2 and b'--sample-rate' in proc.stderr


def test_jsonl_output_resumes_where_a_killed_job_stopped(setup, tmp_path):
    root, _ = setup
    folder = tmp_path / 'archive'
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f'{i}.wav', recording(4.0 + i), SR)
    out = tmp_path / 'out.jsonl'
    proc = cli('predict', root / 'export', folder, '--jsonl', out, '--batch-size', '1')
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = out.read_text().splitlines()
    assert [json.loads(line)['input'] for line in lines] == [str(folder / f'{i}.wav') for i in range(3)]
    # A job killed while writing its second line: the rerun keeps the first, does the rest.
    out.write_text(lines[0] + '\n' + lines[1][:20])
    proc = cli('predict', root / 'export', folder, '--jsonl', out, '--batch-size', '1')
    assert proc.returncode == 0 and b'1 of 3 inputs already' in proc.stderr
    assert out.read_text().splitlines() == lines
    proc = cli('events', root / 'export', folder, '--jsonl', tmp_path / 'events.jsonl', '--window', '4')
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records = [json.loads(line) for line in (tmp_path / 'events.jsonl').read_text().splitlines()]
    assert len(records) == 3 and all('events' in r for r in records)


def test_thresholds_tuned_on_a_labelled_dev_set_find_the_events(setup, tmp_path):
    _, model = setup
    import csv
    rows = [{'filename': 'scene.wav', 'onset': a, 'offset': b, 'label': 'event'} for a, b in EVENTS]
    with open(tmp_path / 'dev.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, ['filename', 'onset', 'offset', 'label'])
        writer.writeheader()
        writer.writerows(rows)
    sf.write(tmp_path / 'scene.wav', recording(), SR)
    base = EventConfig(median_filter_seconds=0.05)
    try:
        tuned = model.tune_event_thresholds([str(tmp_path / 'scene.wav')], str(tmp_path / 'dev.csv'), window=4.0,
                                            base_config=base)
        assert model.event_config is tuned and tuned.median_filter_seconds == 0.05
        [result] = model.detect([str(tmp_path / 'scene.wav')], window=4.0)   # the tuned thresholds by default
        metrics = event_based_metrics({'scene': [(a, b, 'event') for a, b in EVENTS]},
                                      {'scene': [(e['onset'], e['offset'], e['label']) for e in result['events']]},
                                      labels=['background', 'event'])
        assert metrics['classes']['event']['f1'] == 1.0
        with pytest.raises(ValueError, match='no events for 1 dev recordings'):
            model.tune_event_thresholds([str(tmp_path / 'other.wav')], str(tmp_path / 'dev.csv'))
    finally:
        model.event_config = None


# ----- decision-level pooling: clip labels train the frame scores -----

def test_decision_level_pooling_is_the_pooled_frame_scores(tmp_path):
    waves = np.stack([recording(4.0)[:4 * SR], noise(4.0, amp=0.05, seed=5)])
    for pooling in ('max', 'linear_softmax'):
        model = Module('panns_cnn6', label_map=['a', 'b', 'c'], multi_label=True, pooling=pooling, pretrained=False,
                       seed=0)
        model.eval()
        with paddle.no_grad():
            features = model.frontend(paddle.to_tensor(waves))
            frames = model.frame_scores(features).numpy()        # [batch, frames', classes]
            clip = model.scores(model(features)).numpy()
        expected = frames.max(axis=1) if pooling == 'max' else (frames ** 2).sum(axis=1) / frames.sum(axis=1)
        np.testing.assert_allclose(clip, expected, rtol=1e-4, atol=1e-6)
        model.save(str(tmp_path / pooling))
        assert Module('panns_cnn6', load_checkpoint=str(tmp_path / pooling)).pooling == pooling
        export_static(model, tmp_path / f'{pooling}_export', opset=13)
        a = model.predict([waves[0]], SR, engine='dygraph')[0]
        b = Predictor(tmp_path / f'{pooling}_export').predict([waves[0]], SR)[0]
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-4)
    with pytest.raises(ValueError, match="multi_label=True"):
        Module('panns_cnn6', num_class=3, pooling='linear_softmax', pretrained=False)
    with pytest.raises(ValueError, match='pooling must be one of'):
        Module('panns_cnn6', num_class=3, pooling='mean', pretrained=False)


# ----- training with event times (strong labels) -----

def strong_set(root, mode='train', duration=2.0):
    from paddle_soundcls.datasets import StrongLabelDataset
    import csv
    root.mkdir(exist_ok=True)
    rows = []
    for i in range(4):
        wave = noise(3.0, amp=0.01, seed=60 + i)
        onset = 0.5 + 0.4 * i
        wave[int(onset * SR):int((onset + 0.6) * SR)] += chirp(700, 2500, 0.6, amp=0.5)
        sf.write(root / f'{i}.wav', wave, SR)
        rows.append({'filename': f'{i}.wav', 'onset': onset, 'offset': onset + 0.6, 'label': 'chirp'})
    with open(root / 'events.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, ['filename', 'onset', 'offset', 'label'])
        writer.writeheader()
        writer.writerows(rows)
    return StrongLabelDataset(str(root / 'events.csv'), mode=mode, duration=duration, labels=['chirp', 'siren'])


def test_strong_label_targets_follow_the_crop(tmp_path):
    from paddle_soundcls.datasets.strong import frame_targets
    dev = strong_set(tmp_path / 'data', mode='dev')
    wave, targets = dev[0]
    assert wave.shape == (2 * SR,) and targets.shape == (200, 2)
    # The centre crop of a 3-s clip to 2 s starts at 0.5 s: the event at 0.5-1.1 s is at 0-0.6 s.
    np.testing.assert_array_equal(targets, frame_targets([(0.0, 0.6, 'chirp')], 200, 0.01, ['chirp', 'siren']))
    np.testing.assert_array_equal(dev.target(0), [1.0, 0.0])
    train = strong_set(tmp_path / 'data')
    for epoch in (0, 1, 2):
        train.set_epoch(epoch)
        for i in range(4):
            wave, targets = train[i]
            full = sf.read(tmp_path / 'data' / f'{i}.wav', dtype='float32')[0]
            start = int(np.argmax(np.all(np.isclose(np.lib.stride_tricks.sliding_window_view(full, 64)[:, :],
                                                    wave[:64]), axis=1)))
            onset = 0.5 + 0.4 * i - start / SR
            expected = frame_targets([(onset, onset + 0.6, 'chirp')], 200, 0.01, ['chirp', 'siren'],
                                     frame_offset_seconds=0.0)
            np.testing.assert_array_equal(targets, expected)


def test_training_on_event_times_runs_on_the_frame_logits(tmp_path):
    from paddle_soundcls import Trainer
    from paddle_soundcls.training import AugmentConfig
    data = strong_set(tmp_path / 'data')
    model = Module('panns_cnn6', label_map=data.labels, multi_label=True, pretrained=False, seed=0, pooling='max')
    trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters()), use_vdl=False,
                      checkpoint_dir=str(tmp_path / 'ckpt'), seed=1)
    state = trainer.train(data, epochs=3, batch_size=4, eval_dataset=strong_set(tmp_path / 'data', mode='dev'))
    losses = [h['train']['loss'] for h in state['history']]
    assert losses[-1] < losses[0] and 'mAP' in state['history'][-1]['eval']
    single = Module('panns_cnn6', label_map=data.labels, pretrained=False)
    with pytest.raises(ValueError, match='multi_label=True'):
        Trainer(single, paddle.optimizer.Adam(parameters=single.parameters()), use_vdl=False,
                checkpoint_dir=str(tmp_path / 'x')).train(data, epochs=1)
    with pytest.raises(ValueError, match='mixup'):
        Trainer(model, paddle.optimizer.Adam(parameters=model.parameters()), use_vdl=False,
                checkpoint_dir=str(tmp_path / 'y'), augment=AugmentConfig(mixup_alpha=0.2)).train(data, epochs=1)


def test_the_picture_of_digital_silence_draws_it_without_warnings(setup, tmp_path):
    import warnings

    from paddle_soundcls.analysis.plots import plot_events
    root, _ = setup
    path = tmp_path / 'silence.wav'
    sf.write(path, np.zeros(3 * SR, 'float32'), SR)
    [result] = Predictor(root / 'export').detect([str(path)], window=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')          # log10(0) would warn "divide by zero"
        plot_events(str(tmp_path / 'silence.png'), str(path), result, ['background', 'event'])
    assert (tmp_path / 'silence.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
