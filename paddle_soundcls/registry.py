"""The model registry: moved to paddle_soundcls.models.registry."""
# moved to paddle_soundcls/models/registry.py; this shim goes in the final pass
import sys

from .models import registry

# This name is the registry module itself (one _MODELS table), not a copy of its names.
sys.modules[__name__] = registry
