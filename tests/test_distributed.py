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
    # Only rank 0 wrote checkpoints (and the frozen backbone, once) and VisualDL logs; no stray
    # temporary directories.
    two = tmp_path / 'two'
    assert sorted(os.listdir(two)) == ['backbones', 'epoch_1', 'epoch_2', 'visualization']
    assert len(os.listdir(two / 'backbones')) == 1
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


def write_strong_clips(root, count):
    """`count` 1.5-s clips of quiet noise with a chirp at a known time each, and their events.csv."""
    import csv

    import soundfile as sf
    from signals import chirp, noise
    root.mkdir()
    rows = []
    for i in range(count):
        wave = noise(1.5, amp=0.01, seed=40 + i)
        onset = 0.1 + 0.1 * i
        wave[int(onset * 32000):int((onset + 0.5) * 32000)] += chirp(800, 3000, 0.5, amp=0.4)
        sf.write(root / f'{i}.wav', wave, 32000)
        rows.append({'filename': f'{i}.wav', 'onset': onset, 'offset': onset + 0.5, 'label': 'chirp'})
    with open(root / 'events.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, ['filename', 'onset', 'offset', 'label'])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_strong_label_training_synchronises_the_processes(tmp_path):
    """Training on event times goes through the data-parallel wrapper like every other mode: two
    processes end with the same weights, those of one process with the doubled batch."""
    from paddle_soundcls import Module
    data = write_strong_clips(tmp_path / 'data', 8)
    Module('cpmobile', label_map=['chirp', 'siren'], multi_label=True, pooling='max', pretrained=False,
           seed=0).save(str(tmp_path / 'init'))
    common = ['--data', str(data), '--init', str(tmp_path / 'init'), '--strong']
    run([sys.executable, SCRIPT, *common, '--ckpt', str(tmp_path / 'one'), '--batch-size', '4',
         '--out', str(tmp_path / 'one')], tmp_path)
    run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2', '--log_dir',
         str(tmp_path / 'launch_logs'), SCRIPT, *common, '--ckpt', str(tmp_path / 'two'), '--batch-size', '2',
         '--out', str(tmp_path / 'two')], tmp_path)
    one = np.load(tmp_path / 'one.rank0.npz')
    ranks = [np.load(tmp_path / f'two.rank{r}.npz') for r in (0, 1)]
    start = Module('cpmobile', load_checkpoint=str(tmp_path / 'init'))
    keys = [name for name, _ in start.named_parameters()]
    assert int(ranks[0]['world_size']) == 2 and keys and set(keys) <= set(one.files)
    moved = 0
    for key in keys:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)   # ranks stay in sync
        np.testing.assert_allclose(ranks[0][key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)  # = 1 process
        moved += not np.allclose(one[key], dict(start.named_parameters())[key].numpy())
    assert moved > len(keys) // 2   # the backbone trained, not only the head
