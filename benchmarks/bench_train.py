"""Training speed: clips/s of full fine-tuning for float32 and each mixed precision the device
supports, of the data pipeline alone (dataset + loader), and the training loss after N steps
for each precision (mixed precision must train, not only run fast). Prints figures (JSON with
--json); asserts nothing.

    python benchmarks/bench_train.py --json --model panns_cnn6 --batch-size 8 --steps 20

The data are generated 5-s clips written as WAV files at 44.1 kHz (so the loader decodes and
resamples, as with real data); the model starts from random weights, the same for every
precision (speed does not depend on them).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402
import soundfile as sf  # noqa: E402

from paddle_soundcls import Module, Trainer  # noqa: E402
from paddle_soundcls.cli import silence_third_party_noise  # noqa: E402
from paddle_soundcls.datasets import AudioFolder  # noqa: E402
from paddle_soundcls.export.benchmark import machine_info  # noqa: E402


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


def train_speed(name, dataset, batch_size, steps, amp, work):
    model = Module(name, label_map=dataset.labels, pretrained=False, seed=0)
    trainer = Trainer(model, paddle.optimizer.Adam(learning_rate=1e-4, parameters=model.parameters()),
                      checkpoint_dir=os.path.join(work, f'ckpt_{amp}'), use_vdl=False, seed=0, amp=amp)
    subset = AudioFolder(dataset.root, mode='train', duration=dataset.duration)
    subset.items = subset.items[:steps * batch_size]   # one epoch of `steps` batches
    start = time.perf_counter()
    state = trainer.train(subset, epochs=1, batch_size=batch_size, log_interval=10 ** 6)
    wall = time.perf_counter() - start
    return {'clips_per_s': round(len(subset) / wall, 3), 'steps': steps, 'loss_after_steps':
            round(state['history'][-1]['train']['loss'], 5), 'wall_s': round(wall, 1)}


def main(argv=None):
    silence_third_party_noise()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='panns_cnn6')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=20, help='optimizer steps per precision (default 20)')
    p.add_argument('--seconds', type=float, default=5.0)
    p.add_argument('--num-workers', type=int, default=0, help='loader worker processes (the Trainer default 0)')
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    precisions = [None] + (['bf16'] if paddle.amp.is_bfloat16_supported() else []) + (
        ['fp16'] if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() else [])
    with tempfile.TemporaryDirectory() as work:
        folder = make_data(os.path.join(work, 'data'), args.steps * args.batch_size, args.seconds)
        dataset = AudioFolder(folder, mode='train', duration=args.seconds)
        result = {'loader_clips_per_s': loader_speed(dataset, args.batch_size, args.steps, args.num_workers)}
        for amp in precisions:
            result[amp or 'fp32'] = train_speed(args.model, dataset, args.batch_size, args.steps, amp, work)
    result['loader_vs_network'] = round(result['loader_clips_per_s'] / result['fp32']['clips_per_s'], 2)
    result['setup'] = {'model': args.model, 'batch_size': args.batch_size, 'seconds': args.seconds,
                       'data': '44.1 kHz WAV files, decoded and resampled to 32 kHz by the loader',
                       'num_workers': args.num_workers, 'machine': machine_info()}
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
