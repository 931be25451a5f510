"""`paddle-soundcls ensemble`: several models saved as one (a folder you can name wherever a
checkpoint goes: predict, tag, events, export, a distillation teacher)."""
import json
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
    ensemble = Ensemble(args.members, weights=args.weights)
    ensemble.save(args.output)
    print(json.dumps({'output': os.path.abspath(args.output), 'task': ensemble.task, 'classes': len(ensemble.labels),
                      'members': ensemble.settings()['members']}, indent=2, ensure_ascii=False))
    return 0
