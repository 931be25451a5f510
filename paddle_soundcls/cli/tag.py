"""`paddle-soundcls tag INPUTS`: the 527 AudioSet tags of audio, with a registered tagger or a
tagging checkpoint / export directory (the options and output of predict)."""
from .predict import DEFAULT_TAGGER, add_output_args, classify


def add_parser(subparsers):
    p = subparsers.add_parser('tag', help='the 527 AudioSet tags of audio')
    p.add_argument('--model', default=None,
                   help=f'pretrained tagger, a registered model name (weights from the cache, downloaded once; '
                        f'default {DEFAULT_TAGGER})')
    p.add_argument('--model-dir', default=None, help='a tagging checkpoint or export directory instead')
    add_output_args(p, top_k=10)
    return p


def run(args):
    return classify(args, tagging=True)
