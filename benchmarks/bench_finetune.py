"""CPU fine-tuning speed: frozen backbone with cached embeddings vs full fine-tuning, in one run.

    python benchmarks/bench_finetune.py --json                       # ESC-50 size: 2,000 clips of 5 s, 50 classes
    python benchmarks/bench_finetune.py --clips 200 --json           # a quick check

Generates an ESC-50-sized set in the ESC-50 layout (44.1 kHz 16-bit WAV files; fold 1 is the dev
set; each class is a kind of sound (steady tone, tremolo, beeps, band of noise, chirp) at one
of ten pitches, varied at random per clip), not timed. Then measures:

    frozen_wall_s          Trainer(freeze_backbone=True) end to end with an empty cache: loading the
                           checkpoint, exporting the backbone, embedding every clip, `--epochs` head
                           epochs, the evaluation and the checkpoint writes
    frozen_embed_s         the part of frozen_wall_s spent computing embeddings (incl. the export)
    frozen_cached_wall_s   the same run again with the embeddings in the cache
    dev_acc                dev accuracy after the frozen run
    full_finetune_clips_per_s  full fine-tuning (Paddle dygraph) in the Trainer, steady state over
                           `--full-steps` batches (the first batch is a warm-up and not counted)
    documented_command_*   the README's command itself, `examples/esc50/train.py --data-dir DIR
                           --freeze-backbone --epochs N --no-pretrained`, run twice in a subprocess
                           (first with an empty embedding cache, then with it in place): wall
                           seconds of each and the megabytes it leaves in its checkpoint folder
                           (it saves every epoch, as the example does; the Trainer runs above save
                           once)

No pretrained weights are available offline, so the backbone has random weights (with BatchNorm
statistics taken from the data, as a trained network has them). The speeds do not depend on the
weights; dev_acc does, and is far below what the AudioSet weights give on real data.
Prints figures; asserts nothing.
"""
import argparse
import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.scripts import silence_third_party_noise  # noqa: E402

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

import paddle  # noqa: E402

from paddle_soundcls import Module, Trainer  # noqa: E402
from paddle_soundcls.datasets import ESC50  # noqa: E402
from paddle_soundcls.deploy.engines import cpu_count  # noqa: E402
from paddle_soundcls.device import cpu_threads, enable_mkl_avx2_on_amd  # noqa: E402
from paddle_soundcls.training import embeddings  # noqa: E402

SAMPLE_RATE = 44100  # the rate of the ESC-50 files
KINDS = ('tone', 'tremolo', 'beeps', 'noise_band', 'chirp')
PITCHES = 10
FOLDS = 5


def make_clip(target, seconds, rng):
    """One clip of class `target`: a sound of kind target % 5 around 200 Hz * 2 ** (0.45 * (target // 5)),
    lasting 40-100% of the clip at a random place, at a random level, over background noise."""
    kind, pitch = KINDS[target % len(KINDS)], (target // len(KINDS)) % PITCHES
    n = int(round(seconds * SAMPLE_RATE))
    length = int(n * rng.uniform(0.4, 1.0))
    t = np.arange(length) / SAMPLE_RATE
    f0 = 200.0 * 2 ** (0.45 * pitch) * rng.uniform(0.97, 1.03)
    if kind == 'tone':
        sound = np.sin(2 * np.pi * f0 * t)
    elif kind == 'tremolo':
        sound = np.sin(2 * np.pi * f0 * t) * (0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(4, 6) * t))
    elif kind == 'beeps':
        sound = np.sin(2 * np.pi * f0 * t) * ((t * rng.uniform(2.5, 3.5)) % 1.0 < 0.3)
    elif kind == 'noise_band':
        spectrum = np.fft.rfft(rng.standard_normal(length))
        freqs = np.fft.rfftfreq(length, 1.0 / SAMPLE_RATE)
        spectrum[np.abs(np.log2(np.maximum(freqs, 1.0) / f0)) > 0.25] = 0  # half an octave around f0
        sound = np.fft.irfft(spectrum, length)
    else:  # an upward chirp over half an octave, repeated every second
        sound = np.sin(2 * np.pi * f0 * (t + 0.2 * (t % 1.0) ** 2))
    sound *= rng.uniform(0.1, 0.5) / (np.abs(sound).max() + 1e-9)
    wave = rng.uniform(0.002, 0.02) * rng.standard_normal(n)
    start = int(rng.integers(0, n - length + 1))
    wave[start:start + length] += sound
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def make_dataset(root, clips, classes, seconds):
    """Write `clips` clips in `classes` classes in the ESC-50 layout (reused when already complete)."""
    params = {'clips': clips, 'classes': classes, 'seconds': seconds, 'sample_rate': SAMPLE_RATE, 'version': 1}
    marker = os.path.join(root, 'meta', 'bench.json')
    if os.path.isfile(marker):
        with open(marker, encoding='utf-8') as f:
            if json.load(f) == params:
                return root
    os.makedirs(os.path.join(root, 'audio'), exist_ok=True)
    os.makedirs(os.path.join(root, 'meta'), exist_ok=True)
    rows = []
    for i in range(clips):
        target, take = i % classes, i // classes
        fold = take % FOLDS + 1
        name = f'{fold}-{100000 + i}-A-{target}.wav'
        rng = np.random.default_rng((target, take))
        sf.write(os.path.join(root, 'audio', name), make_clip(target, seconds, rng), SAMPLE_RATE, subtype='PCM_16')
        rows.append([name, fold, target, f'{KINDS[target % len(KINDS)]}_{target // len(KINDS)}', 'False', i, 'A'])
    with open(os.path.join(root, 'meta', 'esc50.csv'), 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['filename', 'fold', 'target', 'category', 'esc10', 'src_file', 'take'])
        writer.writerows(rows)
    with open(marker, 'w', encoding='utf-8') as f:
        json.dump(params, f)
    return root


def initial_checkpoint(model_name, train_set, directory, clips=16):
    """Random weights with BatchNorm running statistics from `clips` training clips, saved as a checkpoint."""
    paddle.seed(0)
    model = Module(model_name, label_map=train_set.labels, pretrained=False)
    norms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    momenta = [layer._momentum for layer in norms]
    for layer in norms:
        layer._momentum = 0.0  # the statistics of this one batch replace the initial ones
    model.train()
    with paddle.no_grad():
        step = max(1, len(train_set) // clips)
        waves = np.stack([train_set[i][0] for i in range(0, len(train_set), step)][:clips])
        model(model.frontend(paddle.to_tensor(waves)))
    for layer, momentum in zip(norms, momenta):
        layer._momentum = momentum
    model.eval()
    return model.save(directory)


def frozen_run(args, init, train_set, dev_set, cache, ckpt):
    """Time one frozen-backbone fine-tuning; return (wall s, embedding s, dev accuracy)."""
    embed_seconds = []
    real = embeddings.embed_dataset

    def timed(*a, **kw):
        start = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            embed_seconds.append(time.perf_counter() - start)

    embeddings.embed_dataset = timed
    try:
        start = time.perf_counter()
        model = Module(args.model, load_checkpoint=init)
        optimizer = paddle.optimizer.Adam(learning_rate=args.learning_rate, parameters=model.parameters())
        trainer = Trainer(model, optimizer, checkpoint_dir=ckpt, use_vdl=False, freeze_backbone=True,
                          embedding_cache=cache, seed=0)
        state = trainer.train(train_set, epochs=args.epochs, batch_size=args.batch_size, eval_dataset=dev_set,
                              save_interval=args.epochs)
        wall = time.perf_counter() - start
    finally:
        embeddings.embed_dataset = real
    return wall, sum(embed_seconds), state['best_metric']


def full_finetune_speed(args, init, train_set, ckpt):
    """Clips/s of full fine-tuning in the Trainer, between the end of the first and of the last step."""
    subset = copy.copy(train_set)
    subset.items = train_set.items[:args.full_steps * args.full_batch_size]
    model = Module(args.model, load_checkpoint=init)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-4, parameters=model.parameters())
    ends = []
    step = optimizer.step

    def timed_step():
        step()
        ends.append(time.perf_counter())

    optimizer.step = timed_step
    Trainer(model, optimizer, checkpoint_dir=ckpt, use_vdl=False).train(subset, epochs=1,
                                                                        batch_size=args.full_batch_size)
    return (len(ends) - 1) * args.full_batch_size / (ends[-1] - ends[0])


def folder_megabytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1e6


def documented_command(args, data_dir, work):
    """Wall seconds of the README's frozen-backbone command, with an empty and then a filled embedding
    cache, and the megabytes its checkpoint folder holds after the second run."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples', 'esc50', 'train.py')
    env = dict(os.environ, PADDLE_SOUNDCLS_HOME=os.path.join(work, 'home'))
    seconds = []
    for run_name in ('empty_cache', 'cached'):
        ckpt = os.path.join(work, f'documented_{run_name}')
        command = [sys.executable, script, '--data-dir', data_dir, '--model', args.model, '--freeze-backbone',
                   '--epochs', str(args.epochs), '--no-pretrained', '--duration', str(args.seconds),
                   '--checkpoint-dir', ckpt]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return {'documented_command': ' '.join(['train.py'] + command[2:]),
            'documented_command_empty_cache_s': round(seconds[0], 1),
            'documented_command_cached_s': round(seconds[1], 1),
            'documented_command_ckpt_mb': round(folder_megabytes(ckpt), 1)}


def run(args):
    work = tempfile.mkdtemp(prefix='bench_finetune.')
    try:
        data_dir = make_dataset(args.data_dir or os.path.join(work, 'data'), args.clips, args.classes, args.seconds)
        train_set = ESC50(mode='train', split=1, data_dir=data_dir, duration=args.seconds)
        dev_set = ESC50(mode='dev', split=1, data_dir=data_dir, duration=args.seconds)
        init = initial_checkpoint(args.model, train_set, os.path.join(work, 'init'))
        cache = os.path.join(work, 'embeddings')
        wall, embed, acc = frozen_run(args, init, train_set, dev_set, cache, os.path.join(work, 'frozen1'))
        cached_wall, cached_embed, cached_acc = frozen_run(args, init, train_set, dev_set, cache,
                                                           os.path.join(work, 'frozen2'))
        result = {
            'model': args.model, 'weights': 'random (no pretrained weights offline); BatchNorm statistics from 16 '
                                            'training clips', 'cpus': cpu_count(),
            'cpu_threads': cpu_threads(), 'mkl_avx2_on_amd': args.mkl_avx2,
            'clips': args.clips, 'train_clips': len(train_set), 'dev_clips': len(dev_set), 'classes': args.classes,
            'seconds': args.seconds, 'sample_rate': SAMPLE_RATE, 'epochs': args.epochs, 'batch_size': args.batch_size,
            'frozen_wall_s': round(wall, 1), 'frozen_embed_s': round(embed, 1),
            'frozen_embed_clips_per_s': round((len(train_set) + len(dev_set)) / embed, 2),
            'frozen_cached_wall_s': round(cached_wall, 1), 'frozen_cached_embed_s': round(cached_embed, 1),
            'dev_acc': round(acc, 4), 'dev_acc_cached_run': round(cached_acc, 4),
        }
        if args.full_steps > 1:
            result['full_finetune_clips_per_s'] = round(full_finetune_speed(args, init, train_set,
                                                                            os.path.join(work, 'full')), 3)
            result['full_finetune_batch_size'] = args.full_batch_size
            result['full_finetune_steps_timed'] = args.full_steps - 1
        if not args.skip_documented_command:
            result.update(documented_command(args, data_dir, work))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='panns_cnn14')
    p.add_argument('--clips', type=int, default=2000, help='clips in all (a fifth of them is the dev set)')
    p.add_argument('--classes', type=int, default=50)
    p.add_argument('--seconds', type=float, default=5.0, help='clip length')
    p.add_argument('--data-dir', help='where to write the generated clips (kept, and reused by the next run); '
                                      'default: a temporary folder')
    p.add_argument('--epochs', type=int, default=30, help='head epochs of the frozen runs')
    p.add_argument('--batch-size', type=int, default=16, help='batch size of the frozen runs')
    p.add_argument('--learning-rate', type=float, default=1e-3, help='of the frozen runs')
    p.add_argument('--full-steps', type=int, default=3, help='full fine-tuning steps (0: skip that measurement)')
    p.add_argument('--full-batch-size', type=int, default=8)
    p.add_argument('--skip-documented-command', action='store_true',
                   help="don't time the README's train.py command (it embeds every clip again)")
    p.add_argument('--no-mkl-avx2', action='store_true',
                   help="leave MKL's kernel choice alone on AMD CPUs (see device.enable_mkl_avx2_on_amd)")
    p.add_argument('--json', action='store_true', help='print one JSON object')
    args = p.parse_args(argv)
    args.mkl_avx2 = False if args.no_mkl_avx2 else enable_mkl_avx2_on_amd()   # as the example does, before any work
    if args.clips < 2 * args.classes:
        p.error(f'--clips must be at least {2 * args.classes} (2 x --classes), so that every class is in the '
                f'dev fold and in the training folds')
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f'{key}: {value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
