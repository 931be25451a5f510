"""Export a fine-tuned checkpoint (or the pretrained AudioSet tagger) as a Paddle static model.

    python tools/export_static.py --checkpoint ckpt/best_model --output exported
    python tools/export_static.py --model panns_cnn14 --task tagging --output tagger   # weights in the cache

The same as `paddle-soundcls export --no-onnx ...`: writes OUTPUT/inference.json +
inference.pdiparams (Paddle Inference) and export.json. Convert to ONNX next with
tools/export_onnx.py (or use `paddle-soundcls export`, which does both).
"""
import os
import sys

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(['export', '--no-onnx'] + sys.argv[1:]))
