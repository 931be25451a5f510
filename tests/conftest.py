import os

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty weights cache: nothing leaks between tests or from the user."""
    monkeypatch.setenv('PADDLE_SOUNDCLS_HOME', str(tmp_path / 'cache'))



from helpers import WEIGHTS_ONLY_TWINS  # noqa: E402

FAMILY_TEST_FILES = ('test_dymn.py', 'test_passt.py')


@pytest.hookimpl(tryfirst=True)   # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        if os.path.basename(str(item.fspath)) not in FAMILY_TEST_FILES and \
                any(isinstance(v, str) and v in WEIGHTS_ONLY_TWINS for v in params.values()):
            item.add_marker(pytest.mark.slow)
