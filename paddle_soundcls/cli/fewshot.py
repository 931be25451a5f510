"""`paddle-soundcls fewshot BASE DATA --output CKPT_DIR`: a classifier from a handful of labelled clips,
the nearest class centroid of a pretrained backbone's embeddings (paddle_soundcls.fewshot), saved as a
checkpoint to export, serve or fine-tune like any other."""
import json
import os

from .common import UsageError


def add_parser(subparsers):
    p = subparsers.add_parser('fewshot', help='a classifier from a few labelled clips per class, without training '
                              '(nearest class centroid of the embeddings)')
    p.add_argument('base', help='a registered model name (its pretrained AudioSet tagger) or a checkpoint directory '
                                 'whose backbone embeds the clips')
    p.add_argument('data', help='a folder with one sub-folder of clips per class')
    p.add_argument('--output', required=True, help='the checkpoint directory to write (replaced only once complete)')
    p.add_argument('--scale', type=float, default=10.0, help='logit at a centroid (softmax temperature; default 10)')
    return p


def run(args):
    from ..ensemble import load_module
    from ..fewshot import centroid_classifier
    from ..models import registry
    if os.path.isdir(args.base):
        base = load_module(args.base)
    elif args.base in registry.list_models():
        base = load_module(model=args.base, task='tagging')
    else:
        raise UsageError(f'{args.base} is neither a checkpoint directory nor a registered model name (one of '
                         f'{", ".join(registry.list_models())})')
    classifier = centroid_classifier(base, args.data, scale=args.scale)
    classifier.save(args.output)
    print(json.dumps({'output': os.path.abspath(args.output), 'model': classifier.name, 'labels': classifier.labels},
                     ensure_ascii=False))
    return 0
