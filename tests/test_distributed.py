"""Data-parallel training: 2 processes (paddle.distributed.launch, CPU) train the same model
as 1 process with the doubled batch, and only rank 0 writes checkpoints and logs."""
import os
import subprocess
import sys

import numpy as np

from helpers import small_module
from test_trainer import make_folder

SCRIPT = os.path.join(os.path.dirname(__file__), 'dist_train_script.py')


def run(cmd, tmp_path):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([os.getcwd(), os.environ.get('PYTHONPATH', '')])}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_processes_match_one_with_double_batch(tmp_path):
    data = make_folder(tmp_path / 'data', 8, seed=3)
    small_module(label_map=['hiss', 'tone']).save(str(tmp_path / 'init'))
    common = ['--data', str(data), '--init', str(tmp_path / 'init')]
    run([sys.executable, SCRIPT, *common, '--ckpt', str(tmp_path / 'one'), '--batch-size', '4',
         '--out', str(tmp_path / 'one')], tmp_path)
    run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
         str(tmp_path / 'launch_logs'), SCRIPT, *common, '--ckpt', str(tmp_path / 'two'), '--batch-size', '2',
         '--out', str(tmp_path / 'two')], tmp_path)
    one = np.load(tmp_path / 'one.rank0.npz')
    ranks = [np.load(tmp_path / f'two.rank{r}.npz') for r in (0, 1)]
    assert int(ranks[0]['world_size']) == 2 and int(one['world_size']) == 1
    for key in ('fc.weight', 'fc.bias'):
        np.testing.assert_allclose(ranks[0][key], ranks[1][key], rtol=0, atol=0)   # ranks stay in sync
        np.testing.assert_allclose(ranks[0][key], one[key], rtol=1e-5, atol=1e-6)  # same as 1 process
    # Only rank 0 wrote checkpoints and VisualDL logs; no stray temporary directories.
    two = tmp_path / 'two'
    assert sorted(os.listdir(two)) == ['epoch_1', 'epoch_2', 'visualization']
    assert len(os.listdir(two / 'visualization')) == 1


def test_full_fine_tuning_of_a_classifier_runs_data_parallel(tmp_path):
    """Backbone not frozen: every parameter of a 'sound-cls' model takes part (no unused AudioSet
    head to trip the data-parallel wrapper), and the two processes stay in step."""
    data = make_folder(tmp_path / 'data', 4, seed=5)
    start = small_module(label_map=['hiss', 'tone'])
    start.save(str(tmp_path / 'init'))
    run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
         str(tmp_path / 'launch_logs'), SCRIPT, '--data', str(data), '--init', str(tmp_path / 'init'), '--ckpt',
         str(tmp_path / 'full'), '--batch-size', '2', '--out', str(tmp_path / 'full'), '--full'], tmp_path)
    ranks = [np.load(tmp_path / f'full.rank{r}.npz') for r in (0, 1)]
    for key in ('fc.weight', 'backbone.conv_block1.conv1.weight', 'backbone.fc1.weight'):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
    assert not np.allclose(ranks[0]['backbone.conv_block1.conv1.weight'],
                           start.backbone.conv_block1.conv1.weight.numpy())   # the backbone trained too
