"""Log-mel front ends: `FrontendConfig` (settings), `mel` (numpy math), `LogMel` (Paddle layer)."""
from .config import FrontendConfig


def __getattr__(name):
    # The Paddle layer is imported on first use so that the numpy math stays usable without Paddle.
    if name == 'LogMel':
        from .logmel import LogMel
        return LogMel
    raise AttributeError(name)
