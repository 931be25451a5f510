"""Reading PyTorch checkpoints without PyTorch: moved to paddle_soundcls.checkpoints.torchfile."""
# moved to paddle_soundcls/checkpoints/torchfile.py; this shim goes in the final pass
import sys

from .checkpoints import torchfile

sys.modules[__name__] = torchfile
