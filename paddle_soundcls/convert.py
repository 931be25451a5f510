"""Converting checkpoint files: moved to paddle_soundcls.models.builder and paddle_soundcls.checkpoints.files."""
# moved to paddle_soundcls/models/builder.py and checkpoints/files.py; this shim goes in the final pass
from .checkpoints.files import file_format, read_params, save_pdparams  # noqa: F401
from .models.builder import (DEPRECATED_NAMES, convert_file, convert_state, model_name,  # noqa: F401
                             network_shapes)
