"""Training killed (SIGKILL), out of disk space or hit by a NaN loss: at most the work since the
last checkpoint is lost, saved checkpoints stay intact, and running again ends exactly where
an uninterrupted run ends.

Every run is a child process (train_child.py): CNN6 on 8 generated clips, 2 steps per epoch,
2 epochs, keep_last=1, best_model by eval loss (which improves in both epochs, so both
epochs write best_model). Faults hit epoch 2 (steps 3-4); its save writes best_model, then
epoch_2, then removes epoch_1.
"""
import json
import os

import numpy as np
import pytest

from faultkit import HERE, kill_at_marker, run_child, tree

CHILD = os.path.join(HERE, 'train_child.py')
EPOCHS = 2


def train(data, ckpt, out, fault=None):
    result = run_child([CHILD, data, str(ckpt), str(out), '--epochs', str(EPOCHS)], fault=fault, timeout=600)
    return result


def outputs(out):
    with open(os.path.join(out, 'result.json')) as f:
        state = json.load(f)
    with open(os.path.join(out, 'snapshots.json')) as f:
        snapshots = {int(k): v for k, v in json.load(f).items()}
    with np.load(os.path.join(out, 'weights.npz')) as w:
        weights = dict(w)
    return state, snapshots, weights


@pytest.fixture(scope='session')
def reference(train_data, tmp_path_factory):
    """The uninterrupted run: its state, its checkpoint files after each epoch and at the end, its weights."""
    base = tmp_path_factory.mktemp('reference')
    result = train(train_data, base / 'ckpt', base / 'out')
    assert result.returncode == 0, result.stderr[-3000:]
    state, snapshots, weights = outputs(base / 'out')
    # The premise of the cases below: both epochs improve best_model, and epoch 2 removes epoch_1.
    assert [state['best_epoch'], sorted(snapshots)] == [2, [1, 2]]
    assert sorted(tree(base / 'ckpt')) == sorted(snapshots[2])
    assert any(name.startswith('epoch_1/') for name in snapshots[1])
    return {'state': state, 'snapshots': snapshots, 'weights': weights, 'tree': tree(base / 'ckpt')}


def part(files, directory):
    """The entries of a {path: sha256} tree under `directory`/."""
    return {k: v for k, v in files.items() if k.startswith(directory + '/')}


def check_survivors(ckpt, reference):
    """After a crash in epoch 2: every checkpoint directory is a complete copy from the reference run."""
    files = tree(ckpt)
    snapshots = reference['snapshots']
    visible = {name.split('/')[0] for name in files if not name.startswith('.')}
    assert visible <= {'epoch_1', 'epoch_2', 'best_model'}, sorted(visible)
    assert part(files, 'epoch_1') == part(snapshots[1], 'epoch_1')  # the last complete epoch, intact
    if 'epoch_2' in visible:  # only once complete (its save ended)
        assert part(files, 'epoch_2') == part(snapshots[2], 'epoch_2')
    best = part(files, 'best_model')
    assert best in (part(snapshots[1], 'best_model'), part(snapshots[2], 'best_model')), 'best_model is a mixture'


def check_resumed(train_data, ckpt, out, reference):
    """Run again: it resumes and ends with the reference's history, weights and checkpoint files."""
    result = train(train_data, ckpt, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resuming from' in result.stderr
    state, _, weights = outputs(out)
    assert state['history'] == reference['state']['history']
    assert state['best_metric'] == reference['state']['best_metric']
    assert sorted(weights) == sorted(reference['weights'])
    for key, value in weights.items():
        np.testing.assert_array_equal(value, reference['weights'][key], err_msg=key)
    # The same files, byte for byte, and nothing else: no temporary copies, no half-deleted epochs.
    assert tree(ckpt) == reference['tree']


# (point, which time it is reached): best_model is written in both epochs, the rest once.
KILL_POINTS = [
    pytest.param('step:4', 1, id='mid-epoch'),
    pytest.param('save:epoch_2/model.pdparams', 1, id='epoch-params-half-written'),
    pytest.param('write:epoch_2/trainer.json', 1, id='epoch-written-but-trainer-json'),
    pytest.param('swapped:best_model', 1, id='best-model-swapped-old-not-removed'),
    pytest.param('built:best_model', 2, id='best-model-built-not-swapped', marks=pytest.mark.slow),
    pytest.param('save:best_model/model.pdparams', 2, id='best-model-params-half-written', marks=pytest.mark.slow),
    pytest.param('write:best_model/metrics.json', 2, id='best-model-metrics', marks=pytest.mark.slow),
    pytest.param('save:epoch_2/model.pdopt', 1, id='optimizer-state-half-written', marks=pytest.mark.slow),
    pytest.param('built:epoch_2', 1, id='epoch-built-not-swapped', marks=pytest.mark.slow),
    pytest.param('step:3', 1, id='first-step-of-epoch', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('point, nth', KILL_POINTS)
def test_sigkill_then_resume_matches_uninterrupted_run(train_data, reference, tmp_path, point, nth):
    ckpt = tmp_path / 'ckpt'
    kill_at_marker([CHILD, train_data, str(ckpt), str(tmp_path / 'killed'), '--epochs', str(EPOCHS)],
                   {'at': point, 'action': 'kill', 'nth': nth}, timeout=600)
    check_survivors(ckpt, reference)
    check_resumed(train_data, ckpt, tmp_path / 'out', reference)


def test_sigkill_while_removing_an_old_epoch(train_data, reference, tmp_path):
    ckpt = tmp_path / 'ckpt'
    kill_at_marker([CHILD, train_data, str(ckpt), str(tmp_path / 'killed'), '--epochs', str(EPOCHS)],
                   {'at': 'prune:epoch_1', 'action': 'kill'}, timeout=600)
    # epoch_2 is complete; epoch_1 lost its trainer.json and nothing else yet.
    assert part(tree(ckpt), 'epoch_2') == part(reference['snapshots'][2], 'epoch_2')
    train(train_data, ckpt, tmp_path / 'again')  # nothing left to train
    assert tree(ckpt) == reference['tree']


@pytest.fixture(scope='module')
def disk_full(train_data, tmp_path_factory):
    """A run whose disk fills up half-way through writing epoch 2's optimizer state."""
    base = tmp_path_factory.mktemp('disk_full')
    ckpt = base / 'ckpt'
    result = train(train_data, ckpt, base / 'full', {'at': 'save:epoch_2/model.pdopt', 'action': 'enospc'})
    return result, ckpt, tree(ckpt), base


def test_disk_full_keeps_the_last_checkpoint_and_resumes(disk_full, train_data, reference):
    result, ckpt, files_after, base = disk_full
    assert result.returncode != 0
    assert 'No space left on device' in result.stderr
    # best_model of epoch 2 was written before the disk filled; epoch_2 was not, and left nothing behind.
    assert sorted({name.split('/')[0] for name in files_after}) == ['best_model', 'epoch_1']
    assert part(files_after, 'epoch_1') == part(reference['snapshots'][1], 'epoch_1')
    check_resumed(train_data, ckpt, base / 'out', reference)


def test_disk_full_message_names_the_checkpoint_and_what_to_do(disk_full):
    result, ckpt, _, _ = disk_full
    last_line = result.stderr.strip().splitlines()[-1]
    assert 'No space left on device' in last_line
    assert os.path.join(str(ckpt), 'epoch_2') in last_line and 'epoch_1' in last_line and 'run again' in last_line


def test_nan_loss_stops_with_a_message_and_resume_matches(train_data, reference, tmp_path):
    ckpt = tmp_path / 'ckpt'
    result = train(train_data, ckpt, tmp_path / 'nan', {'at': 'step:4', 'action': 'nan'})
    assert result.returncode != 0
    assert 'FloatingPointError: the training loss became nan at epoch 2, step 2' in result.stderr
    assert str(ckpt) in result.stderr and 'run again' in result.stderr
    files = tree(ckpt)
    assert sorted({name.split('/')[0] for name in files}) == ['best_model', 'epoch_1']
    assert part(files, 'epoch_1') == part(reference['snapshots'][1], 'epoch_1')
    assert part(files, 'best_model') == part(reference['snapshots'][1], 'best_model')
    check_resumed(train_data, ckpt, tmp_path / 'out', reference)
