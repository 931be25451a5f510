import os

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty weights cache: nothing leaks between tests or from the user."""
    monkeypatch.setenv('PADDLE_SOUNDCLS_HOME', str(tmp_path / 'cache'))

