"""Checkpoint files and meta.json: moved to paddle_soundcls.checkpoints (pdparams, files, schema)."""
# moved to paddle_soundcls/checkpoints/; this shim goes in the final pass
from .checkpoints.files import PARAMS_FILE, resolve  # noqa: F401
from .checkpoints.pdparams import load_params, load_state  # noqa: F401
from .checkpoints.schema import META_FILE, read_meta  # noqa: F401
from .checkpoints.schema import META_FORMAT as FORMAT  # noqa: F401
from .errors import CheckpointError, UnsafeCheckpointError  # noqa: F401
