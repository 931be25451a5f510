"""Offline stand-ins for what the docs' examples would download, for the docs test.

- Pretrained weights: `models.builder.pretrained_state` returns random weights of the model's own
  network (seeded by its name, so every process gets the same ones) instead of fetching the
  official file.
- Anything else the package would download (ESC-50, weights of another path) fails at once,
  naming the URL, so a block that needs the network cannot pass by accident.

`install()` patches the package in this process; `sitecustomize_source()` is the text of a
sitecustomize.py that calls install() in every Python process started with it on PYTHONPATH
(the `python ...` and `paddle-soundcls ...` commands of shell blocks). The patch is applied when
paddle_soundcls.models.builder is first imported, so commands that never import Paddle stay so.
"""
import contextlib
import importlib.abc
import importlib.util
import sys
import zlib

BUILDER = 'paddle_soundcls.models.builder'
CACHE = 'paddle_soundcls.cache'


def random_pretrained_state(spec):
    """({name: array}, source) of a randomly initialised network of `spec`, in its own parameter names."""
    import paddle
    state = paddle.get_rng_state()
    paddle.seed(zlib.crc32(spec.name.encode()))
    try:
        network = spec.build(audioset_head=spec.audioset_head is not None)
        weights = {name: value.numpy() for name, value in network.state_dict().items()}
    finally:
        paddle.set_rng_state(state)
    return weights, f'random weights standing in for {spec.weights.filename} (docs test)'


def refuse_download(url, *args, **kwargs):
    raise RuntimeError(f'the docs test runs offline: {url} would be downloaded; give the block an offline '
                       f'substitute (tests/docs_runner.py) or a docs-test marker')


def _patch(module):
    if module.__name__ == BUILDER:
        module.pretrained_state = random_pretrained_state
    elif module.__name__ == CACHE:
        module._download = refuse_download


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the two patched modules so the patch follows their import."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in (BUILDER, CACHE):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install():
    """Patch the builder and the cache for good (a docs page's subprocesses, via sitecustomize)."""
    for name in (BUILDER, CACHE):
        if name in sys.modules:
            _patch(sys.modules[name])
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


@contextlib.contextmanager
def installed():
    """The patches for the python blocks of a page run in this process, undone afterwards so
    the rest of the test suite downloads (from its local servers) and builds as it always does."""
    import paddle_soundcls.cache as cache
    import paddle_soundcls.models.builder as builder
    saved = builder.pretrained_state, cache._download
    install()
    try:
        yield
    finally:
        builder.pretrained_state, cache._download = saved
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PatchOnImport)]


def sitecustomize_source():
    return (f'import importlib.util\n'
            f'_spec = importlib.util.spec_from_file_location("docs_offline", {__file__!r})\n'
            f'_module = importlib.util.module_from_spec(_spec)\n'
            f'_spec.loader.exec_module(_module)\n'
            f'_module.install()\n')
