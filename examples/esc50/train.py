"""Fine-tune a PANNs backbone on ESC-50 (or on a generated demo set with --demo).

    python examples/esc50/train.py --data-dir ESC-50-master --model panns_cnn14 --epochs 10 \
        --batch-size 16 --learning-rate 1e-4 --fold 1 --checkpoint-dir ckpt
    python examples/esc50/train.py --data-dir ESC-50-master --all-folds      # 5-fold mean accuracy
    python examples/esc50/train.py --demo                                    # offline, about two minutes
"""
import argparse
import json
import logging
import os
import sys

from paddle_soundcls.scripts import run_script, silence_third_party_noise

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

import paddle  # noqa: E402

from paddle_soundcls import Module, Trainer, list_models  # noqa: E402
from paddle_soundcls.datasets import ESC50, make_demo_dataset  # noqa: E402
from paddle_soundcls.errors import ArgumentError  # noqa: E402
from paddle_soundcls.device import enable_mkl_avx2_on_amd  # noqa: E402
from paddle_soundcls.training import AugmentConfig  # noqa: E402
from paddle_soundcls.training.schedules import build_scheduler, steps_per_epoch  # noqa: E402
from paddle_soundcls.cache import cache_dir  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', help='the ESC-50 folder (audio/ and meta/esc50.csv); default: the cache, '
                                      'downloading it if needed')
    p.add_argument('--demo', action='store_true',
                   help='train on a small generated dataset in ESC-50 layout (offline, about two minutes on 2 '
                        'cores): the small cpmobile network from random weights, warm-up + cosine schedule')
    p.add_argument('--model', default=None, choices=list_models(),
                   help='backbone (default panns_cnn14, or cpmobile with --demo)')
    p.add_argument('--epochs', type=int, default=None, help='default 10 (20 with --demo)')
    p.add_argument('--batch-size', type=int, default=None, help='default 16 (8 with --demo)')
    p.add_argument('--duration', type=float, default=None,
                   help='clip length in seconds: longer clips are cropped (randomly in training), shorter padded '
                        '(default 5, the ESC-50 clip length; 2 with --demo)')
    p.add_argument('--learning-rate', type=float, default=None, help='default 1e-4 (1e-2 with --demo)')
    p.add_argument('--scheduler', default=None, choices=['constant', 'warmup_cosine', 'step'],
                   help='default constant (warmup_cosine with --demo)')
    p.add_argument('--warmup-steps', type=int, default=None,
                   help='optimizer steps of linear warm-up (warmup_cosine); default 0, or 10 with --demo (shortened '
                        'to fit a shorter run)')
    p.add_argument('--fold', type=int, default=1, choices=range(1, 6), help='the dev fold')
    p.add_argument('--all-folds', action='store_true', help='run the 5-fold protocol and print the mean accuracy')
    p.add_argument('--checkpoint-dir', default='ckpt')
    pretrained = p.add_mutually_exclusive_group()
    pretrained.add_argument('--no-pretrained', dest='pretrained', action='store_false', default=None,
                            help='start from random weights instead of the AudioSet ones')
    pretrained.add_argument('--pretrained', dest='pretrained', action='store_true')
    p.add_argument('--device', default='cpu', choices=['cpu', 'gpu'])
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--seed', type=int, default=0,
                   help='seeds the new weights, shuffling, crops, dropout and augmentation: the same command '
                        'gives the same run')
    p.add_argument('--no-mkl-avx2', dest='mkl_avx2', action='store_false',
                   help="leave MKL's kernel choice alone on AMD CPUs (see paddle_soundcls.device."
                        "enable_mkl_avx2_on_amd)")
    p.add_argument('--loss', default='ce', choices=['ce', 'class_balanced', 'focal', 'class_balanced_focal'])
    p.add_argument('--label-smoothing', type=float, default=0.0)
    p.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    p.add_argument('--spec-augment', action='store_true', help='2 time masks (<=40 frames), 2 mel masks (<=8 bins)')
    p.add_argument('--gain-db', type=float, default=0.0, help='random gain of up to +/- this many dB')
    p.add_argument('--noise-snr-db', type=float, default=None, help='add white noise at this SNR')
    p.add_argument('--freq-mixstyle', type=float, default=0.0, metavar='P',
                   help='Freq-MixStyle on a batch with probability P (alpha 0.3): simulates other devices')
    p.add_argument('--impulse-responses', default=None, metavar='DIR',
                   help='convolve clips with the impulse responses (audio files) in DIR, half of them')
    p.add_argument('--supcon', type=float, default=0.0, metavar='W',
                   help='add W x the supervised contrastive loss of two augmented views (needs augmentation)')
    p.add_argument('--amp', default=None, choices=['bf16', 'fp16'],
                   help='mixed precision on GPUs: fp16 (CUDA, with loss scaling) or bf16 (GPUs that support it); '
                        "refused on a CPU, where Paddle's kernels have no bfloat16 convolution")
    p.add_argument('--max-params', type=float, default=None,
                   help='refuse a model with more parameters (DCASE task 1: 64000, i.e. 128 kB at fp16)')
    p.add_argument('--max-macs', type=float, default=None,
                   help='refuse a model with more multiply-accumulates per second of audio (DCASE task 1: 30e6)')
    p.add_argument('--skip-bad-files', action='store_true', help='drop unreadable clips instead of stopping')
    p.add_argument('--cache-waveforms', action='store_true',
                   help='store each clip decoded and resampled on disk (in the cache folder) during the first '
                        'epoch, so later epochs skip decoding and resampling; about 1.3 GB for ESC-50 at 32 kHz')
    p.add_argument('--freeze-backbone', action='store_true',
                   help='train only the head, on backbone embeddings computed once per clip (centre crops) and '
                        'cached on disk: minutes instead of hours on a CPU. No augmentation in this mode. '
                        'Defaults become --epochs 30 --learning-rate 1e-3')
    return p.parse_args(argv)


# What a setting the command line leaves out becomes: first for the kind of run, then in general.
# --demo: a small network built for training from scratch (receptive-field-regularised CP-Mobile),
# a large step warmed up and then decayed (a constant step leaves BatchNorm's running statistics
# behind the weights), 20 short epochs. --freeze-backbone: a linear head on fixed embeddings, so
# many cheap epochs and a larger step.
DEMO = {'model': 'cpmobile', 'epochs': 20, 'batch_size': 8, 'duration': 2.0, 'learning_rate': 1e-2,
        'scheduler': 'warmup_cosine', 'pretrained': False}
FROZEN = {'epochs': 30, 'learning_rate': 1e-3}
DEFAULTS = {'model': 'panns_cnn14', 'epochs': 10, 'batch_size': 16, 'duration': 5.0, 'learning_rate': 1e-4,
            'scheduler': 'constant', 'pretrained': True}


def fill_defaults(args, defaults):
    """Set each setting of `defaults` that the command line left out (None)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def build_optimizer(args, model, num_train_clips, default_warmup=0):
    """Adam with the chosen schedule, sized to the steps the Trainer takes (in every process)."""
    steps = args.epochs * steps_per_epoch(num_train_clips, args.batch_size)
    warmup = warmup_steps(args.warmup_steps, default_warmup, steps, args.epochs)
    lr = build_scheduler(args.scheduler, args.learning_rate, total_steps=steps, warmup_steps=warmup,
                         step_size=max(steps // 3, 1))
    return paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters())


def warmup_steps(asked, default, total_steps, epochs):
    """The warm-up of a run of `total_steps` optimizer steps: --warmup-steps as given (refused when
    longer than the run), or the default, shortened to the run's length with a note."""
    run = f'{epochs} epoch{"s" if epochs > 1 else ""} of {total_steps // epochs} steps'
    if asked is None:
        if default > total_steps:
            print(f'note: the default warm-up of {default} steps is longer than this run ({run}); warming up over '
                  f'{total_steps} steps (set it with --warmup-steps)')
        return min(default, total_steps)
    if asked > total_steps:
        raise ArgumentError(f'--warmup-steps {asked} is longer than this run ({run} = {total_steps} steps): pass '
                            f'--warmup-steps {total_steps} or fewer, or more --epochs')
    return asked


def train_fold(args, fold, checkpoint_dir):
    data_dir = args.data_dir
    train_set = ESC50(mode='train', split=fold, data_dir=data_dir, duration=args.duration, seed=args.seed,
                      cache=args.cache_waveforms)
    dev_set = ESC50(mode='dev', split=fold, data_dir=data_dir, duration=args.duration, cache=args.cache_waveforms)
    model = Module(name=args.model, task='sound-cls', label_map=train_set.labels, pretrained=args.pretrained,
                   seed=args.seed)
    optimizer = build_optimizer(args, model, len(train_set), default_warmup=10 if args.demo else 0)
    augment = AugmentConfig(time_masks=2 if args.spec_augment else 0, time_mask_width=40 if args.spec_augment else 0,
                            freq_masks=2 if args.spec_augment else 0, freq_mask_width=8 if args.spec_augment else 0,
                            mixup_alpha=args.mixup, gain_db=args.gain_db, noise_snr_db=args.noise_snr_db,
                            freq_mixstyle_p=args.freq_mixstyle, impulse_responses=args.impulse_responses,
                            impulse_response_p=0.5 if args.impulse_responses else 0.0)
    trainer = Trainer(model, optimizer, use_gpu=args.device == 'gpu', checkpoint_dir=checkpoint_dir,
                      compare_metrics='acc', loss=args.loss, label_smoothing=args.label_smoothing, augment=augment,
                      seed=args.seed, skip_bad_files=args.skip_bad_files, freeze_backbone=args.freeze_backbone,
                      supcon_weight=args.supcon, max_params=args.max_params, max_macs_per_second=args.max_macs,
                      amp=args.amp)
    state = trainer.train(train_set, epochs=args.epochs, batch_size=args.batch_size, num_workers=args.num_workers,
                          eval_dataset=dev_set, save_interval=1)
    print(f'fold {fold}: best dev accuracy {state["best_metric"]:.4f} at epoch {state["best_epoch"]}; '
          f'best model in {os.path.join(checkpoint_dir, "best_model")}')
    return state['best_metric']


def main(argv=None):
    args = parse_args(argv)
    silence_third_party_noise()
    if args.mkl_avx2:
        enable_mkl_avx2_on_amd()  # before Paddle's first computation, when MKL reads it
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    if args.demo:
        fill_defaults(args, DEMO)
        args.data_dir = args.data_dir or os.path.join(cache_dir(), 'demo_esc50')
        make_demo_dataset(args.data_dir, seconds=args.duration)
        print(f'demo: {args.model} from {"pretrained" if args.pretrained else "random"} weights, {args.epochs} epochs '
              f'of batch {args.batch_size}, {args.scheduler} learning rate {args.learning_rate:g}, on the generated '
              f'5-class set in {args.data_dir} (80 clips of {args.duration:g} s, ESC-50 layout); offline')
    if args.freeze_backbone:
        fill_defaults(args, FROZEN)
    fill_defaults(args, DEFAULTS)
    if not args.all_folds:
        train_fold(args, args.fold, args.checkpoint_dir)
        return 0
    accuracies = {fold: train_fold(args, fold, os.path.join(args.checkpoint_dir, f'fold{fold}')) for fold in range(1, 6)}
    mean = sum(accuracies.values()) / 5
    print(json.dumps({'model': args.model, 'fold_accuracy': accuracies, 'mean_accuracy': mean}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
