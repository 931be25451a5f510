"""Convert an official PyTorch PANNs checkpoint to a Paddle .pdparams file. PyTorch is not needed.

    python tools/convert_panns_torch.py --input Cnn14_mAP=0.431.pth --output panns_cnn14.pdparams --model cnn14

The result loads with Module('panns_cnn14', task=None, load_checkpoint='panns_cnn14.pdparams').
"""
import argparse
import os
import sys

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.checkpoint import CheckpointError  # noqa: E402
from paddle_soundcls.convert import (MEL_KEY, STFT_KEYS, build_backbone, convert_panns_state,  # noqa: E402
                                     save_pdparams, strip_module_prefix)
from paddle_soundcls.features.config import FrontendConfig  # noqa: E402
from paddle_soundcls.torch_checkpoint import load_state_dict  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True,
                        help='PyTorch checkpoint (.pth, zip or legacy format), e.g. Cnn14_mAP=0.431.pth')
    parser.add_argument('--output', required=True, help='Paddle parameters to write, e.g. panns_cnn14.pdparams')
    parser.add_argument('--model', required=True, choices=['cnn14', 'cnn10', 'cnn6'],
                        help='architecture of the checkpoint')
    small = parser.add_argument_group('testing', 'convert for a smaller network of the same kind as --model '
                                      '(used by the tests; give --channels and --emb-size together)')
    small.add_argument('--channels', help='output channels of each conv block, comma-separated, e.g. 4,8')
    small.add_argument('--emb-size', type=int, help='embedding size (fc1 outputs)')
    small.add_argument('--n-mels', type=int, default=64, help='mel bins (default: %(default)s)')
    args = parser.parse_args(argv)
    if (args.channels is None) != (args.emb_size is None):
        parser.error('--channels and --emb-size go together')
    if args.channels is not None:
        try:
            args.channels = [int(c) for c in args.channels.split(',')]
        except ValueError:
            parser.error(f'--channels must be comma-separated integers, got {args.channels!r}')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        torch_state = load_state_dict(args.input)
        target = args.model
        if args.channels is not None or args.n_mels != 64:
            target = build_backbone(args.model, args.channels, args.emb_size, args.n_mels, lazy=True)
        frontend = FrontendConfig(n_mels=args.n_mels)
        state = convert_panns_state(torch_state, target, frontend, source=args.input)
        save_pdparams(state, args.output)
    except (CheckpointError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    torch_state = strip_module_prefix(torch_state)
    frontend_keys = [k for k in torch_state if k in STFT_KEYS or k == MEL_KEY]
    counters = [k for k in torch_state if k.endswith('.num_batches_tracked')]
    num_values = sum(v.size for v in state.values())
    print(f'read {len(torch_state)} tensors from {args.input}')
    print(f'wrote {len(state)} tensors ({num_values:,} values) to {args.output}')
    if frontend_keys:
        print(f'dropped {len(frontend_keys)} front-end buffers (our front end computes them): '
              + ', '.join(frontend_keys))
    if counters:
        print(f'dropped {len(counters)} BatchNorm num_batches_tracked counters')
    if MEL_KEY in torch_state:
        print(f'mel filters match our front end ({frontend.sample_rate} Hz, n_fft {frontend.n_fft}, '
              f'{frontend.n_mels} mel bins, {frontend.f_min}-{frontend.f_max} Hz)')
    else:
        print(f'note: the checkpoint has no {MEL_KEY}, so its front-end settings could not be checked')
    if args.channels is None:
        print(f"load it with Module('panns_{args.model}', task=None, load_checkpoint={args.output!r})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
