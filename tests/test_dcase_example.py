"""The DCASE task 1 recipe (examples/dcase_task1/train.py): its argument errors, the submission
file and the system description against DCASE's formats, and (slow) the whole --demo."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'examples', 'dcase_task1', 'train.py')
# The header of a DCASE 2024 task 1 system output, as the challenge's submission validator lists it.
DCASE_HEADER = ['filename', 'scene_label', 'airport', 'bus', 'metro', 'metro_station', 'park', 'public_square',
                'shopping_mall', 'street_pedestrian', 'street_traffic', 'tram']


@pytest.fixture(scope='module')
def recipe():
    spec = importlib.util.spec_from_file_location('dcase_task1_train', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- argument errors: refused before any work, naming the argument -----

@pytest.mark.parametrize('argv, message', [
    ([], r'--data-dir DIR .* is required; or run --demo'),
    (['--demo', '--data-dir', 'somewhere'], r'--demo generates its own data set'),
    (['--demo', '--teachers', 'cpresnet', 'passt_s_kd_p16_128_ap486'], r'passt_s_kd_p16_128_ap486 is far too slow'),
    (['--demo', '--teachers', 'cpresnet', 'cpresnet'], r'--teachers: each model once'),
    (['--demo', '--teachers', 'cpresnet', 'cpresnet_damped', '--teacher-weights', '1'],
     r'--teacher-weights: give one weight per --teachers model \(2\), got 1'),
    (['--demo', '--teachers', 'cpresnet', '--teacher-checkpoints', '.'], r'--teachers .* and --teacher-checkpoints'),
    (['--demo', '--freq-mixstyle', '1.5'], r'--freq-mixstyle is a probability'),
    (['--demo', '--domain-adversarial', '-1'], r'--domain-adversarial must be a weight >= 0'),
    (['--demo', '--kd-lambda', '2'], r'--kd-lambda must be in \[0, 1\]'),
    (['--demo', '--epochs', '0'], r'--epochs must be at least 1'),
    (['--demo', '--learning-rate', '-1'], r'--learning-rate must be a positive number'),
    (['--demo', '--impulse-responses', '/no/such/folder'], r'--impulse-responses: no such folder'),
    (['--demo', '--teacher-checkpoints', '/no/such/teacher'], r'--teacher-checkpoints: no such folder'),
    (['--demo', '--submission-label', 'my system'], r'--submission-label must read <lastname>_<institute>_task1_'),
    (['--demo', '--submission-label', 'Doe_LAB_task1_5'], r'--submission-label'),
    (['--demo', '--submission-label', 'Doe_LAB_task1_1\n'], r'--submission-label'),
    (['--demo', '--warmup-epochs', 'nan'], r'--warmup-epochs must be >= 0, got nan'),
    (['--demo', '--warmup-epochs', 'inf'], r'--warmup-epochs must be >= 0, got inf'),
    (['--demo', '--teacher-checkpoints', '.', '--teacher-weights', '1', '1'], r'--teacher-weights goes with'),
    (['--demo', '--teacher-weights', '2'], r'--teacher-weights weighs the members of an ensemble.*\(cpresnet\)'),
    (['--demo', '--teachers', 'cpresnet', 'cpresnet_damped', '--teacher-weights', '1', '-1'],
     r'--teacher-weights must be numbers >= 0'),
    (['--demo', '--teachers', 'cpresnet', 'cpresnet_damped', '--teacher-weights', '1', 'nan'],
     r'--teacher-weights must be numbers >= 0'),
    (['--demo', '--teachers', 'cpresnet', 'cpresnet_damped', '--teacher-weights', '0', '0'],
     r'--teacher-weights must be numbers >= 0, not all 0'),
])
def test_bad_arguments_are_refused_with_a_clear_message(recipe, argv, message):
    from paddle_soundcls.errors import ArgumentError
    with pytest.raises(ArgumentError, match=message):
        recipe.main(argv)


def test_an_eval_audio_folder_without_wav_files_is_refused_before_any_work(recipe, tmp_path, monkeypatch):
    from paddle_soundcls.errors import ArgumentError
    (tmp_path / 'notes.txt').write_text('no audio here')
    monkeypatch.setattr(recipe, 'make_tau22_demo', lambda *a, **k: pytest.fail('work started before the check'))
    with pytest.raises(ArgumentError, match=r'--eval-audio: .* holds no \.wav files'):
        recipe.main(['--demo', '--eval-audio', str(tmp_path), '--checkpoint-dir', str(tmp_path / 'ckpt')])


def test_argparse_refuses_an_unknown_subset_and_model(recipe, capsys):
    for argv in (['--demo', '--subset', '7'], ['--demo', '--student', 'no_such_model']):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
    assert 'invalid choice' in capsys.readouterr().err


# ----- the submission file -----

def read_table(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.reader(f, delimiter='\t'))


def test_submission_file_has_the_dcase_layout(recipe, tmp_path):
    classes = DCASE_HEADER[2:]
    scores = np.full((3, 10), 0.02)
    scores[0, 1], scores[1, 9], scores[2, 0] = 0.82, 0.82, 0.82     # bus, tram, airport
    names = ['audio/bus-lyon-1-10-0-a.wav', 'audio/tram-paris-2-20-3-s4.wav', 'audio/airport-rome-3-30-9-b.wav']
    path = recipe.write_submission(str(tmp_path / 'Doe_LAB_task1_1.output.split_100.csv'), names, scores, classes)
    rows = read_table(path)
    assert rows[0] == DCASE_HEADER
    assert [row[0] for row in rows[1:]] == ['bus-lyon-1-10-0-a.wav', 'tram-paris-2-20-3-s4.wav',
                                            'airport-rome-3-30-9-b.wav']   # no folder, as the baseline writes them
    assert [row[1] for row in rows[1:]] == ['bus', 'tram', 'airport']
    assert all(len(row) == 12 for row in rows)
    np.testing.assert_allclose(np.array([[float(v) for v in row[2:]] for row in rows[1:]]), scores, atol=1e-6)
    with open(path, 'rb') as f:
        assert b'\r' not in f.read()


def test_submission_scores_read_back_as_the_same_floats(recipe, tmp_path):
    # Thirds and a score below 1e-6 (which 6 decimals would write as 0.000000).
    scores = np.array([[1 / 3, 2 / 3 - 4e-7, 4e-7], [0.1, 0.7, 0.2]])
    path = recipe.write_submission(str(tmp_path / 'out.csv'), ['a.wav', 'b.wav'], scores, ['x', 'y', 'z'])
    written = np.array([[float(v) for v in row[2:]] for row in read_table(path)[1:]])
    assert np.array_equal(written, scores)


def test_submission_writer_refuses_what_dcase_would_reject(recipe, tmp_path):
    from paddle_soundcls.errors import ArgumentError
    out = str(tmp_path / 'out.csv')
    with pytest.raises(ArgumentError, match=r'scores must be \[clips, 3\]'):
        recipe.write_submission(out, ['a.wav'], np.ones((1, 2)) / 2, ['x', 'y', 'z'])
    with pytest.raises(ArgumentError, match='2 file names for 1 rows'):
        recipe.write_submission(out, ['a.wav', 'b.wav'], np.ones((1, 2)) / 2, ['x', 'y'])
    with pytest.raises(ArgumentError, match='unique'):
        recipe.write_submission(out, ['one/a.wav', 'two/a.wav'], np.ones((2, 2)) / 2, ['x', 'y'])


def test_clip_lists_are_csv_that_keeps_a_path_with_a_comma(recipe, tmp_path):
    items = [('/data/a,1.wav', 0), ('/data/b "2".wav', 1), ('/data/c.wav', 1)]
    path = recipe.write_clip_list(str(tmp_path / 'clips.csv'), items, ['park', 'tram'], count=3, seed=0)
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['path', 'label']
    assert sorted(rows[1:]) == [['/data/a,1.wav', 'park'], ['/data/b "2".wav', 'tram'], ['/data/c.wav', 'tram']]


# ----- a rerun with other settings -----

def test_a_run_folder_keeps_its_settings_and_refuses_other_ones(recipe, tmp_path):
    from paddle_soundcls.errors import ArgumentError
    folder = str(tmp_path / 'student')
    settings = {'model': 'cpmobile', 'epochs': 7, 'learning_rate': 0.005, 'teacher': ['/t/final_model']}
    path = recipe.check_run_settings(folder, settings)
    with open(path, encoding='utf-8') as f:
        assert json.load(f) == settings
    os.makedirs(os.path.join(folder, 'epoch_7'))           # what a finished run leaves
    assert recipe.check_run_settings(folder, dict(settings)) == path    # the same settings: resumed
    with pytest.raises(ArgumentError) as info:
        recipe.check_run_settings(folder, {**settings, 'epochs': 150, 'learning_rate': 0.001})
    message = str(info.value)
    assert folder in message and 'another --checkpoint-dir' in message and 'delete' in message
    assert 'epochs: 7 then, 150 now' in message and 'learning_rate: 0.005 then, 0.001 now' in message
    assert 'model:' not in message and 'teacher:' not in message    # only what changed
    with open(path, encoding='utf-8') as f:
        assert json.load(f) == settings                    # the saved settings are left as they were


def test_a_run_folder_without_settings_is_refused(recipe, tmp_path):
    from paddle_soundcls.errors import ArgumentError
    folder = tmp_path / 'teacher_cpresnet'
    (folder / 'epoch_30').mkdir(parents=True)
    with pytest.raises(ArgumentError, match=r'teacher_cpresnet holds a run whose settings are unknown'):
        recipe.check_run_settings(str(folder), {'model': 'cpresnet'})


def test_every_epoch_is_saved_so_an_interrupted_run_resumes(recipe, tmp_path, monkeypatch):
    calls = {}

    class FakeTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def train(self, dataset, **kwargs):
            calls.update(kwargs)

    monkeypatch.setattr(recipe, 'Trainer', FakeTrainer)
    args = recipe.parse_args(['--demo', '--seed', '0'])
    recipe.fill_defaults(args, recipe.DEMO)
    recipe.train_model('cpmobile', ['park', 'tram'], str(tmp_path / 'run'), list(range(64)), 5, 32, 1e-3, args,
                       {'model': 'cpmobile'})
    assert calls['epochs'] == 5 and calls['save_interval'] == 1
    assert (tmp_path / 'run' / 'final_model').is_dir()


# ----- the system description -----

def fake_result():
    """scene_metrics of 2 classes, 6 clips on devices a (seen) and s4 (unseen), with hand-known figures."""
    from paddle_soundcls.training.metrics import scene_metrics
    labels = [0, 0, 1, 1, 0, 1]
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.6, 0.4], [0.7, 0.3]])
    devices = ['a', 'a', 'a', 's4', 's4', 's4']
    return labels, scores, devices, scene_metrics(labels, scores, devices, seen_devices=['a'])


def test_system_description_holds_the_complexity_and_the_scores(recipe):
    from paddle_soundcls.analysis.complexity import complexity
    labels, scores, devices, result = fake_result()
    report = complexity('cpmobile', seconds=1)
    settings = {'sample_rate': 32000, 'augmentation': ['Freq-MixStyle'], 'pipeline': 'teacher -> student',
                'external_data': None, 'external_datasets': None}
    meta = recipe.system_description('Doe_LAB_task1_1', 'a test system', report, result, ['park', 'tram'], 61000,
                                     settings)
    meta = yaml.safe_load(yaml.safe_dump(meta))   # what the .meta.yaml file gives back
    # The blocks and fields the DCASE 2024 task 1 submission validator requires.
    assert {'label', 'name', 'abbreviation', 'authors'} <= set(meta['submission'])
    assert sum(bool(author.get('corresponding')) for author in meta['submission']['authors']) == 1
    assert {'description', 'complexity', 'energy_consumption', 'external_datasets', 'source_code'} <= \
        set(meta['system'])
    assert {'input_sampling_rate', 'acoustic_features', 'embeddings', 'data_augmentation', 'machine_learning_method',
            'ensemble_method_subsystem_count', 'decision_making', 'external_data_usage', 'complexity_management',
            'pipeline', 'framework'} <= set(meta['system']['description'])
    assert meta['system']['description']['input_sampling_rate'] == '32 kHz'
    complexity_block = meta['system']['complexity']
    assert {'total_model_size', 'total_parameters', 'total_parameters_non_zero', 'memory_use', 'macs'} <= \
        set(complexity_block)
    # The figures are the counter's: 61,138 parameters and 29,120,666 MACs for cpmobile with 10 classes.
    assert complexity_block['total_parameters'] == report['params']['total'] == 61_138
    assert complexity_block['macs'] == report['macs_per_second'] == 29_120_666
    # No int8 export kept: the float model scored the outputs, 4 bytes per parameter.
    assert complexity_block['total_model_size'] == pytest.approx(4 * 61_138 / 1000)
    assert complexity_block['scored_model'] == 'the float model'
    assert complexity_block['int8_export'] is None
    assert complexity_block['total_parameters_non_zero'] == 61000
    # Hand-counted: a gets clips 0 and 2 right (2/3), s4 clip 4 (1/3); park clips 0 and 4 (2/3), tram clip 2.
    dev = meta['results']['development_dataset']
    assert dev['device_wise']['a']['accuracy'] == pytest.approx(66.67)
    assert dev['device_wise']['s4']['accuracy'] == pytest.approx(33.33)
    assert dev['device_wise']['a']['logloss'] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.7)) / 3,
                                                               abs=1e-4)
    assert dev['class_wise']['park']['accuracy'] == pytest.approx(66.67)
    assert dev['class_wise']['tram']['accuracy'] == pytest.approx(33.33)
    assert dev['overall']['accuracy'] == pytest.approx(50.0)
    assert dev['overall']['macro_accuracy'] == pytest.approx(50.0)
    assert dev['seen_devices'] == pytest.approx(66.67) and dev['unseen_devices'] == pytest.approx(33.33)


def test_the_system_description_of_a_kept_int8_export(recipe):
    from paddle_soundcls.analysis.complexity import complexity
    labels, scores, devices, result = fake_result()
    settings = {'sample_rate': 32000, 'augmentation': [], 'pipeline': 'teacher -> student', 'external_data': None,
                'external_datasets': None}
    stored = {'bytes': {'int8': 60_000, 'float32': 4_000}, 'total_bytes': 64_000}
    meta = recipe.system_description('Doe_LAB_task1_1', 'a test system', complexity('cpmobile', seconds=1), result,
                                     ['park', 'tram'], 61000, settings, {'parameter_memory': stored},
                                     'the int8 export ckpt/export/model.int8.onnx')
    block = meta['system']['complexity']
    assert block['total_model_size'] == block['memory_use'] == 64.0
    assert block['scored_model'] == 'the int8 export ckpt/export/model.int8.onnx'
    assert block['int8_export']['budget'].startswith('within the DCASE task 1 budget')


def test_the_int8_bytes_are_checked_against_128000(recipe):
    assert recipe.int8_budget({'total_bytes': 128_000}) == 'within the DCASE task 1 budget (128,000 of 128,000 bytes)'
    assert recipe.int8_budget({'total_bytes': 128_001}).startswith('NOT within the DCASE task 1 budget: the int8 '
                                                                   'export stores 128,001 bytes, over 128,000')


def test_the_demo_impulse_responses_are_band_limits(recipe, tmp_path):
    from paddle_soundcls.training.augment import load_impulse_responses
    folder = recipe.write_demo_impulse_responses(str(tmp_path / 'irs'), sample_rate=32000, count=3)
    responses = load_impulse_responses(folder, 32000)
    assert len(responses) == 3
    for ir in responses:
        gain = np.abs(np.fft.rfft(ir, 32000))    # 1-Hz bins
        # Cut-offs 80-400 Hz and 3.8-9.6 kHz: 1 kHz passes, 20 Hz and 14 kHz are far down.
        assert gain[20] < 0.1 * gain[1000] and gain[14000] < 0.1 * gain[1000]


def test_the_comparison_says_plainly_what_happened(recipe):
    without = {'seen_acc': 0.8, 'unseen_acc': 0.5, 'macro_acc': 0.7}
    better = {'seen_acc': 0.78, 'unseen_acc': 0.6, 'macro_acc': 0.72}
    worse = {'seen_acc': 0.85, 'unseen_acc': 0.45, 'macro_acc': 0.7}
    assert 'narrowed the seen/unseen gap (30.00 points without, 18.00 with' in recipe.what_happened(without, better)
    assert 'went up by 10.00 points' in recipe.what_happened(without, better)
    assert 'did not narrow the seen/unseen gap (30.00 points without, 40.00 with' in \
        recipe.what_happened(without, worse)
    assert 'went down by 5.00 points' in recipe.what_happened(without, worse)
    # The size of the gap counts, whichever side is ahead: -1.67 -> -11.25 is no narrowing.
    ahead = {'seen_acc': 0.6833, 'unseen_acc': 0.70, 'macro_acc': 0.69}
    behind = {'seen_acc': 0.4625, 'unseen_acc': 0.575, 'macro_acc': 0.5}
    assert 'did not narrow' in recipe.what_happened(ahead, behind)
    table = recipe.comparison_table([('without', without), ('with', better)])
    assert '80.00' in table and '50.00' in table and '30.00' in table and '18.00' in table


# ----- the whole recipe -----

@pytest.mark.slow
def test_demo_runs_the_whole_recipe(tmp_path):
    from paddle_soundcls import load_module
    from paddle_soundcls.analysis.complexity import complexity
    home, ckpt = tmp_path / 'home', tmp_path / 'ckpt'
    env = {**os.environ, 'PADDLE_SOUNDCLS_HOME': str(home)}
    proc = subprocess.run([sys.executable, SCRIPT, '--demo', '--checkpoint-dir', str(ckpt)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # The per-device table, unseen devices marked, and the comparison of the two students.
    assert 'device    clips    acc %  macro %  log loss' in out
    for device in ('s4 *', 's5 *', 's6 *'):
        assert f'\n{device}' in out
    assert 'without device tools' in out and 'with device tools' in out
    assert 'the device tools narrowed' in out or 'the device tools did not narrow' in out
    assert 'within the DCASE task 1 budget' in out

    data = home / 'demo_tau22_task1'
    with open(data / 'split_setup' / 'test.csv', newline='') as f:
        test_clips = [row['filename'] for row in csv.DictReader(f, delimiter='\t')]
    with open(data / 'meta.csv', newline='') as f:
        scenes = sorted({row['scene_label'] for row in csv.DictReader(f, delimiter='\t')})
    rows = read_table(ckpt / 'Soundcls_PSC_task1_1.output.split_100.csv')
    assert rows[0] == ['filename', 'scene_label'] + scenes
    assert sorted(row[0] for row in rows[1:]) == sorted(os.path.basename(name) for name in test_clips)
    scores = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert [row[1] for row in rows[1:]] == [scenes[i] for i in scores.argmax(axis=1)]

    with open(ckpt / 'Soundcls_PSC_task1_1.meta.yaml', encoding='utf-8') as f:
        meta = yaml.safe_load(f)
    with open(ckpt / 'summary.json', encoding='utf-8') as f:
        summary = json.load(f)
    student = load_module(summary['student[with device tools]']['checkpoint'])
    report = complexity(student, seconds=1)
    figures = meta['system']['complexity']
    assert figures['total_parameters'] == report['params']['total']
    assert figures['macs'] == report['macs_per_second']
    # The model size is what the int8 export stores, counted from its file; within DCASE's 128 kB.
    from paddle_soundcls.export.quantize import parameter_memory
    stored = parameter_memory(ckpt / 'export' / 'model.int8.onnx')
    assert figures['total_model_size'] == stored['total_bytes'] / 1000 <= 128
    assert figures['scored_model'] == summary['submission_scored_by'] == \
        f"the int8 export {ckpt / 'export' / 'model.int8.onnx'}"
    assert summary['int8']['budget'].startswith('within the DCASE task 1 budget')
    assert figures['int8_export']['bytes'] == stored['bytes'] == summary['int8']['parameter_memory']['bytes']
    assert report['params']['total'] * 0.9 < stored['bytes']['int8'] <= report['params']['total']
    assert sorted(meta['results']['development_dataset']['device_wise']) == \
        ['a', 'b', 'c', 's1', 's2', 's3', 's4', 's5', 's6']
    assert summary['student[with device tools]']['domain_adversarial'] > 0
    assert summary['student[without device tools]']['domain_adversarial'] == 0
    for folder in ('teacher_cpresnet', 'student_plain', 'student_device_tools'):
        assert (ckpt / folder / 'final_model' / 'meta.json').is_file()
