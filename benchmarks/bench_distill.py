"""Does distillation help? On generated data, train a teacher, then the same student with and
without the teacher (same seed, epochs, data, schedule), and report the dev accuracies, the wall
time of each run, and the reuse of the teacher's cached outputs by a second distillation run.
Prints figures (JSON with --json); asserts nothing.

    python benchmarks/bench_distill.py --json

Data: the demo generator (datasets/demo.py) with 10 classes (tones, chirps, noise bursts,
clicks, hum, trills, beeps, buzz, drips, rumble at random pitch, timing and level, over
background noise, sometimes with a quiet sound of another class mixed in), fold 1 as dev.
"""
import argparse
import json
import os
import sys
import tempfile
import time

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.scripts import silence_third_party_noise  # noqa: E402

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

import paddle  # noqa: E402

from paddle_soundcls import Module, Trainer  # noqa: E402
from paddle_soundcls.datasets import ESC50, make_demo_dataset  # noqa: E402
from paddle_soundcls.analysis.benchmark import machine_info  # noqa: E402
from paddle_soundcls.training import teacher as teacher_lib  # noqa: E402
from paddle_soundcls.training.schedules import steps_per_epoch, warmup_cosine  # noqa: E402


def train(name, train_set, dev_set, ckpt, args, teacher=None, cache=None):
    model = Module(name, label_map=train_set.labels, pretrained=False, seed=args.seed)
    steps = args.epochs * steps_per_epoch(len(train_set), args.batch_size)
    optimizer = paddle.optimizer.Adam(learning_rate=warmup_cosine(args.learning_rate, steps, warmup_steps=10),
                                      parameters=model.parameters())
    trainer = Trainer(model, optimizer, checkpoint_dir=ckpt, use_vdl=False, seed=args.seed, teacher=teacher,
                      kd_lambda=args.kd_lambda, kd_temperature=args.kd_temperature, teacher_cache=cache)
    start = time.perf_counter()
    state = trainer.train(train_set, epochs=args.epochs, batch_size=args.batch_size, eval_dataset=dev_set)
    return {'best_acc': round(state['best_metric'], 4), 'final_acc': round(state['history'][-1]['eval']['acc'], 4),
            'wall_s': round(time.perf_counter() - start, 1), 'params': sum(int(p.size) for p in model.parameters())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--teacher', default='cpmobile_wide')
    p.add_argument('--student', default='cpmobile')
    p.add_argument('--classes', type=int, default=10)
    p.add_argument('--clips-per-class', type=int, default=20)
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--learning-rate', type=float, default=1e-2)
    p.add_argument('--kd-lambda', type=float, default=0.5)
    p.add_argument('--kd-temperature', type=float, default=2.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        data = make_demo_dataset(os.path.join(work, 'data'), num_class=args.classes,
                                 clips_per_class=args.clips_per_class, seconds=2.0, seed=1)
        train_set = ESC50(mode='train', split=1, data_dir=data, duration=2.0, seed=args.seed)
        dev_set = ESC50(mode='dev', split=1, data_dir=data, duration=2.0)
        cache = os.path.join(work, 'teachers')
        result = {'teacher': train(args.teacher, train_set, dev_set, os.path.join(work, 'teacher'), args)}
        teacher_dir = os.path.join(work, 'teacher', 'best_model')
        result['student'] = train(args.student, train_set, dev_set, os.path.join(work, 'student'), args)
        result['student_kd'] = train(args.student, train_set, dev_set, os.path.join(work, 'student_kd'), args,
                                     teacher=teacher_dir, cache=cache)
        # A second distillation run finds every teacher output in the cache.
        calls = []
        real = teacher_lib.Teacher.logits
        teacher_lib.Teacher.logits = lambda self, paths: calls.append(len(paths)) or real(self, paths)
        try:
            start = time.perf_counter()
            teacher_lib.teacher_logits(teacher_lib.Teacher(teacher_dir), train_set, cache, progress=False)
            result['teacher_cache'] = {'clips': len(train_set), 'recomputed': sum(calls),
                                       'second_pass_s': round(time.perf_counter() - start, 2)}
        finally:
            teacher_lib.Teacher.logits = real
    result['setup'] = {'data': f'{args.classes} generated classes x {args.clips_per_class} clips of 2 s, fold 1 dev '
                               f'({len(dev_set)} clips), {len(train_set)} training clips',
                       'schedule': f'{args.epochs} epochs, batch {args.batch_size}, warm-up + cosine from '
                                   f'{args.learning_rate:g}, seed {args.seed}, from random weights',
                       'kd': {'lambda': args.kd_lambda, 'temperature': args.kd_temperature},
                       'machine': machine_info()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ('teacher', 'student', 'student_kd'):
            r = result[name]
            print(f'{name:11s} best dev acc {r["best_acc"]:.4f}  ({r["params"]:,} parameters, {r["wall_s"]} s)')
        print(f'teacher cache: {result["teacher_cache"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
