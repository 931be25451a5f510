"""Training speed: clips/s of full fine-tuning for float32 with every CPU (the Trainer's default)
and with one thread (Paddle's own default), for each mixed precision the device runs, of the
data pipeline alone (dataset + loader, decoding every epoch and from the waveform cache), and
the training loss after N steps for each setting (mixed precision must train, not only run
fast). Prints figures (JSON with --json); asserts nothing.

    python benchmarks/bench_train.py --json --model panns_cnn6 --batch-size 8 --steps 20

The data are generated 5-s clips written as WAV files at 44.1 kHz (so the loader decodes and
resamples, as with real data); the model starts from random weights, the same for every
precision (speed does not depend on them).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.scripts import silence_third_party_noise  # noqa: E402

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

import paddle  # noqa: E402
import soundfile as sf  # noqa: E402

from paddle_soundcls import Module, Trainer  # noqa: E402
from paddle_soundcls.datasets import AudioFolder  # noqa: E402
from paddle_soundcls.device import cpu_threads, enable_mkl_avx2_on_amd  # noqa: E402
from paddle_soundcls.analysis.benchmark import machine_info  # noqa: E402
from paddle_soundcls.training.trainer import bf16_autocast_works  # noqa: E402


def make_data(folder, clips, seconds, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    sr = 44100
    t = np.arange(int(seconds * sr)) / sr
    for i in range(clips):
        label = i % classes
        wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * label) * t) + 0.05 * rng.standard_normal(len(t))
        os.makedirs(os.path.join(folder, f'class{label}'), exist_ok=True)
        sf.write(os.path.join(folder, f'class{label}', f'{i:04d}.wav'), wave.astype(np.float32), sr)
    return folder


def loader_speed(dataset, batch_size, steps, num_workers):
    loader = paddle.io.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                  return_list=True)
    start, seen = time.perf_counter(), 0
    for step, (waves, _) in enumerate(loader, start=1):
        seen += waves.shape[0]
        if step == steps:
            break
    return round(seen / (time.perf_counter() - start), 2)


def cached_loader_speed(folder, seconds, batch_size, steps, num_workers):
    """The loader over AudioFolder(cache=True) in its second epoch: every clip read from the cache."""
    dataset = AudioFolder(folder, mode='train', duration=seconds, cache=True)
    loader_speed(dataset, batch_size, steps, num_workers)   # the first epoch fills the cache
    dataset.set_epoch(1)
    return loader_speed(dataset, batch_size, steps, num_workers)


def train_speed(name, folder, seconds, batch_size, steps, amp, work, num_workers, num_threads=None, cache=False):
    """Full fine-tuning in the Trainer for one epoch of `steps` batches: clips/s in the steady state
    (from the end of the first step, which prepares kernels, to the end of the last), the wall time
    of the whole epoch, and the training loss."""
    dataset = AudioFolder(folder, mode='train', duration=seconds, cache=cache)
    dataset.items = dataset.items[:steps * batch_size]
    model = Module(name, label_map=dataset.labels, pretrained=False, seed=0)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-4, parameters=model.parameters())
    ends, step = [], optimizer.step

    def timed_step():
        step()
        ends.append(time.perf_counter())

    optimizer.step = timed_step
    trainer = Trainer(model, optimizer, checkpoint_dir=os.path.join(work, f'ckpt_{amp}_{num_threads}_{cache}'),
                      use_vdl=False, seed=0, amp=amp, num_threads=num_threads)
    start = time.perf_counter()
    state = trainer.train(dataset, epochs=1, batch_size=batch_size, num_workers=num_workers, log_interval=10 ** 6)
    wall = time.perf_counter() - start
    return {'clips_per_s': round((len(ends) - 1) * batch_size / (ends[-1] - ends[0]), 3), 'steps': steps,
            'loss_after_steps': round(state['history'][-1]['train']['loss'], 5), 'wall_s': round(wall, 1)}


def torch_baseline(args):
    """The same training steps in PyTorch eager, run by another interpreter (see torch_cnn14_train.py)."""
    if args.model != 'panns_cnn14':
        return {'skipped': 'the PyTorch baseline is CNN14 only'}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_cnn14_train.py')
    # As many threads as the Trainer uses (importing Paddle set OMP_NUM_THREADS=1 in this environment).
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    proc = subprocess.run([args.torch_python, script, '--batch-size', str(args.batch_size), '--seconds',
                           str(args.seconds), '--steps', str(args.steps), '--threads', str(cpu_threads())],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        return {'error': proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='panns_cnn6')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=20, help='optimizer steps per precision (default 20)')
    p.add_argument('--seconds', type=float, default=5.0)
    p.add_argument('--num-workers', type=int, default=0, help='loader worker processes, for the loader and the training runs (the Trainer default 0)')
    p.add_argument('--torch-python', metavar='PYTHON',
                   help='with --model panns_cnn14: also run the PyTorch eager baseline (torch_cnn14_train.py) '
                        'with this Python interpreter, which must have torch')
    p.add_argument('--no-mkl-avx2', action='store_true',
                   help="leave MKL's kernel choice alone on AMD CPUs (see device.enable_mkl_avx2_on_amd)")
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    mkl_avx2 = False if args.no_mkl_avx2 else enable_mkl_avx2_on_amd()   # as the example does, before any work
    gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    precisions = [None] + (['bf16'] if paddle.amp.is_bfloat16_supported() and bf16_autocast_works() else []) + (
        ['fp16'] if gpu else [])
    with tempfile.TemporaryDirectory() as work:
        os.environ['PADDLE_SOUNDCLS_HOME'] = os.path.join(work, 'home')   # a fresh waveform cache
        folder = make_data(os.path.join(work, 'data'), args.steps * args.batch_size, args.seconds)
        dataset = AudioFolder(folder, mode='train', duration=args.seconds)
        result = {'loader_clips_per_s': loader_speed(dataset, args.batch_size, args.steps, args.num_workers),
                  'loader_cached_clips_per_s': cached_loader_speed(folder, args.seconds, args.batch_size, args.steps,
                                                                   args.num_workers)}
        run = dict(name=args.model, folder=folder, seconds=args.seconds, batch_size=args.batch_size,
                   steps=args.steps, work=work, num_workers=args.num_workers)
        for amp in precisions:
            result[amp or 'fp32'] = train_speed(amp=amp, **run)
        result['fp32_waveform_cache'] = train_speed(amp=None, cache=True, **run)
        if not gpu and cpu_threads() > 1:
            result['fp32_1_thread'] = train_speed(amp=None, num_threads=1, **run)
    if args.torch_python:
        result['pytorch_eager'] = torch_baseline(args)
    result['loader_vs_network'] = round(result['loader_clips_per_s'] / result['fp32']['clips_per_s'], 2)
    result['setup'] = {'model': args.model, 'batch_size': args.batch_size, 'seconds': args.seconds,
                       'data': '44.1 kHz WAV files, decoded and resampled to 32 kHz by the loader',
                       'num_workers': args.num_workers, 'cpu_threads': cpu_threads(), 'mkl_avx2_on_amd': mkl_avx2,
                       'machine': machine_info()}
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
