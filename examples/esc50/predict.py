"""Print the top-k labels of audio files with a fine-tuned checkpoint.

    python examples/esc50/predict.py --checkpoint ckpt/best_model dog.wav rain.wav --topk 3
"""
import argparse
import json
import os
import sys

from paddle_soundcls.scripts import run_script, silence_third_party_noise

silence_third_party_noise()  # before Paddle is imported: its import warns about a compiler cache

from paddle_soundcls import Module  # noqa: E402
from paddle_soundcls.checkpoints.schema import read_meta  # noqa: E402
from paddle_soundcls.errors import ArgumentError  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='a checkpoint directory written by train.py (e.g. ckpt/best_model)')
    p.add_argument('audio', nargs='+', help='audio files (any sample rate / channel count)')
    p.add_argument('--top-k', '--topk', dest='top_k', type=int, default=5, help='labels per clip (--topk: the old spelling)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--device', default='cpu', choices=['cpu', 'gpu'])
    args = p.parse_args(argv)
    meta = read_meta(args.checkpoint) if os.path.isdir(args.checkpoint) else None
    if meta is None:
        raise ArgumentError(f'--checkpoint {args.checkpoint} is not a checkpoint directory written by train.py (no meta.json)')
    model = Module(name=meta['model'], load_checkpoint=args.checkpoint)
    results = model.predict(args.audio, sample_rate=None, batch_size=args.batch_size, use_gpu=args.device == 'gpu',
                            top_k=args.top_k)
    for path, result in zip(args.audio, results):
        print(json.dumps({'file': path, 'top': [[label, round(score, 4)] for label, score in result.items()]}))
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
