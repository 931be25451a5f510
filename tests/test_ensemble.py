"""Ensembles (paddle_soundcls.Ensemble, deploy/ensemble.py): scores and frame scores against the
formula computed from each member alone, saving and loading, the export and its Paddle-free
Predictor, the command line, and the ensemble as a distillation teacher."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import soundfile as sf

from paddle_soundcls import Ensemble, Module, load_module
from paddle_soundcls import cli
from paddle_soundcls.deploy import Predictor
from paddle_soundcls.errors import ArgumentError, CheckpointError, ExportError
from paddle_soundcls.export import export_static
from paddle_soundcls.training.teacher import Teacher

from helpers import BLOCK_PADDLE, prime_batchnorm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ['dog', 'rain', 'siren']
RATE = 32000


def clips(count=3, seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    out = []
    for i in range(count):
        tone = 0.3 * np.sin(2 * np.pi * (300 + 500 * i) * t) * (t > 0.3 * i)
        out.append((tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def member(name, seed, multi_label=False, task='sound-cls'):
    kwargs = {} if task == 'tagging' else dict(label_map=LABELS, multi_label=multi_label)
    module = Module(name, task=task, pretrained=False, seed=seed, **kwargs)
    return prime_batchnorm(module, np.stack(clips(4, seed=seed + 10)))


@pytest.fixture(scope='module')
def members():
    # Two front ends' worth of frame geometry: mn04 frames every 32 front-end frames from 0, CNN6's
    # every 16 from 7.5.
    return [member('efficientat_mn04', 1), member('panns_cnn6', 2)]


def member_logits(module, waves):
    """The member's own logits, straight from its network: the reference the ensemble must reproduce."""
    with paddle.no_grad():
        return module(module.frontend(paddle.to_tensor(np.stack(waves)))).numpy().astype(np.float64)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_scores_are_the_activation_of_the_weighted_mean_of_logits(members):
    waves = clips()
    ensemble = Ensemble(members, weights=[1.0, 3.0])
    got = ensemble.predict(waves, sample_rate=RATE, engine='dygraph', batch_size=3)
    logits = [member_logits(m, waves) for m in members]
    expected = softmax((1.0 * logits[0] + 3.0 * logits[1]) / 4.0)
    for result, row in zip(got, expected):
        assert np.allclose([result[label] for label in LABELS], row, atol=1e-5)
    assert not np.allclose(softmax(logits[0]), softmax(logits[1]), atol=1e-2)   # the members do differ


def test_multi_label_members_average_their_log_odds():
    waves = clips()
    members = [member('efficientat_mn04', 3, multi_label=True), member('panns_cnn6', 4, multi_label=True)]
    got = Ensemble(members).predict(waves, sample_rate=RATE, engine='dygraph')
    logits = np.mean([member_logits(m, waves) for m in members], axis=0)
    expected = 1 / (1 + np.exp(-logits))
    assert np.allclose([[r[label] for label in LABELS] for r in got], expected, atol=1e-5)


def test_frame_scores_combine_each_members_own_detection(members):
    waves = clips(1, seconds=4.0)
    ensemble = Ensemble(members, weights=[2.0, 1.0])
    got = ensemble.detect(waves, sample_rate=RATE, window=2.0, hop=1.0)[0]
    alone = [m.detect(waves, sample_rate=RATE, window=2.0, hop=1.0)[0] for m in members]
    assert got['frame_hop'] == alone[0]['frame_hop'] == alone[1]['frame_hop']
    logs = [np.log(np.clip(a['frame_scores'].astype(np.float64), 1e-7, 1 - 1e-7)) for a in alone]
    expected = softmax((2.0 * logs[0] + 1.0 * logs[1]) / 3.0)
    assert got['frame_scores'].shape == expected.shape == (400, 3)
    assert np.abs(got['frame_scores'] - expected).max() < 1e-5


def test_a_stream_gives_the_offline_frames(members):
    waves = clips(1, seconds=4.0)[0]
    ensemble = Ensemble(members)
    offline = ensemble.detect([waves], sample_rate=RATE, window=2.0, hop=1.0)[0]['events']
    stream = ensemble.stream(RATE, window=2.0, hop=1.0)
    events = []
    for start in range(0, len(waves), 7000):
        events += stream.push(waves[start:start + 7000])
    events += stream.close()
    assert [(e['label'], round(e['onset'], 3)) for e in events] == [(e['label'], round(e['onset'], 3)) for e in offline]


def test_saved_ensemble_is_one_thing_you_can_name(tmp_path, members):
    waves = clips()
    ensemble = Ensemble(members, weights=[1.0, 2.0])
    ensemble.save(tmp_path / 'ens')
    assert json.loads((tmp_path / 'ens' / 'ensemble.json').read_text())['members'][1]['weight'] == 2.0
    assert (tmp_path / 'ens' / 'members' / '0' / 'meta.json').is_file()
    loaded = load_module(tmp_path / 'ens')
    assert isinstance(loaded, Ensemble) and loaded.weights == [1.0, 2.0]
    a = ensemble.predict(waves, sample_rate=RATE, engine='dygraph')
    b = loaded.predict(waves, sample_rate=RATE, engine='dygraph')
    assert all(np.allclose(list(x.values()), list(y.values()), atol=1e-6) for x, y in zip(a, b))
    with pytest.raises(CheckpointError, match='ensemble'):
        load_module(tmp_path / 'ens', model='panns_cnn6')


def test_damaged_or_hostile_ensemble_files_are_refused(tmp_path, members):
    Ensemble(members).save(tmp_path / 'ens')
    path = tmp_path / 'ens' / 'ensemble.json'
    data = json.loads(path.read_text())
    for members_entry, match in (([data['members'][0]], 'two or more'),
                                 ([data['members'][0], {**data['members'][1], 'dir': '../../etc'}], 'outside'),
                                 ([data['members'][0], {**data['members'][1], 'weight': 'x'}], 'weight')):
        path.write_text(json.dumps({**data, 'members': members_entry}))
        with pytest.raises(CheckpointError, match=match):
            load_module(tmp_path / 'ens')
    path.write_text(json.dumps({**data, 'members': [data['members'][0], {**data['members'][1], 'dir': 'members/9'}]}))
    with pytest.raises(CheckpointError, match='members/9 is missing'):
        load_module(tmp_path / 'ens')


def test_members_that_cannot_be_averaged_are_refused(members):
    other_labels = Module('panns_cnn6', label_map=['a', 'b', 'c'], pretrained=False)
    with pytest.raises(ArgumentError, match='same labels'):
        Ensemble([members[0], other_labels])
    multi = Module('panns_cnn6', label_map=LABELS, multi_label=True, pretrained=False)
    with pytest.raises(ArgumentError, match='multi-label'):
        Ensemble([members[0], multi])
    with pytest.raises(ArgumentError, match='at least two'):
        Ensemble([members[0]])
    with pytest.raises(ArgumentError, match='another ensemble'):
        Ensemble([members[0], Ensemble(members)])
    with pytest.raises(ArgumentError, match='one number per member'):
        Ensemble(members, weights=[1.0])
    with pytest.raises(ArgumentError, match='positive weight'):
        Ensemble(members, weights=[0, 0])
    with pytest.raises(ArgumentError, match='neither a checkpoint directory nor a registered'):
        Ensemble([members[0], 'no_such_model'])
    # CP-Mobile's front end has another hop: fine for scores, refused for frame-by-frame detection.
    mixed = Ensemble([members[0], Module('cpmobile', label_map=LABELS, pretrained=False)])
    assert len(mixed.predict(clips(1), sample_rate=RATE, engine='dygraph')) == 1
    with pytest.raises(ArgumentError, match='frame grid'):
        mixed.detect(clips(1), sample_rate=RATE)


def test_tagging_ensemble_has_the_audioset_labels():
    taggers = [Module('efficientat_mn04', task='tagging', pretrained=False, seed=5),
               Module('panns_cnn6', task='tagging', pretrained=False, seed=6)]
    ensemble = Ensemble(taggers)
    assert ensemble.task == 'tagging' and ensemble.multi_label and len(ensemble.labels) == 527
    [result] = ensemble.predict(clips(1), sample_rate=RATE, top_k=3, engine='dygraph')
    assert len(result) == 3


def test_export_runs_without_paddle_and_matches_dygraph(tmp_path, members):
    waves = clips(3)
    ensemble = Ensemble(members, weights=[1.0, 2.0])
    export_static(ensemble, tmp_path / 'exp', opset=13)
    meta = json.loads((tmp_path / 'exp' / 'export.json').read_text())
    assert meta['model'] == 'ensemble' and [m['weight'] for m in meta['ensemble']['members']] == [1.0, 2.0]
    for i in range(2):
        assert (tmp_path / 'exp' / 'members' / str(i) / 'model.onnx').is_file()
    predictor = Predictor(tmp_path / 'exp')
    assert len(predictor.members) == 2 and predictor.labels == LABELS
    dygraph = ensemble.predict(waves, sample_rate=RATE, engine='dygraph')
    exported = predictor.predict(waves, sample_rate=RATE)
    for a, b in zip(dygraph, exported):
        assert np.allclose([a[k] for k in LABELS], [b[k] for k in LABELS], atol=1e-4)
    paddle_engine = Predictor(tmp_path / 'exp', engine='paddle').predict(waves, sample_rate=RATE)
    for a, b in zip(dygraph, paddle_engine):
        assert np.allclose([a[k] for k in LABELS], [b[k] for k in LABELS], atol=1e-4)
    long = clips(1, seconds=4.0)
    frames_dygraph = ensemble.detect(long, sample_rate=RATE, window=2.0, hop=1.0)[0]['frame_scores']
    frames_export = predictor.detect(long, sample_rate=RATE, window=2.0, hop=1.0)[0]['frame_scores']
    assert np.abs(frames_dygraph - frames_export).max() < 1e-4

    np.save(tmp_path / 'waves.npy', np.stack(waves))
    np.save(tmp_path / 'expected.npy', np.array([[r[k] for k in LABELS] for r in exported]))
    code = BLOCK_PADDLE + f'''
import numpy as np
from paddle_soundcls.deploy import Predictor
predictor = Predictor({str(tmp_path / 'exp')!r})
waves = list(np.load({str(tmp_path / 'waves.npy')!r}))
got = np.array([[r[k] for k in {LABELS!r}] for r in predictor.predict(waves, sample_rate={RATE})])
print(json.dumps({{'diff': float(np.abs(got - np.load({str(tmp_path / 'expected.npy')!r})).max()),
                  'paddle': 'paddle' in sys.modules}}))
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {'diff': out['diff'], 'paddle': False} and out['diff'] < 1e-6


def test_a_damaged_member_of_an_export_is_refused(tmp_path, members):
    export_static(Ensemble(members), tmp_path / 'exp', opset=13)
    (tmp_path / 'exp' / 'members' / '1' / 'model.onnx').write_bytes(b'not a model')
    with pytest.raises(ExportError, match='members/1/model.onnx'):
        Predictor(tmp_path / 'exp')


def test_command_line_saves_predicts_and_exports(tmp_path, members, capsys):
    for i, m in enumerate(members):
        m.save(tmp_path / f'ckpt{i}')
    wav = tmp_path / 'clip.wav'
    sf.write(wav, clips(1)[0], RATE)
    assert cli.main(['ensemble', str(tmp_path / 'ckpt0'), str(tmp_path / 'ckpt1'), '--output',
                     str(tmp_path / 'ens'), '--weights', '2', '1']) == 0
    assert json.loads(capsys.readouterr().out)['members'][0]['weight'] == 2.0
    assert cli.main(['predict', str(tmp_path / 'ens'), str(wav), '--format', 'jsonl']) == 0
    from_checkpoint = capsys.readouterr().out
    assert cli.main(['export', '--checkpoint', str(tmp_path / 'ens'), '--output', str(tmp_path / 'exp')]) == 0
    assert json.loads(capsys.readouterr().out)['model'] == 'ensemble'
    assert cli.main(['predict', str(tmp_path / 'exp'), str(wav), '--format', 'jsonl']) == 0
    from_export = capsys.readouterr().out
    a, b = json.loads(from_checkpoint), json.loads(from_export)
    assert a['input'] == b['input'] == str(wav) and list(a['scores']) == list(b['scores'])
    assert np.allclose([a['scores'][k] for k in LABELS], [b['scores'][k] for k in LABELS], atol=1e-4)
    assert cli.main(['ensemble', str(tmp_path / 'ckpt0'), str(tmp_path / 'ckpt1'), '--output', str(tmp_path / 'x'),
                     '--weights', '1']) == 2
    assert 'one weight per member' in capsys.readouterr().err
    assert cli.main(['benchmark', str(tmp_path / 'exp')]) == 2
    assert 'ensemble export' in capsys.readouterr().err


def test_teacher_from_a_saved_ensemble_and_from_its_export_agree(tmp_path, members):
    files = []
    for i, wave in enumerate(clips(3)):
        files.append(str(tmp_path / f'c{i}.wav'))
        sf.write(files[-1], wave, RATE)
    ensemble = Ensemble(members, weights=[1.0, 3.0])
    ensemble.save(tmp_path / 'ens')
    export_static(ensemble, tmp_path / 'exp', opset=13)
    from_dir, from_export = Teacher(str(tmp_path / 'ens')), Teacher(str(tmp_path / 'exp'))
    assert from_dir.weights == from_export.weights == [1.0, 3.0]
    a, b = from_dir.logits(files), from_export.logits(files)
    waves = [sf.read(f, dtype='float32')[0] for f in files]
    logits = [member_logits(m, waves) for m in members]
    # Softmax logits are known up to a constant per clip: compare the distributions they give.
    expected = softmax((logits[0] + 3 * logits[1]) / 4)
    assert np.allclose(softmax(a), expected, atol=1e-4) and np.allclose(softmax(b), expected, atol=1e-4)
    # Other weights are another teacher: another cache key.
    assert Teacher(Ensemble(members, weights=[3.0, 1.0])).settings() != from_dir.settings()
    assert Teacher(Ensemble(members)).settings() == Teacher(list(members)).settings()


def test_an_ensemble_export_is_served_like_any_export(tmp_path, members):
    import httpx

    from paddle_soundcls.serve.app import create_app
    from serve_fixtures import audio_bytes, serve_in_thread
    export_static(Ensemble(members, weights=[1.0, 2.0]), tmp_path / 'exp', opset=13)
    predictor = Predictor(tmp_path / 'exp')
    wave = clips(1, seconds=3.0)[0]
    expected = predictor.predict([wave], sample_rate=RATE)[0]
    frames = predictor.detect([wave], sample_rate=RATE)[0]
    with serve_in_thread(create_app(predictor)) as base:
        data = audio_bytes(wave, RATE)
        got = httpx.post(base + '/v1/classify', content=data, headers={'content-type': 'audio/wav'}, timeout=60)
        assert got.status_code == 200, got.text
        scores = {r['label']: r['score'] for r in got.json()['results']}
        assert np.allclose([scores[k] for k in LABELS], [expected[k] for k in LABELS], atol=1e-4)
        events = httpx.post(base + '/v1/events', content=data, headers={'content-type': 'audio/wav'}, timeout=60)
        assert events.status_code == 200, events.text
        assert [e['label'] for e in events.json()['events']] == [e['label'] for e in frames['events']]


# ----- refusals and limits of saved and exported ensembles

@pytest.fixture(scope='module')
def exported(tmp_path_factory, members):
    """An export of Ensemble(members, weights=[1, 2]); tests edit copies of it."""
    out = tmp_path_factory.mktemp('exported') / 'exp'
    export_static(Ensemble(members, weights=[1.0, 2.0]), out, opset=13)
    return out


def copy_of(exported, tmp_path):
    import shutil
    shutil.copytree(exported, tmp_path / 'exp')
    return tmp_path / 'exp'


def edit_members(path, edit):
    data = json.loads(path.read_text())
    records = data['ensemble']['members'] if 'ensemble' in data else data['members']
    edit(records)
    path.write_text(json.dumps(data))


def test_hand_edited_member_weights_and_folders_are_refused(tmp_path, exported, members):
    exp = copy_of(exported, tmp_path)
    original = (exp / 'export.json').read_text()
    for weights, match in (([-1, 1], r'ensemble.members\[0\].weight'), ([float('nan'), 1], r'members\[0\].weight'),
                           ([1, float('inf')], r'members\[1\].weight'), ([0, 0], 'positive weight'),
                           ([1e308, 1e308], 'sum')):
        (exp / 'export.json').write_text(original)
        edit_members(exp / 'export.json', lambda records: [r.update(weight=w) for r, w in zip(records, weights)])
        with pytest.raises(ExportError, match=match):
            Predictor(exp)
        with pytest.raises(ExportError, match=match):
            Teacher(str(exp))
    for folder in ('.', '', './', 'members/..//.'):
        (exp / 'export.json').write_text(original)
        edit_members(exp / 'export.json', lambda records: records[0].update(dir=folder))
        with pytest.raises(ExportError, match="own directory|outside"):
            Predictor(exp)
    Ensemble(members).save(tmp_path / 'ens')
    for change, match in ((dict(dir='./'), 'own directory'), (dict(weight=float('nan')), r'members\[1\].weight')):
        edit_members(tmp_path / 'ens' / 'ensemble.json', lambda records: records[1].update(**change))
        with pytest.raises(CheckpointError, match=match):
            load_module(tmp_path / 'ens')
        edit_members(tmp_path / 'ens' / 'ensemble.json', lambda records: records[1].update(dir='members/1', weight=1))


def test_nested_or_missing_export_members_are_refused(tmp_path, exported):
    import shutil
    exp = copy_of(exported, tmp_path)
    shutil.rmtree(exp / 'members' / '1')
    with pytest.raises(ExportError, match=r'members/1 is missing: .*export.json lists it'):
        Predictor(exp)
    shutil.rmtree(exp / 'members' / '0')
    shutil.copytree(exported, exp / 'members' / '0')
    shutil.copytree(exported / 'members' / '1', exp / 'members' / '1')
    with pytest.raises(ExportError, match='itself an ensemble export'):
        Predictor(exp)


def test_scores_keep_logit_gaps_beyond_what_1e7_clipping_allows():
    from paddle_soundcls.deploy.ensemble import combine_scores
    sigmoid = lambda x: 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))   # noqa: E731
    # Softmax members with logits [30, 0, 0] and [0, 12, 0]: the ensemble is softmax([15, 6, 0]).
    members = [softmax(np.array([30.0, 0, 0])).astype(np.float32), softmax(np.array([0, 12.0, 0])).astype(np.float32)]
    got = combine_scores(members, [1, 1], multi_label=False)
    np.testing.assert_allclose(got, softmax(np.array([15.0, 6.0, 0.0])), rtol=1e-5)
    # Sigmoid members (-25, 14) and (5, -3): sigmoid of (-10, 5.5).
    members = [sigmoid([-25.0, 14.0]).astype(np.float32), sigmoid([5.0, -3.0]).astype(np.float32)]
    got = combine_scores(members, [1, 1], multi_label=True)
    np.testing.assert_allclose(got, sigmoid([-10.0, 5.5]), rtol=1e-4)
    # An ensemble of one model twice is that model, however sure it is.
    sure = softmax(np.array([40.0, 0, -3])).astype(np.float32)
    np.testing.assert_allclose(combine_scores([sure, sure], [1, 3], multi_label=False), sure, rtol=1e-5, atol=0)
    assert combine_scores([sure, sure], [1, 1], multi_label=False)[0] == np.float32(1.0)


def test_weights_whose_sum_overflows_and_bad_event_settings_are_refused(members):
    from paddle_soundcls.deploy.ensemble import check_weights
    from paddle_soundcls.deploy.events import EventConfig
    with pytest.raises(ArgumentError, match='sum'):
        check_weights([1e308, 1e308], 2)
    with pytest.raises(ArgumentError, match='event_config'):
        Ensemble(members, event_config='x')
    assert Ensemble(members, event_config={'onset_threshold': 0.7}).event_config == EventConfig(onset_threshold=0.7)


def test_a_listed_ensemble_counts_once_however_its_weights_are_scaled(members):
    a, b = members
    first = Teacher([Ensemble([a, b], weights=[3, 1]), b])
    second = Teacher([Ensemble([a, b], weights=[0.75, 0.25]), b])
    assert first.weights == second.weights == [0.75, 0.25, 1.0]
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(4, 3)) for _ in range(3)]
    expected = (0.75 * logits[0] + 0.25 * logits[1] + logits[2]) / 2   # (ensemble + b) / 2
    np.testing.assert_allclose(first.combine(logits), expected, rtol=1e-5)
    assert Teacher(Ensemble([a, b], weights=[3, 1])).weights == [3.0, 1.0]   # alone: its own weights


def test_the_server_allows_no_finer_hop_than_the_finest_member(exported, members):
    from paddle_soundcls.serve.work import network_frame_hop
    # mn04: a frame every 32 front-end frames of 320 samples at 32 kHz (0.32 s); CNN6 every 16 (0.16 s).
    hops = [m.frame_geometry.stride * m.frontend_cfg.hop_length / m.frontend_cfg.sample_rate for m in members]
    assert hops == pytest.approx([0.32, 0.16])
    assert network_frame_hop(Predictor(exported)) == pytest.approx(min(hops))
    assert network_frame_hop(Ensemble(members)) == pytest.approx(min(hops))


def test_an_ensemble_that_cannot_detect_says_so_before_any_audio(tmp_path, members):
    import httpx
    from websockets.sync.client import connect as ws_connect

    from paddle_soundcls.serve.app import create_app
    from serve_fixtures import audio_bytes, serve_in_thread
    # CP-Mobile's front end hops 500 samples, mn04's 320: scores combine, frames do not.
    export_static(Ensemble([members[0], Module('cpmobile', label_map=LABELS, pretrained=False)]), tmp_path / 'exp',
                  opset=13)
    predictor = Predictor(tmp_path / 'exp')
    with pytest.raises(ExportError, match='frame grid'):
        predictor.frame_scorer()
    with serve_in_thread(create_app(predictor)) as base:
        data = audio_bytes(clips(1, seconds=3.0)[0], RATE)
        events = httpx.post(base + '/v1/events', content=data, headers={'content-type': 'audio/wav'}, timeout=60)
        assert events.status_code == 501 and events.json()['error']['code'] == 'events_unsupported', events.text
        with ws_connect(base.replace('http', 'ws') + '/v1/stream', open_timeout=10) as ws:
            ws.send(json.dumps({'sample_rate': RATE, 'format': 'float32', 'mode': 'events'}))
            first = json.loads(ws.recv(timeout=30))
        assert first['type'] == 'error' and first['error']['code'] == 'events_unsupported', first
        classify = httpx.post(base + '/v1/classify', content=data, headers={'content-type': 'audio/wav'}, timeout=60)
        assert classify.status_code == 200, classify.text


def test_command_line_refuses_outputs_that_would_replace_a_member(tmp_path, members, capsys):
    for i, m in enumerate(members):
        m.save(tmp_path / f'ckpt{i}')
    before = sorted(os.listdir(tmp_path / 'ckpt0'))
    ckpts = [str(tmp_path / 'ckpt0'), str(tmp_path / 'ckpt1')]
    for output in (ckpts[0], str(tmp_path / 'ckpt0' / 'inside'), str(tmp_path)):
        assert cli.main(['ensemble', *ckpts, '--output', output]) == 2
        assert 'would replace member' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / 'ckpt0')) == before
    (tmp_path / 'a_file').write_text('keep me')
    for output, message in ((str(tmp_path / 'a_file'), 'is a file'), ('', 'empty path')):
        assert cli.main(['ensemble', *ckpts, '--output', output]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / 'a_file').read_text() == 'keep me'
    assert cli.main(['ensemble', *ckpts, '--output', str(tmp_path / 'ens'), '--weights', '-1', '2']) == 2
    err = capsys.readouterr().err
    assert '--weights: -1' in err and 'weights[0]' not in err
    # The API refuses the same outputs (fileio.replace_dir never moves a file aside for a folder).
    with pytest.raises(ArgumentError, match='is a file'):
        Ensemble(members).save(tmp_path / 'a_file')
    with pytest.raises(ArgumentError, match='empty path'):
        Ensemble(members).save('')
    assert (tmp_path / 'a_file').read_text() == 'keep me'


def test_messages_for_exports_as_members_and_saved_ensembles_where_exports_go(tmp_path, exported, members, capsys):
    from paddle_soundcls.errors import ServeError
    from paddle_soundcls.serve.command import resolve_model_dir
    member_export = str(exported / 'members' / '0')
    with pytest.raises(ArgumentError, match='is an export directory.*checkpoint it was exported from') as info:
        Ensemble([member_export, members[1]])
    assert '--model' not in str(info.value)
    Ensemble(members).save(tmp_path / 'ens')
    with pytest.raises(ServeError, match=r'saved ensemble .*export --checkpoint .*ens --output DIR'):
        resolve_model_dir(str(tmp_path / 'ens'))
    assert cli.main(['benchmark', str(tmp_path / 'ens')]) == 2
    err = capsys.readouterr().err
    assert 'saved ensemble' in err and f'--output {tmp_path / "ens"}' not in err


def test_quantizing_an_ensemble_is_all_or_nothing(tmp_path, exported, monkeypatch):
    from paddle_soundcls.errors import QuantizationRefused
    from paddle_soundcls.export import quantize
    exp = copy_of(exported, tmp_path)
    original = (exp / 'export.json').read_text()
    for folder in ('calibration', 'check'):
        (tmp_path / folder).mkdir()
        for i, wave in enumerate(clips(2, seed=len(folder))):
            sf.write(tmp_path / folder / f'{folder}{i}.wav', wave, RATE)
    verdicts = iter([True, False])   # the first member passes its check, the second does not

    def judged(model_dir, data, **kwargs):
        agreement = 1.0 if next(verdicts) else 0.5
        return {'clips': 2, 'top1_agreement': agreement, 'accuracy_drop': None, 'passed': agreement >= 0.99,
                'rule': {'min_top1_agreement': 0.99, 'max_accuracy_drop_points': 0.5}}

    monkeypatch.setattr(quantize, 'check_int8', judged)
    with pytest.raises(QuantizationRefused, match=r'ensemble member members/1 \(panns_cnn6\).*No member'):
        quantize.quantize_export(exp, tmp_path / 'calibration', check=tmp_path / 'check', limit=2, seconds=1.0,
                                 progress=False)
    assert not list(exp.rglob('model.int8.onnx'))
    assert (exp / 'export.json').read_text() == original
    assert json.loads((exp / 'members' / '0' / 'export.json').read_text()).get('int8') is None



def test_converting_an_ensemble_to_onnx_is_all_or_nothing(tmp_path, exported, monkeypatch):
    from paddle_soundcls.export import onnx as onnx_export
    exp = copy_of(exported, tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_ino) for p in exp.rglob('*') if p.is_file()}
    real, calls = onnx_export.write_onnx, []

    def fails_on_the_second_member(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise ExportError('conversion failed')
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, 'write_onnx', fails_on_the_second_member)
    with pytest.raises(ExportError, match='conversion failed'):
        onnx_export.export_onnx(exp)
    assert len(calls) == 2
    assert {p: (p.read_bytes(), p.stat().st_ino) for p in exp.rglob('*') if p.is_file()} == before   # untouched


def test_an_export_json_that_disagrees_with_its_members_is_refused(tmp_path, exported):
    exp = copy_of(exported, tmp_path)
    original = json.loads((exp / 'export.json').read_text())
    member = json.loads((exp / 'members' / '0' / 'export.json').read_text())
    for field, value in (('multi_label', not original['multi_label']), ('clip_seconds', 1.0),
                         ('min_seconds', original['min_seconds'] + 1), ('labels', ['rain', 'dog', 'siren'])):
        (exp / 'export.json').write_text(json.dumps({**original, field: value}))
        with pytest.raises(ExportError, match=f'{field} is .* but its members say'):
            Predictor(exp)
    assert member['multi_label'] == original['multi_label'] and member['labels'] == original['labels']
    (exp / 'export.json').write_text(json.dumps(original))
    assert Predictor(exp).labels == LABELS
