"""The cache and downloads: moved to paddle_soundcls.cache."""
# moved to paddle_soundcls/cache.py; this shim goes in the final pass
import sys

from . import cache

# This name is the cache module itself, not a copy of its names: a test or caller that sets
# weights.DEFAULT_TIMEOUT or weights.file_digest changes what cache.fetch and cache.content_cache use.
sys.modules[__name__] = cache
