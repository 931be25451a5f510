"""`paddle-soundcls convert`: a registered model's release checkpoint (PyTorch .pt/.pth) -> a
Paddle .pdparams file in its own names (PyTorch not needed)."""
from .common import PROG, note


def add_parser(subparsers):
    p = subparsers.add_parser('convert', help="a model's release checkpoint (PyTorch .pt/.pth) to a Paddle .pdparams "
                              'file (no PyTorch needed)')
    p.add_argument('--input', required=True,
                   help='the checkpoint: a PyTorch file (zip or legacy format), e.g. Cnn14_mAP=0.431.pth or '
                        "mn10_as_mAP_471.pt, or any other layout the model's family accepts")
    p.add_argument('--output', required=True, help='Paddle parameters to write, e.g. efficientat_mn10.pdparams')
    p.add_argument('--model', required=True,
                   help='the registered model the checkpoint is for, e.g. panns_cnn14 or efficientat_mn10 (an '
                        'unknown name lists them all); cnn14, cnn10 and cnn6 are deprecated names of the '
                        'panns_ models')
    return p


def run(args):
    from ..models.builder import DEPRECATED_NAMES, convert_file
    model = args.model
    if model in DEPRECATED_NAMES:
        note(f'--model {model} is deprecated; use --model {DEPRECATED_NAMES[model]}', prog=f'{PROG} convert')
        model = DEPRECATED_NAMES[model]
    for line in convert_file(args.input, args.output, model):
        print(line)
    return 0
