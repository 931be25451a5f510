"""Export a fine-tuned checkpoint (or the pretrained AudioSet tagger) as a Paddle static model.

    python tools/export_static.py --checkpoint ckpt/best_model --output exported
    python tools/export_static.py --model panns_cnn14 --task tagging --output tagger   # weights in the cache

Writes OUTPUT/inference.json + inference.pdiparams (paddle.jit.save, for Paddle Inference) and
export.json (labels, front end, file checksums). The graph takes log-mel features
[batch, frames, 64] float32 (batch and frames dynamic) and outputs scores: softmax for
sound-cls, sigmoid for tagging. OUTPUT is replaced only once the new export is complete.
Convert to ONNX next with tools/export_onnx.py.
"""
import argparse
import json
import os
import sys

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.cli import UsageError, run_guarded  # noqa: E402


def export(args):
    from paddle_soundcls.export import export_static, load_module
    if args.checkpoint is None and args.model is None:
        raise UsageError('pass --checkpoint CKPT_DIR (a fine-tuned model) or --model NAME --task tagging')
    meta = export_static(load_module(args.checkpoint, model=args.model, task=args.task), args.output)
    print(json.dumps({'output': os.path.abspath(args.output), 'model': meta['model'], 'task': meta['task'],
                      'classes': len(meta['labels']), 'files': meta['files']}, indent=2))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', default=None, help='fine-tuned checkpoint directory (model.pdparams + meta.json)')
    parser.add_argument('--model', default=None, help='model name: the pretrained tagger with --task tagging, or for '
                        'a checkpoint without meta.json')
    parser.add_argument('--task', choices=('sound-cls', 'tagging'), default='sound-cls')
    parser.add_argument('--output', required=True, help='export directory to write')
    return run_guarded(export, parser.parse_args(argv), prog='export_static')


if __name__ == '__main__':
    sys.exit(main())
