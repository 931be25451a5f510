"""Convert a registered model's release checkpoint (PyTorch .pt/.pth) to a Paddle .pdparams file. PyTorch is not needed.

    python tools/convert_panns_torch.py --input Cnn14_mAP=0.431.pth --output panns_cnn14.pdparams --model panns_cnn14
    python tools/convert_panns_torch.py --input mn10_as_mAP_471.pt --output mn10.pdparams --model efficientat_mn10

The same as `paddle-soundcls convert ...` (named for the PANNs files it first converted). The
result loads with Module('panns_cnn14', task='tagging', load_checkpoint='panns_cnn14.pdparams');
Module's load_checkpoint also takes the release file itself.
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
    sys.exit(main(['convert'] + sys.argv[1:]))
