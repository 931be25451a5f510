"""Convert an export directory's static model to ONNX (paddle2onnx, offline), optionally checking parity.

    python tools/export_onnx.py --model-dir exported --output exported/model.onnx --opset 13
    python tools/export_onnx.py --model-dir exported --check data/ESC-50-master
    python tools/export_onnx.py --model-dir exported --check data/dev --quantize int8 --calibration data/calib

The same as `paddle-soundcls export --model-dir ...`; see `paddle-soundcls export --help`.
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
    sys.exit(main(['export'] + sys.argv[1:]))
