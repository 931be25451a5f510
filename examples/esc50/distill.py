"""Distil big teachers into a small student on ESC-50 (or on generated data with --demo).

    python examples/esc50/distill.py --data-dir ESC-50-master --teacher-models passt_s_kd_p16_128_ap486 \
        efficientat_dymn10 --student efficientat_mn04 --pretrained
    python examples/esc50/distill.py --data-dir ESC-50-master --teacher my_ensemble --student efficientat_dymn04
    python examples/esc50/distill.py --demo      # offline, in a few minutes (see below)

--teacher-models fine-tunes each named model from its AudioSet weights on the training data
(--teacher-epochs), saves them together as one ensemble (CHECKPOINT_DIR/teacher_ensemble: the
weighted mean of their logits, usable later with --teacher, `paddle-soundcls predict` or
`export`), and distils it. --teacher takes what is trained already: checkpoint, export or
ensemble directories (several: an ensemble), trained on the same classes. The teachers score
every training clip whole, once: their outputs are cached member by member, so a second run,
or another ensemble sharing a member, computes nothing for it; the summary gives the seconds
of each member's pass and of the cached pass. The student is any registered model, trained
with (1 - kd_lambda) * cross-entropy + kd_lambda * T^2 * KL(teacher || student) at temperature T.

--demo (offline): the generated 5-class set; the teachers (default efficientat_dymn04 and
cpmobile_wide, from random weights, as nothing can be downloaded) learn from three times as many
generated clips as the student sees and for longer, so they know more than the student alone
can learn; then the student is trained with and without them on its smaller set, and both are
scored on the same dev clips.
"""
import argparse
import json
import math
import os
import sys
import time

from paddle_soundcls.scripts import run_script, silence_third_party_noise

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import build_optimizer  # noqa: E402

from paddle_soundcls import Ensemble, Module, Trainer, list_models  # noqa: E402
from paddle_soundcls.datasets import ESC50, make_demo_dataset  # noqa: E402
from paddle_soundcls.cache import cache_dir  # noqa: E402
from paddle_soundcls.errors import ArgumentError  # noqa: E402
from paddle_soundcls.training.teacher import Teacher, teacher_logits  # noqa: E402

DEMO_TEACHERS = ['efficientat_dymn04', 'cpmobile_wide']
DEMO_TEACHER_DATA = 3   # the demo teachers learn from this many times the student's generated clips


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', help='the ESC-50 folder (default: the cache, downloading it if needed)')
    p.add_argument('--demo', action='store_true', help='offline: generated data; without --teacher, the teachers '
                   f'({" and ".join(DEMO_TEACHERS)} unless --teacher-models) learn from random weights on more clips')
    p.add_argument('--teacher', nargs='+', default=None, metavar='DIR',
                   help='trained teachers: checkpoint, export or ensemble directories (several: an ensemble)')
    p.add_argument('--teacher-models', nargs='+', default=None, metavar='NAME', choices=list_models(),
                   help='fine-tune these registered models as the teachers first (from their pretrained weights; '
                        'from random weights with --demo), saved as one ensemble')
    p.add_argument('--teacher-weights', nargs='+', type=float, default=None, metavar='W',
                   help='one weight per --teacher-models model in the ensemble (default: equal)')
    p.add_argument('--teacher-epochs', type=int, default=None, help='epochs of each teacher (default: --epochs)')
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


def train(args, model_name, checkpoint_dir, train_set, dev_set, teacher=None, pretrained=False, epochs=None):
    model = Module(model_name, label_map=train_set.labels, pretrained=pretrained, seed=args.seed)
    args = argparse.Namespace(**{**vars(args), 'epochs': epochs or args.epochs})
    trainer = Trainer(model, build_optimizer(args, model, len(train_set), default_warmup=10),
                      checkpoint_dir=checkpoint_dir, seed=args.seed, teacher=teacher, kd_lambda=args.kd_lambda,
                      kd_temperature=args.kd_temperature)
    state = trainer.train(train_set, epochs=args.epochs, batch_size=args.batch_size, eval_dataset=dev_set)
    return state['best_metric'], os.path.join(checkpoint_dir, 'best_model')


def train_teachers(args, train_set, dev_set, summary):
    """Fine-tune each --teacher-models model, save them as one ensemble; returns its directory."""
    names = args.teacher_models
    if args.teacher_weights is not None and len(args.teacher_weights) != len(names):
        raise ArgumentError(f'--teacher-weights: give one weight per --teacher-models model ({len(names)})')
    pretrained = not args.demo
    if not pretrained:
        print(f'--demo: the teachers {", ".join(names)} learn from random weights (no pretrained weights offline)')
    dirs = []
    for name in names:
        summary[f'teacher_acc[{name}]'], best = train(args, name, os.path.join(args.checkpoint_dir, f'teacher_{name}'),
                                                      train_set, dev_set, pretrained=pretrained,
                                                      epochs=args.teacher_epochs)
        dirs.append(best)
    if len(dirs) == 1:
        return dirs[0]
    ensemble_dir = os.path.join(args.checkpoint_dir, 'teacher_ensemble')
    ensemble = Ensemble(dirs, weights=args.teacher_weights)
    ensemble.save(ensemble_dir)
    summary['teacher_acc[ensemble]'] = accuracy(ensemble, dev_set)
    return ensemble_dir


def accuracy(model, dataset):
    """Top-1 accuracy of `model` (Module or Ensemble) on the clips of `dataset`, scored whole as predict does."""
    paths, labels = zip(*dataset.items)
    results = model.predict(list(paths), batch_size=8)
    return float(sum(next(iter(r)) == dataset.labels[label] for r, label in zip(results, labels)) / len(paths))


def time_teacher_passes(teacher, train_set, summary):
    """Seconds of each member's pass over the training clips (cached from then on), and of the whole
    teacher's pass once they are cached: what the cache saves every later run."""
    members = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    for member in members:
        for name, one in zip(*_members_of(member)):
            start = time.perf_counter()
            teacher_logits(Teacher(one), train_set)
            summary[f'teacher_pass_seconds[{name}]'] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    teacher_logits(Teacher(teacher), train_set)
    summary['teacher_pass_seconds[cached]'] = round(time.perf_counter() - start, 2)


def _members_of(path):
    """(names, loadable members) of a teacher directory: an ensemble's members, or the directory itself."""
    from paddle_soundcls.ensemble import is_ensemble_dir, load_ensemble
    if is_ensemble_dir(path):
        ensemble = load_ensemble(path)
        return [m.name for m in ensemble.members], ensemble.members
    return [os.path.basename(os.path.dirname(os.path.abspath(path))) or path], [path]


def check_teacher_args(args):
    """Refuse teacher options that cannot work before anything is trained (the teachers take longest)."""
    from paddle_soundcls.deploy.ensemble import check_weights
    if args.teacher is not None and args.teacher_models is not None:
        raise ArgumentError('--teacher (trained teachers) and --teacher-models (teachers to train) exclude each other')
    if args.teacher is not None and (args.teacher_weights is not None or args.teacher_epochs is not None):
        raise ArgumentError('--teacher-weights and --teacher-epochs are for the teachers --teacher-models trains; '
                            'to weigh trained teachers, save them as one ensemble first (`paddle-soundcls ensemble '
                            'DIR1 DIR2 --weights W1 W2 --output ENSEMBLE_DIR`) and pass --teacher ENSEMBLE_DIR')
    if args.teacher_epochs is not None and args.teacher_epochs < 1:
        raise ArgumentError(f'--teacher-epochs must be 1 or more, got {args.teacher_epochs} (leave it out to train '
                            f'the teachers for --epochs)')
    names = args.teacher_models or (DEMO_TEACHERS if args.demo and args.teacher is None else None)
    if names is not None:
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ArgumentError(f'--teacher-models lists {", ".join(repeated)} more than once (each trains into '
                                f'{args.checkpoint_dir}/teacher_NAME): list each model once, and give it more '
                                f'weight with --teacher-weights')
    if args.teacher_weights is not None:
        if names is None:
            raise ArgumentError('--teacher-weights weigh the --teacher-models models: give those too')
        if len(args.teacher_weights) != len(names):
            raise ArgumentError(f'--teacher-weights: give one weight per --teacher-models model ({len(names)}: '
                                f'{" ".join(names)}), got {len(args.teacher_weights)}')
        for name, weight in zip(names, args.teacher_weights):
            if not (math.isfinite(weight) and weight >= 0):
                raise ArgumentError(f'--teacher-weights: {weight:g} (the weight of {name}) must be a finite number '
                                    f'>= 0')
        try:
            check_weights(args.teacher_weights, len(names))
        except ArgumentError as exc:   # all zero, or a sum beyond any float
            raise ArgumentError(f'--teacher-{exc}') from None


def main(argv=None):
    args = parse_args(argv)
    check_teacher_args(args)
    summary = {}
    if args.demo:
        args.duration = args.duration or 2.0
        args.data_dir = args.data_dir or make_demo_dataset(os.path.join(cache_dir(), 'demo_esc50'),
                                                           seconds=args.duration)
        if args.teacher is None:
            args.teacher_models = args.teacher_models or DEMO_TEACHERS
    args.duration = args.duration or 5.0
    if args.teacher is None and args.teacher_models is None:
        raise ArgumentError('--teacher DIR or --teacher-models NAME is required; --demo trains its own teachers')
    train_set = ESC50(mode='train', split=args.fold, data_dir=args.data_dir, duration=args.duration, seed=args.seed)
    dev_set = ESC50(mode='dev', split=args.fold, data_dir=args.data_dir, duration=args.duration)
    teacher = args.teacher
    if teacher is None:
        teacher_set = train_set
        if args.demo:   # more clips of the same classes, none of them dev clips
            more = make_demo_dataset(os.path.join(cache_dir(), 'demo_esc50_teacher'), seconds=args.duration,
                                     clips_per_class=16 * DEMO_TEACHER_DATA, seed=args.seed + 1)
            teacher_set = ESC50(mode='train', split=args.fold, data_dir=more, duration=args.duration, seed=args.seed)
            summary['teacher_train_clips'], summary['student_train_clips'] = len(teacher_set), len(train_set)
        teacher = [train_teachers(args, teacher_set, dev_set, summary)]
    time_teacher_passes(teacher, train_set, summary)
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
