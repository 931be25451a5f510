"""DCASE 2023/2024 task 1, low-complexity acoustic scene classification: teachers, a small
distilled student within the budget, its per-device scores, a submission file and a system
description (or the whole recipe offline on a generated device set with --demo).

    python examples/dcase_task1/train.py --data-dir TAU-urban-acoustic-scenes-2022-mobile-development \
        --subset 25 --teachers cpresnet passt_s_kd_p16_128_ap486 --student cpmobile \
        --impulse-responses micirp/ --domain-adversarial 0.1
    python examples/dcase_task1/train.py --data-dir TAU... --teacher-checkpoints ckpt_dcase/teacher_ensemble
    python examples/dcase_task1/train.py --demo       # offline, a few minutes on 2 cores (see below)

The recipe:
1. Data: the TAU Urban Acoustic Scenes 2022 Mobile development set (datasets.TAU22), the DCASE
   2024 train subset --subset (5, 10, 25, 50 or 100 percent; 100 is the DCASE 2023 train set),
   evaluated on its test split, whose devices s4-s6 are never seen in training.
2. Teachers (--teachers): each registered model is fine-tuned (from its AudioSet weights where it
   has them) on the 10-s recordings reassembled from the 1-s clips, a random 1-s window of each
   per step (--teacher-input reassembled, as the CPJKU DCASE 2022 teachers), or on the 1-s
   clips; several are saved together as one ensemble (CHECKPOINT_DIR/teacher_ensemble). Their
   outputs on the training clips are computed once and cached (Trainer teacher_cache).
3. The student (--student, default cpmobile, the DCASE 2024 baseline network) is distilled from
   them with Freq-MixStyle, optionally with device impulse responses (--impulse-responses) and
   domain-adversarial training (--domain-adversarial W: a device classifier behind a gradient
   reversal), and is refused before its first step when over the budget (--max-params,
   --max-macs; by default DCASE's: 128,000 parameters at int8, 30 M MACs per 1-s clip).
4. The student's per-device table on the test split is printed; the DCASE budget is checked on
   the measured figures.
5. CHECKPOINT_DIR gets the submission file <label>.output.split_<subset>.csv (tab-separated:
   filename, scene_label, one score column per class, one row per clip; the clips of
   --eval-audio, or of the dev test split without it) and the system description
   <label>.meta.yaml (DCASE's meta information layout: model, parameters, MACs, int8 parameter
   memory, accuracy and log loss per class and device on the dev test split), and summary.json.

--demo (offline): the generated TAU22-layout set (datasets.make_tau22_demo: 4 scenes, simulated
devices, s4-s6 only in the test split), a cpresnet teacher from random weights (nothing can be
downloaded; PaSST is refused: far too slow on a CPU), and a folder of generated device impulse
responses. The student is distilled twice, without and with the device tools (impulse responses
and domain-adversarial training; Freq-MixStyle in both), and the seen and unseen accuracies of
the two runs are printed side by side.
"""
import argparse
import csv
import json
import math
import os
import re
import sys
import time

from paddle_soundcls.scripts import run_script, silence_third_party_noise

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddle_soundcls import Ensemble, Module, Trainer, list_models  # noqa: E402
from paddle_soundcls.analysis.complexity import (BYTES_PER_VALUE, DCASE_MACS_PER_SECOND,  # noqa: E402
                                                 DCASE_PARAM_MEMORY_KB, check_dcase_budget, complexity)
from paddle_soundcls.cache import cache_dir  # noqa: E402
from paddle_soundcls.deploy import Predictor  # noqa: E402
from paddle_soundcls.datasets.tau22 import SUBSETS, TAU22, make_tau22_demo  # noqa: E402
from paddle_soundcls.errors import ArgumentError, QuantizationRefused  # noqa: E402
from paddle_soundcls.export import export_static  # noqa: E402
from paddle_soundcls.export.quantize import quantize_export  # noqa: E402
from paddle_soundcls.models import registry  # noqa: E402
from paddle_soundcls.training import AugmentConfig  # noqa: E402
from paddle_soundcls.training.metrics import scene_metrics, scene_table  # noqa: E402
from paddle_soundcls.training.schedules import build_scheduler, steps_per_epoch  # noqa: E402

DCASE_MAX_PARAMS = DCASE_PARAM_MEMORY_KB * 1000 // BYTES_PER_VALUE['int8']   # 128 kB of int8 parameters
# Models whose forward pass is far too slow for a CPU demo (a transformer on 128 mel bins).
SLOW_MODELS = ('passt',)
# The submission label DCASE asks for: <lastname>_<institute>_task1_<1-4>.
LABEL = re.compile(r'[A-Za-z][A-Za-z0-9-]*_[A-Za-z0-9-]+_task1_[1-4]')

# What a setting the command line leaves out becomes: with --demo, then in general.
DEMO = {'teachers': ['cpresnet'], 'teacher_epochs': 30, 'epochs': 7, 'batch_size': 32, 'learning_rate': 5e-3,
        'teacher_learning_rate': 5e-3, 'domain_adversarial': 0.1}
DEFAULTS = {'teachers': ['cpresnet', 'passt_s_kd_p16_128_ap486'], 'teacher_epochs': 30, 'epochs': 150,
            'batch_size': 256, 'learning_rate': 5e-3, 'domain_adversarial': 0.0}
# The teachers' rate when --teacher-learning-rate is left out: fine-tuning from pretrained weights
# takes small steps; a network learning from random weights larger ones.
TEACHER_RATE = {'pretrained': 1e-4, 'random': 1e-3}
FINAL_MODEL = 'final_model'
DEMO_IR_FOLDER = 'demo_tau22_device_irs_v2'   # a new name whenever write_demo_impulse_responses changes
DEMO_SET = {'scenes': 4, 'train_recordings': 3, 'test_recordings': 2, 'train_devices': 2}
# The int8 export: calibrated on this many training clips, checked against the float model on
# this many test clips (none of them calibration clips).
CALIBRATION_CLIPS, CHECK_CLIPS = 64, 200
# The settings a run folder was trained with, saved beside it (<folder>.settings.json).
SETTINGS_SUFFIX = '.settings.json'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', help='the TAU Urban Acoustic Scenes 2022 Mobile development set (meta.csv, audio/, '
                                      'split_setup/split{5,10,25,50,100}.csv and test.csv)')
    p.add_argument('--demo', action='store_true',
                   help='offline: a generated TAU22-layout set with simulated devices, a cpresnet teacher from random '
                        'weights, and the student trained without and with the device tools (a few minutes)')
    p.add_argument('--subset', type=int, default=100, choices=SUBSETS,
                   help='percent of the development-train set (the DCASE 2024 splits; default 100)')
    p.add_argument('--teachers', nargs='+', default=None, metavar='NAME', choices=list_models(),
                   help='registered models to fine-tune as teachers (default cpresnet passt_s_kd_p16_128_ap486; '
                        'cpresnet with --demo); several make an ensemble')
    p.add_argument('--teacher-weights', nargs='+', type=float, default=None, metavar='W',
                   help='one weight per --teachers model in the ensemble (default: equal)')
    p.add_argument('--teacher-checkpoints', nargs='+', default=None, metavar='DIR',
                   help='teachers trained already (checkpoint, export or ensemble directories) instead of --teachers')
    p.add_argument('--teacher-input', default='reassembled', choices=['reassembled', 'clips'],
                   help='the teachers learn from random 1-s windows of the reassembled 10-s recordings (default) '
                        'or from the 1-s clips')
    p.add_argument('--teacher-epochs', type=int, default=None, help='default 30 (also with --demo)')
    p.add_argument('--teacher-learning-rate', type=float, default=None,
                   help='default 1e-4 from pretrained weights, 1e-3 from random ones (5e-3 with --demo)')
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='teachers from random weights (--demo always: nothing can be downloaded)')
    p.add_argument('--student', default='cpmobile', choices=list_models(), help='default cpmobile')
    p.add_argument('--kd-lambda', type=float, default=0.5)
    p.add_argument('--kd-temperature', type=float, default=2.0)
    p.add_argument('--freq-mixstyle', type=float, default=0.4, metavar='P',
                   help='Freq-MixStyle on a batch with probability P (alpha 0.3; 0: off; default 0.4)')
    p.add_argument('--impulse-responses', default=None, metavar='DIR',
                   help='a folder of device impulse responses (audio files, e.g. MicIRP); each training clip is '
                        'convolved with a random one half of the time')
    p.add_argument('--domain-adversarial', type=float, default=None, metavar='W',
                   help='domain-adversarial training: a device classifier behind a gradient reversal of weight W '
                        '(0: off, the default; 0.1 in the second student of --demo)')
    p.add_argument('--epochs', type=int, default=None, help='student epochs (default 150, 7 with --demo)')
    p.add_argument('--batch-size', type=int, default=None, help='default 256 (32 with --demo)')
    p.add_argument('--learning-rate', type=float, default=None, help='the student\'s peak rate (default 5e-3)')
    p.add_argument('--warmup-epochs', type=float, default=1.0, help='linear warm-up of every run, in epochs')
    p.add_argument('--max-params', type=float, default=DCASE_MAX_PARAMS,
                   help=f'refuse a student with more parameters (default {DCASE_MAX_PARAMS:,}: 128 kB at int8)')
    p.add_argument('--max-macs', type=float, default=DCASE_MACS_PER_SECOND,
                   help='refuse a student with more MACs per 1-s clip (default 30e6, the DCASE limit)')
    p.add_argument('--eval-audio', default=None, metavar='DIR',
                   help='the evaluation set\'s audio folder: the submission file scores its .wav files (default: '
                        'the dev test split\'s clips)')
    p.add_argument('--submission-label', default='Soundcls_PSC_task1_1',
                   help='<lastname>_<institute>_task1_<1-4>, the name of the submission files')
    p.add_argument('--system-name', default=None, help='the system name in the description (default: from the models)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--checkpoint-dir', default='ckpt_dcase')
    return p.parse_args(argv)


def fill_defaults(args, defaults):
    """Set each setting of `defaults` that the command line left out (None)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_args(args):
    """Refuse contradictory or impossible settings before any work, naming the argument."""
    if args.demo and args.data_dir is not None:
        raise ArgumentError('--demo generates its own data set: drop --data-dir, or drop --demo to use the real one')
    if not args.demo and args.data_dir is None:
        raise ArgumentError('--data-dir DIR (the TAU Urban Acoustic Scenes 2022 Mobile development set) is required; '
                            'or run --demo (offline, generated data)')
    if args.teachers is not None and args.teacher_checkpoints is not None:
        raise ArgumentError('--teachers (models to train) and --teacher-checkpoints (trained teachers) exclude each '
                            'other')
    if args.demo:
        slow = [name for name in args.teachers or [] if name.startswith(SLOW_MODELS)]
        if slow:
            raise ArgumentError(f'--demo: {", ".join(slow)} is far too slow on a CPU and its pretrained weights '
                                f'cannot be downloaded offline; the demo uses cpresnet (or give --teachers cpresnet '
                                f'cpresnet_damped ...)')
    if args.teachers is not None and len(set(args.teachers)) != len(args.teachers):
        raise ArgumentError(f'--teachers: each model once, got {args.teachers}')
    if args.teacher_weights is not None:
        if args.teachers is None and (not args.demo or args.teacher_checkpoints is not None):
            raise ArgumentError('--teacher-weights goes with --teachers (one weight per model)')
        teachers = args.teachers or DEMO['teachers']
        if len(teachers) == 1:
            raise ArgumentError(f'--teacher-weights weighs the members of an ensemble, but there is one teacher '
                                f'({teachers[0]}): give two or more --teachers, or drop --teacher-weights')
        if len(args.teacher_weights) != len(teachers):
            raise ArgumentError(f'--teacher-weights: give one weight per --teachers model ({len(teachers)}), '
                                f'got {len(args.teacher_weights)}')
        if not all(math.isfinite(w) and w >= 0 for w in args.teacher_weights) or sum(args.teacher_weights) <= 0:
            raise ArgumentError(f'--teacher-weights must be numbers >= 0, not all 0, got {args.teacher_weights}')
    for name in ('epochs', 'teacher_epochs', 'batch_size'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ArgumentError(f'--{name.replace("_", "-")} must be at least 1, got {value}')
    for name in ('learning_rate', 'teacher_learning_rate', 'kd_temperature', 'max_params', 'max_macs'):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ArgumentError(f'--{name.replace("_", "-")} must be a positive number, got {value}')
    if not 0 <= args.kd_lambda <= 1:
        raise ArgumentError(f'--kd-lambda must be in [0, 1] (the share of the distillation loss), got {args.kd_lambda}')
    if not 0 <= args.freq_mixstyle <= 1:
        raise ArgumentError(f'--freq-mixstyle is a probability in [0, 1], got {args.freq_mixstyle}')
    if args.domain_adversarial is not None and not (math.isfinite(args.domain_adversarial)
                                                    and args.domain_adversarial >= 0):
        raise ArgumentError(f'--domain-adversarial must be a weight >= 0 (0: off), got {args.domain_adversarial}')
    if not (math.isfinite(args.warmup_epochs) and args.warmup_epochs >= 0):
        raise ArgumentError(f'--warmup-epochs must be >= 0, got {args.warmup_epochs}')
    for name in ('impulse_responses', 'eval_audio'):
        folder = getattr(args, name)
        if folder is not None and not os.path.isdir(folder):
            raise ArgumentError(f'--{name.replace("_", "-")}: no such folder: {folder}')
    if args.eval_audio is not None:
        eval_files(args.eval_audio)   # refuses a folder without .wav files
    for folder in args.teacher_checkpoints or []:
        if not os.path.isdir(folder):
            raise ArgumentError(f'--teacher-checkpoints: no such folder: {folder}')
    if not LABEL.fullmatch(args.submission_label):
        raise ArgumentError(f'--submission-label must read <lastname>_<institute>_task1_<1-4> as DCASE names '
                            f'submissions (e.g. Schmid_CPJKU_task1_1), got {args.submission_label!r}')


# ----------------------------------------------------------------------------- training

def build_optimizer(model, learning_rate, epochs, num_clips, batch_size, warmup_epochs):
    """Adam with a linear warm-up and a cosine decay, sized to the steps the Trainer takes."""
    per_epoch = steps_per_epoch(num_clips, batch_size)
    total = epochs * per_epoch
    warmup = min(total, int(round(warmup_epochs * per_epoch)))
    lr = build_scheduler('warmup_cosine', learning_rate, total_steps=total, warmup_steps=warmup)
    return paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters())


def check_run_settings(checkpoint_dir, settings):
    """Save `settings` (a JSON-able dict) beside a run folder, or refuse a folder trained with other
    settings: the Trainer resumes whatever the folder holds, so a rerun with changed settings would
    otherwise reuse (or continue) the old model."""
    path = os.path.normpath(checkpoint_dir) + SETTINGS_SUFFIX
    settings = json.loads(json.dumps(settings))    # as the file gives them back (tuples become lists)
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
        changed = sorted(key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key))
        if changed:
            what = '; '.join(f'{key}: {saved.get(key)!r} then, {settings.get(key)!r} now' for key in changed)
            raise ArgumentError(f'{checkpoint_dir} holds a run trained with other settings ({what}): give another '
                                f'--checkpoint-dir, or delete {checkpoint_dir} and {path} to train it again')
        return path
    if os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir):
        raise ArgumentError(f'{checkpoint_dir} holds a run whose settings are unknown (no {path}): give another '
                            f'--checkpoint-dir, or delete {checkpoint_dir} to train it again')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(settings, f, indent=2)
    return path


def run_settings(args, data_dir, name, epochs, learning_rate, **more):
    """What a run folder's model depends on, for check_run_settings."""
    return {'model': name, 'data_dir': os.path.abspath(data_dir), 'subset': args.subset, 'seed': args.seed,
            'epochs': epochs, 'learning_rate': learning_rate, 'batch_size': args.batch_size,
            'warmup_epochs': args.warmup_epochs, **more}


def train_model(name, labels, checkpoint_dir, train_set, epochs, batch_size, learning_rate, args, settings,
                pretrained=False, **trainer_args):
    """Train `name` on `train_set`; the model of the last epoch is saved as checkpoint_dir/final_model.
    No epoch is chosen on the test split (DCASE has no validation split: picking the best epoch on
    the test split would flatter its figures); the caller scores the final model once. The Module."""
    check_run_settings(checkpoint_dir, settings)
    model = Module(name, label_map=labels, pretrained=pretrained, seed=args.seed)
    optimizer = build_optimizer(model, learning_rate, epochs, len(train_set), batch_size, args.warmup_epochs)
    trainer = Trainer(model, optimizer, checkpoint_dir=checkpoint_dir, seed=args.seed, use_vdl=False, **trainer_args)
    # Every epoch saved (the Trainer keeps the last few): an interrupted run resumes where it stopped.
    trainer.train(train_set, epochs=epochs, batch_size=batch_size, save_interval=1)
    model.save(os.path.join(checkpoint_dir, FINAL_MODEL))
    return model


def train_teachers(args, data_dir, labels, test_set, summary):
    """Fine-tune each --teachers model, save several as one ensemble; returns the teacher's directory."""
    reassemble = args.teacher_input == 'reassembled'
    teacher_set = TAU22(data_dir, split='train', subset=args.subset, reassemble=reassemble, duration=1.0,
                        seed=args.seed)
    summary['teacher_input'] = (f'{len(teacher_set)} reassembled 10-s recordings, a random 1-s window each'
                                if reassemble else f'{len(teacher_set)} 1-s clips')
    if args.teacher_weights is not None and len(args.teacher_weights) != len(args.teachers):
        raise ArgumentError(f'--teacher-weights: give one weight per teacher ({", ".join(args.teachers)}), got '
                            f'{len(args.teacher_weights)}')
    dirs = []
    for name in args.teachers:
        pretrained = args.pretrained and not args.demo and registry.get_spec(name).weights is not None
        rate = args.teacher_learning_rate or TEACHER_RATE['pretrained' if pretrained else 'random']
        print(f'teacher {name}: from {"its pretrained" if pretrained else "random"} weights, {args.teacher_epochs} '
              f'epochs on {summary["teacher_input"]}')
        directory = os.path.join(args.checkpoint_dir, f'teacher_{name}')
        start = time.perf_counter()
        settings = run_settings(args, data_dir, name, args.teacher_epochs, rate, pretrained=pretrained,
                                teacher_input=args.teacher_input)
        model = train_model(name, labels, directory, teacher_set, args.teacher_epochs, args.batch_size, rate, args,
                            settings, pretrained=pretrained)
        scores = score_clips(model, test_set, args.batch_size)
        summary[f'teacher[{name}]'] = {'pretrained': pretrained, 'seconds': round(time.perf_counter() - start, 1),
                                       **headline(scene_metrics(targets(test_set), scores, test_set.devices,
                                                                test_set.seen_devices))}
        dirs.append(os.path.join(directory, FINAL_MODEL))
    if len(dirs) == 1:
        return dirs[0]
    ensemble_dir = os.path.join(args.checkpoint_dir, 'teacher_ensemble')
    ensemble = Ensemble(dirs, weights=args.teacher_weights)
    ensemble.save(ensemble_dir)
    return ensemble_dir


def train_student(args, data_dir, labels, checkpoint_dir, train_set, teacher, impulse_responses, domain_weight):
    augment = AugmentConfig(freq_mixstyle_p=args.freq_mixstyle, impulse_responses=impulse_responses,
                            impulse_response_p=0.5 if impulse_responses else 0.0)
    tools = ['Freq-MixStyle'] * (args.freq_mixstyle > 0) + ['device impulse responses'] * bool(impulse_responses) + \
        [f'domain-adversarial (weight {domain_weight:g})'] * (domain_weight > 0)
    print(f'student {args.student}: distilled for {args.epochs} epochs on {len(train_set)} 1-s clips'
          f'{" with " + ", ".join(tools) if tools else ""}')
    teachers = [teacher] if isinstance(teacher, str) else teacher
    settings = run_settings(args, data_dir, args.student, args.epochs, args.learning_rate,
                            teacher=[os.path.abspath(t) for t in teachers], teacher_weights=args.teacher_weights,
                            kd_lambda=args.kd_lambda, kd_temperature=args.kd_temperature,
                            freq_mixstyle=args.freq_mixstyle,
                            impulse_responses=impulse_responses and os.path.abspath(impulse_responses),
                            domain_adversarial=domain_weight, max_params=args.max_params, max_macs=args.max_macs)
    return train_model(args.student, labels, checkpoint_dir, train_set, args.epochs, args.batch_size,
                       args.learning_rate, args, settings, teacher=teacher, kd_lambda=args.kd_lambda,
                       kd_temperature=args.kd_temperature, augment=augment, max_params=args.max_params,
                       max_macs_per_second=args.max_macs, domain_adversarial_weight=domain_weight)


@paddle.no_grad()
def score_clips(model, dataset, batch_size):
    """The class probabilities [clips, classes] of `model` on every clip of `dataset`, in item order
    (each 1-s clip whole, as the Trainer's evaluation scores it)."""
    model.eval()
    scores = []
    for start in range(0, len(dataset), batch_size):
        waves = np.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        scores.append(model.scores(model(model.frontend(paddle.to_tensor(waves)))).numpy())
    return np.concatenate(scores).astype(np.float64)


def targets(dataset):
    return np.asarray([target for _, target in dataset.items])


def headline(result):
    """The figures of a scene_metrics result that fit on one line."""
    return {key: round(float(result[key]), 4) for key in ('macro_acc', 'log_loss', 'seen_acc', 'unseen_acc')
            if key in result}


# ----------------------------------------------------------------------------- output files

def write_submission(path, filenames, scores, class_names):
    """DCASE task 1's system output: tab-separated, header filename, scene_label and the class
    names; one row per clip with its file name (no folder), the predicted scene (the best score)
    and the score of every class."""
    scores = np.asarray(scores, dtype=np.float64)
    class_names = [str(name) for name in class_names]
    if scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ArgumentError(f'scores must be [clips, {len(class_names)}] (one column per class), got shape '
                            f'{list(scores.shape)}')
    if len(filenames) != len(scores):
        raise ArgumentError(f'{len(filenames)} file names for {len(scores)} rows of scores')
    names = [os.path.basename(os.fspath(name)) for name in filenames]
    if len(set(names)) != len(names):
        raise ArgumentError('the file names must be unique (DCASE counts the unique file names of the output)')
    lines = ['\t'.join(['filename', 'scene_label'] + class_names)]
    for name, row in zip(names, scores):
        # Full precision: the shortest text that reads back as the same float.
        lines.append('\t'.join([name, class_names[int(np.argmax(row))]] + [repr(float(value)) for value in row]))
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def write_clip_list(path, items, labels, count, seed):
    """A CSV of `count` clips of `items` (path, class index) drawn at random, with their labels:
    what quantize_export takes as calibration or check clips."""
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(items), size=min(count, len(items)), replace=False))
    with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)   # quotes a path holding a comma
        writer.writerow(['path', 'label'])
        for i in picked:
            writer.writerow([os.path.abspath(items[i][0]), labels[items[i][1]]])
    return path


def int8_export(model, folder, train_set, test_set, seed):
    """The student exported (static graph + ONNX) and quantized to int8, calibrated on training
    clips and checked against the float model on test clips: export.json's int8 entry, with the
    bytes the int8 model stores (parameter_memory), or the refusal's message."""
    export_static(model, folder, opset=13)
    calibration = write_clip_list(folder + '.calibration.csv', train_set.items, train_set.labels, CALIBRATION_CLIPS,
                                  seed)
    check = write_clip_list(folder + '.check.csv', test_set.items, test_set.labels, CHECK_CLIPS, seed + 1)
    try:
        return quantize_export(folder, calibration, check=check, seconds=1.0)
    except QuantizationRefused as exc:
        return {'refused': str(exc)}


def system_description(label, name, report, result, class_names, nonzero_params, settings, int8=None,
                       scored_by=None):
    """The system's meta information in the layout of DCASE task 1's <label>.meta.yaml: the
    submission, the system (its complexity counted as DCASE counts it) and its results on the
    development test split (accuracies in percent, log loss per clip) of the model `scored_by`
    names: the int8 export where it was kept (`int8`), else the float model."""
    params = report['params']['total']
    one_second = next(c for c in report['clips'] if c['seconds'] == 1)

    def figures(acc, loss):
        return {'accuracy': round(100 * float(acc), 2), 'logloss': round(float(loss), 4)}

    overall_acc = sum(result['device_acc'][d] * n for d, n in result['device_count'].items()) / \
        sum(result['device_count'].values())
    # The size of the model that made the outputs: what the int8 export stores, where it was made
    # and kept; else the float model's 4 bytes per parameter.
    stored = (int8 or {}).get('parameter_memory')
    size_kB = stored['total_bytes'] / 1000 if stored else report['param_memory']['fp32']['kB']
    return {
        'submission': {
            'label': label, 'name': name, 'abbreviation': label.split('_')[1][:10],
            'authors': [{'lastname': 'TO FILL IN', 'firstname': 'TO FILL IN', 'email': 'TO FILL IN',
                         'affiliation': {'institution': 'TO FILL IN'}, 'corresponding': True}],
        },
        'system': {
            'description': {
                'input_sampling_rate': f'{settings["sample_rate"] / 1000:g} kHz',
                'acoustic_features': 'log-mel energies',
                'embeddings': None,
                'data_augmentation': ', '.join(settings['augmentation']) or None,
                'machine_learning_method': 'CNN',
                'ensemble_method_subsystem_count': 1,
                'decision_making': None,
                'external_data_usage': settings['external_data'],
                'complexity_management': 'knowledge distillation, a small network within the budget',
                'pipeline': settings['pipeline'],
                'framework': 'paddlepaddle',
            },
            'complexity': {
                'total_model_size': size_kB,          # kB (1000 bytes) of the scored model's parameters
                'total_parameters': params,
                'total_parameters_non_zero': int(nonzero_params),
                'memory_use': size_kB,
                'int8_export': None if stored is None else {'bytes': stored['bytes'],
                                                            'total_bytes': stored['total_bytes'],
                                                            'budget': int8_budget(stored)},
                'scored_model': scored_by or ('the int8 export' if stored else 'the float model'),
                'macs': int(one_second['macs']),                           # for one 1-s clip
                'model': report['model'],
                'parameter_memory_kB': {dtype: report['param_memory'][dtype]['kB'] for dtype in BYTES_PER_VALUE},
                'counting': report['counting'],
            },
            'energy_consumption': {'training': None, 'inference': None, 'baseline_inference': None},
            'external_datasets': settings['external_datasets'],
            'source_code': 'paddle_soundcls, examples/dcase_task1/train.py',
        },
        'results': {
            'development_dataset': {
                'overall': {**figures(overall_acc, result['log_loss']),
                            'macro_accuracy': round(100 * float(result['macro_acc']), 2)},
                'class_wise': {str(n): figures(a, l) for n, a, l in zip(class_names, result['class_acc'],
                                                                        result['class_log_loss'])},
                'device_wise': {d: figures(result['device_acc'][d], result['device_log_loss'][d])
                                for d in result['device_count']},
                'seen_devices': round(100 * float(result['seen_acc']), 2) if 'seen_acc' in result else None,
                'unseen_devices': round(100 * float(result['unseen_acc']), 2) if 'unseen_acc' in result else None,
            },
        },
    }


def int8_budget(stored):
    """The DCASE verdict on the bytes the int8 export stores (parameter_memory)."""
    limit = DCASE_PARAM_MEMORY_KB * 1000
    if stored['total_bytes'] <= limit:
        return f'within the DCASE task 1 budget ({stored["total_bytes"]:,} of {limit:,} bytes)'
    return f'NOT within the DCASE task 1 budget: the int8 export stores {stored["total_bytes"]:,} bytes, over {limit:,}'


def score_export(folder, files, batch_size):
    """The class scores [files, classes] of the int8 export in `folder` on audio files."""
    predictor = Predictor(folder, engine='onnxruntime_int8')
    return np.asarray(predictor.scores(list(files), batch_size=batch_size), dtype=np.float64)


def write_yaml(path, data):
    import yaml
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    return path


def count_nonzero(model):
    """Learnt parameters that are not zero (BatchNorm's running statistics are not learnt)."""
    return sum(int(np.count_nonzero(p.numpy())) for p in model.parameters() if not p.stop_gradient)


def eval_files(folder):
    """The .wav files of an evaluation set's audio folder, sorted by name."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith('.wav'))
    if not names:
        raise ArgumentError(f'--eval-audio: {folder} holds no .wav files (give the evaluation set\'s audio/ folder)')
    return [os.path.join(folder, name) for name in names]


# ----------------------------------------------------------------------------- demo helpers

def write_demo_impulse_responses(folder, sample_rate=32000, count=6, seed=0):
    """A folder of `count` generated device impulse responses (16-bit WAV): each a band limit (a
    windowed-sinc band-pass of random cut-offs) with a few early reflections, drawn from the same
    kind of responses as make_tau22_demo's simulated devices but not theirs. Written once."""
    import soundfile as sf
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng((seed, 31337))
    taps = 1023   # 31-Hz resolution at 32 kHz: enough for low cut-offs of 80-400 Hz
    n = np.arange(taps) - taps // 2
    window = np.hamming(taps)
    for k in range(count):
        path = os.path.join(folder, f'device_ir_{k}.wav')
        low, high = rng.uniform(80, 400), sample_rate * rng.uniform(0.12, 0.3)

        def lowpass(cutoff):
            return 2 * cutoff / sample_rate * np.sinc(2 * cutoff / sample_rate * n) * window
        band = lowpass(high) - lowpass(low)
        ir = np.zeros(taps + int(0.006 * sample_rate))
        ir[:taps] += band
        for _ in range(int(rng.integers(2, 5))):
            delay = int(rng.uniform(0.3, 6.0) * sample_rate / 1000)
            ir[delay:delay + taps] += rng.uniform(0.1, 0.5) * rng.choice([-1, 1]) * band
        ir *= 0.9 / np.abs(ir).max()
        if not os.path.isfile(path):
            sf.write(path, ir.astype(np.float32), sample_rate, subtype='PCM_16')
    return folder


def comparison_table(rows):
    """The seen / unseen accuracy of each student run as text."""
    width = max(len(name) for name, _ in rows)
    header = f'{"student":<{width}}  {"seen %":>7}  {"unseen %":>8}  {"gap":>6}  {"macro %":>7}'
    lines = [header, '-' * len(header)]
    for name, r in rows:
        lines.append(f'{name:<{width}}  {100 * r["seen_acc"]:>7.2f}  {100 * r["unseen_acc"]:>8.2f}  '
                     f'{100 * (r["seen_acc"] - r["unseen_acc"]):>6.2f}  {100 * r["macro_acc"]:>7.2f}')
    return '\n'.join(lines)


def what_happened(without, with_tools):
    """One plain sentence on whether the device tools narrowed the seen/unseen gap (its size,
    whichever side is ahead) and how the unseen devices fared."""
    gap_without = without['seen_acc'] - without['unseen_acc']
    gap_with = with_tools['seen_acc'] - with_tools['unseen_acc']
    change = with_tools['unseen_acc'] - without['unseen_acc']
    numbers = f'{100 * gap_without:.2f} points without, {100 * gap_with:.2f} with (seen minus unseen)'
    verdict = 'narrowed' if abs(gap_with) < abs(gap_without) - 1e-9 else 'did not narrow'
    moved = 'did not change' if abs(change) < 1e-9 else \
        f'went {"up" if change > 0 else "down"} by {100 * abs(change):.2f} points'
    return (f'the device tools {verdict} the seen/unseen gap ({numbers}); unseen-device accuracy {moved}. '
            f'One short run on a small generated set: a noisy figure, not a measurement of the method.')


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    started = time.perf_counter()
    fill_defaults(args, DEMO if args.demo else DEFAULTS)
    if args.teacher_checkpoints is not None:
        args.teachers = None
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    summary = {'subset': args.subset}
    if args.demo:
        data_dir = make_tau22_demo(os.path.join(cache_dir(), 'demo_tau22_task1'), seed=args.seed, **DEMO_SET)
        demo_irs = write_demo_impulse_responses(os.path.join(cache_dir(), f'{DEMO_IR_FOLDER}_seed{args.seed}'),
                                                seed=args.seed)
        print(f'demo: the generated TAU22-layout set in {data_dir} ({DEMO_SET["scenes"]} scenes, simulated devices, '
              f's4-s6 in the test split only); teachers {", ".join(args.teachers)} from random weights (no '
              f'pretrained weights offline); generated device impulse responses in {demo_irs}')
    else:
        data_dir = args.data_dir
    train_set = TAU22(data_dir, split='train', subset=args.subset, seed=args.seed)
    test_set = TAU22(data_dir, split='test', subset=args.subset)
    labels = train_set.labels
    summary.update({'train_clips': len(train_set), 'test_clips': len(test_set),
                    'seen_devices': list(train_set.seen_devices),
                    'unseen_devices': [d for d in test_set.device_names if d not in train_set.seen_devices]})

    if args.teacher_checkpoints is not None:
        teacher = args.teacher_checkpoints if len(args.teacher_checkpoints) > 1 else args.teacher_checkpoints[0]
    else:
        teacher = train_teachers(args, data_dir, labels, test_set, summary)

    runs = []   # (name, checkpoint dir, impulse responses, domain weight)
    if args.demo:
        runs.append(('without device tools', 'student_plain', None, 0.0))
        runs.append(('with device tools', 'student_device_tools', args.impulse_responses or demo_irs,
                     args.domain_adversarial))
    else:
        runs.append(('student', 'student', args.impulse_responses, args.domain_adversarial))
    results = []
    for name, folder, irs, weight in runs:
        start = time.perf_counter()
        model = train_student(args, data_dir, labels, os.path.join(args.checkpoint_dir, folder), train_set, teacher,
                              irs, weight)
        scores = score_clips(model, test_set, args.batch_size)
        result = scene_metrics(targets(test_set), scores, test_set.devices, test_set.seen_devices)
        summary[f'student[{name}]'] = {**headline(result), 'seconds': round(time.perf_counter() - start, 1),
                                       'impulse_responses': irs, 'domain_adversarial': weight,
                                       'checkpoint': os.path.join(args.checkpoint_dir, folder, FINAL_MODEL)}
        results.append((name, model, scores, result, irs, weight))

    # The submitted system: the last run (with the device tools in the demo).
    name, model, scores, result, irs, weight = results[-1]
    report = complexity(model, seconds=1)
    try:
        check_dcase_budget(report)
        budget = 'within the DCASE task 1 budget'
    except ArgumentError as exc:
        budget = f'NOT within the DCASE task 1 budget: {exc}'
    summary['complexity'] = {'params': report['params']['total'], 'macs': report['macs_per_second'],
                             'int8_kB': report['param_memory']['int8']['kB'], 'budget': budget}
    export_dir = os.path.join(args.checkpoint_dir, 'export')
    int8 = int8_export(model, export_dir, train_set, test_set, args.seed)
    test_files = [path for path, _ in test_set.items]
    if 'refused' in int8:
        scored_by = f'the float model {summary[f"student[{name}]"]["checkpoint"]}'
        summary['int8'] = {'refused': int8['refused']}
    else:
        # The outputs and the dev figures are the int8 export's: the model whose size is reported.
        scored_by = f'the int8 export {os.path.join(export_dir, "model.int8.onnx")}'
        scores = score_export(export_dir, test_files, args.batch_size)
        result = scene_metrics(targets(test_set), scores, test_set.devices, test_set.seen_devices)
    print(f'\n{args.student} ({name}) on the test split ({len(test_set)} clips; * unseen device), scored by '
          f'{scored_by}:')
    print(scene_table(result, labels))
    if args.demo:
        print('\nthe device tools (impulse responses, domain-adversarial training), seen vs unseen devices '
              '(the float models):')
        print(comparison_table([(n, r) for n, _, _, r, _, _ in results]))
        print(what_happened(results[0][3], results[1][3]))
    print(f'\n{report["model"]}: {report["params"]["total"]:,} parameters ({report["param_memory"]["int8"]["kB"]:g} kB '
          f'at int8), {report["macs_per_second"]:,} MACs per 1-s clip: {budget}')
    if 'refused' in int8:
        print(f'int8 export refused (the float export is kept; the float model scores the outputs, its size '
              f'{report["param_memory"]["fp32"]["kB"]:g} kB): {int8["refused"]}')
    else:
        stored = int8['parameter_memory']
        check = int8['check']
        summary['int8'] = {'parameter_memory': stored, 'budget': int8_budget(stored),
                           'top1_agreement': check['top1_agreement'], 'check_clips': check['clips']}
        print(f'int8 export {export_dir}: it stores {stored["total_bytes"]:,} bytes '
              f'({", ".join(f"{t} {n:,}" for t, n in stored["bytes"].items())}): {summary["int8"]["budget"]}. '
              f'Its top-1 agrees with the float model on {100 * check["top1_agreement"]:.1f}% of {check["clips"]} '
              f'test clips')
    summary['submitted'] = {'scored_by': scored_by, **headline(result)}

    if args.eval_audio is not None:
        files = eval_files(args.eval_audio)
        if 'refused' in int8:
            eval_scores = np.asarray([[r[label] for label in labels] for r in model.predict(files, batch_size=32)])
        else:
            eval_scores = score_export(export_dir, files, 32)
        submission_files, submission_scores, what = files, eval_scores, f'the {len(files)} files of {args.eval_audio}'
    else:
        submission_files, submission_scores = test_files, scores
        what = f'the {len(test_set)} clips of the dev test split'
    label = args.submission_label
    output = write_submission(os.path.join(args.checkpoint_dir, f'{label}.output.split_{args.subset}.csv'),
                              submission_files, submission_scores, labels)
    augmentation = ['Freq-MixStyle'] * (args.freq_mixstyle > 0) + ['device impulse responses'] * bool(irs)
    teachers = args.teachers or [os.path.basename(os.path.normpath(d)) for d in args.teacher_checkpoints]
    settings = {
        'sample_rate': model.frontend_cfg.sample_rate,
        'augmentation': augmentation,
        'pipeline': f'teachers ({", ".join(teachers)}) -> knowledge distillation (lambda {args.kd_lambda:g}, T '
                    f'{args.kd_temperature:g}) -> {args.student}' +
                    (f', domain-adversarial training (weight {weight:g})' if weight else ''),
        'external_data': 'pretrained teachers' if any(summary.get(f'teacher[{t}]', {}).get('pretrained')
                                                      for t in teachers) else None,
        'external_datasets': [{'name': 'AudioSet', 'url': 'https://research.google.com/audioset/',
                               'total_audio_length': 'about 5,800 h'}]
        if any(summary.get(f'teacher[{t}]', {}).get('pretrained') for t in teachers) else None,
    }
    system_name = args.system_name or f'{args.student} distilled from {" + ".join(teachers)}'
    meta = write_yaml(os.path.join(args.checkpoint_dir, f'{label}.meta.yaml'),
                      system_description(label, system_name, report, result, labels, count_nonzero(model), settings,
                                         None if 'refused' in int8 else int8, scored_by))
    summary.update({'submission': output, 'submission_rows': len(submission_files), 'submission_of': what,
                    'submission_scored_by': scored_by,
                    'system_description': meta, 'seconds': round(time.perf_counter() - started, 1)})
    with open(os.path.join(args.checkpoint_dir, 'summary.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f'submission file {output} ({what}); system description {meta}')
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
