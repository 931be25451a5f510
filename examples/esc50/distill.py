"""Distil a big teacher into a small student on ESC-50 (or on the generated demo set with --demo).

    python examples/esc50/distill.py --data-dir ESC-50-master --teacher ckpt/best_model --student efficientat_mn04
    python examples/esc50/distill.py --data-dir ESC-50-master --teacher exported_cnn14 exported_mn10 --student cpmobile
    python examples/esc50/distill.py --demo      # offline: trains a teacher, then the student with and without it

The teacher is one or several fine-tuned checkpoint or export directories (an ensemble: the
mean of their logits) trained on the same classes; it scores every training clip whole, once,
and its outputs are cached. The student is any registered model, trained with
(1 - kd_lambda) * cross-entropy + kd_lambda * T^2 * KL(teacher || student) at temperature T.
"""
import argparse
import json
import os
import sys

from paddle_soundcls.scripts import run_script, silence_third_party_noise

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import build_optimizer  # noqa: E402

from paddle_soundcls import Module, Trainer, list_models  # noqa: E402
from paddle_soundcls.datasets import ESC50, make_demo_dataset  # noqa: E402
from paddle_soundcls.cache import cache_dir  # noqa: E402
from paddle_soundcls.errors import ArgumentError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', help='the ESC-50 folder (default: the cache, downloading it if needed)')
    p.add_argument('--demo', action='store_true', help='offline: the generated 5-class set; without --teacher, '
                   'a cpmobile_wide teacher is trained first')
    p.add_argument('--teacher', nargs='+', default=None, metavar='DIR',
                   help='fine-tuned checkpoint or export directories (several: an ensemble)')
    p.add_argument('--student', default='cpmobile', choices=list_models(), help='default cpmobile')
    p.add_argument('--pretrained', action='store_true', help='start the student from its pretrained weights')
    p.add_argument('--kd-lambda', type=float, default=0.5)
    p.add_argument('--kd-temperature', type=float, default=2.0)
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--learning-rate', type=float, default=1e-2)
    p.add_argument('--scheduler', default='warmup_cosine', choices=['constant', 'warmup_cosine', 'step'])
    p.add_argument('--warmup-steps', type=int, default=None,
                   help='optimizer steps of linear warm-up; default 10 (shortened to fit a shorter run)')
    p.add_argument('--duration', type=float, default=None, help='clip length (default 5, or 2 with --demo)')
    p.add_argument('--fold', type=int, default=1, choices=range(1, 6))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--checkpoint-dir', default='ckpt_distill')
    return p.parse_args(argv)


def train(args, model_name, checkpoint_dir, train_set, dev_set, teacher=None, pretrained=False):
    model = Module(model_name, label_map=train_set.labels, pretrained=pretrained, seed=args.seed)
    trainer = Trainer(model, build_optimizer(args, model, len(train_set), default_warmup=10),
                      checkpoint_dir=checkpoint_dir, seed=args.seed, teacher=teacher, kd_lambda=args.kd_lambda,
                      kd_temperature=args.kd_temperature)
    state = trainer.train(train_set, epochs=args.epochs, batch_size=args.batch_size, eval_dataset=dev_set)
    return state['best_metric'], os.path.join(checkpoint_dir, 'best_model')


def main(argv=None):
    args = parse_args(argv)
    if args.demo:
        args.duration = args.duration or 2.0
        args.data_dir = args.data_dir or make_demo_dataset(os.path.join(cache_dir(), 'demo_esc50'),
                                                           seconds=args.duration)
    args.duration = args.duration or 5.0
    if args.teacher is None and not args.demo:
        raise ArgumentError('--teacher DIR is required (a fine-tuned checkpoint or export directory); --demo trains one')
    train_set = ESC50(mode='train', split=args.fold, data_dir=args.data_dir, duration=args.duration, seed=args.seed)
    dev_set = ESC50(mode='dev', split=args.fold, data_dir=args.data_dir, duration=args.duration)
    summary = {}
    teacher = args.teacher
    if teacher is None:
        summary['teacher_acc'], best = train(args, 'cpmobile_wide', os.path.join(args.checkpoint_dir, 'teacher'),
                                             train_set, dev_set)
        teacher = [best]
    summary['student_kd_acc'], best = train(args, args.student, os.path.join(args.checkpoint_dir, 'student_kd'),
                                            train_set, dev_set, teacher, args.pretrained)
    if args.demo:
        summary['student_acc'], _ = train(args, args.student, os.path.join(args.checkpoint_dir, 'student'),
                                          train_set, dev_set, None, args.pretrained)
    summary['student_checkpoint'] = best
    print(json.dumps(summary, indent=2))
    print(f'the distilled {args.student} is in {best}: paddle-soundcls predict {best} clips/')
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
