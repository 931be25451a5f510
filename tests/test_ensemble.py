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
