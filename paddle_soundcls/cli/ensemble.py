"""`paddle-soundcls ensemble`: several models saved as one (a folder you can name wherever a
checkpoint goes: predict, tag, events, export, a distillation teacher)."""
import json
import math
import os

from .common import UsageError


def add_parser(subparsers):
    p = subparsers.add_parser('ensemble', help='save several models as one ensemble (the weighted mean of their '
                              'logits), usable wherever a checkpoint is')
    p.add_argument('members', nargs='+', metavar='MEMBER',
                   help='two or more fine-tuned checkpoint directories, or registered model names (their pretrained '
                        'AudioSet taggers), with the same labels')
    p.add_argument('--output', required=True, help='the ensemble folder to write (replaced only once complete)')
    p.add_argument('--weights', nargs='+', type=float, default=None, metavar='W',
                   help='one non-negative weight per member (default: equal)')
    return p


def run(args):
    from ..ensemble import Ensemble
    if args.weights is not None and len(args.weights) != len(args.members):
        raise UsageError(f'--weights: give one weight per member ({len(args.members)}), got {len(args.weights)}')
    if args.weights is not None:
        for member, weight in zip(args.members, args.weights):
            if not (math.isfinite(weight) and weight >= 0):
                raise UsageError(f'--weights: {weight:g} (the weight of {member}) must be a finite number >= 0')
        if not 0 < sum(args.weights) < math.inf:
            raise UsageError(f'--weights: {" ".join(f"{w:g}" for w in args.weights)}: at least one member needs a '
                             f'positive weight, and their sum must be finite (only their ratios matter)')
    check_output(args.output, args.members)
    ensemble = Ensemble(args.members, weights=args.weights)
    ensemble.save(args.output)
    print(json.dumps({'output': os.path.abspath(args.output), 'task': ensemble.task, 'classes': len(ensemble.labels),
                      'members': ensemble.settings()['members']}, indent=2, ensure_ascii=False))
    return 0


def check_output(output, members):
    """The ensemble folder must not be, hold or lie inside a member (saving replaces the whole folder)."""
    if not output:
        raise UsageError('--output: an empty path; name the ensemble folder to write')
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f'--output: {output} is a file; name a folder to write')
    target = os.path.realpath(output)
    for member in members:
        if not os.path.isdir(member):   # a registered model name
            continue
        source = os.path.realpath(member)
        if target == source or source.startswith(target + os.sep) or target.startswith(source + os.sep):
            raise UsageError(f'--output: {output} would replace member {member} (the ensemble folder is written '
                             f'whole, over whatever is there): name a folder outside the members')
