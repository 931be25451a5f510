import os

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty weights cache: nothing leaks between tests or from the user."""
    monkeypatch.setenv('PADDLE_SOUNDCLS_HOME', str(tmp_path / 'cache'))



# Registered models that are another registered model's network with other weights files (the
# ImageNet-initialised DyMNs, the other PaSST-S releases): the tests generated for every model
# run the same code for them as for their twin, so there they are slow tests; their own family's
# tests (tests/test_dymn.py, tests/test_passt.py) still run them by default.
WEIGHTS_ONLY_TWINS = {'efficientat_dymn04_im': 'efficientat_dymn04', 'efficientat_dymn10_im': 'efficientat_dymn10',
                      'efficientat_dymn20_im': 'efficientat_dymn20',
                      'passt_s_swa_p16_128_ap4761': 'passt_s_swa_p16_128_ap476',
                      'passt_s_p16_128_ap472': 'passt_s_swa_p16_128_ap476'}
FAMILY_TEST_FILES = ('test_dymn.py', 'test_passt.py')


@pytest.hookimpl(tryfirst=True)   # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        if os.path.basename(str(item.fspath)) not in FAMILY_TEST_FILES and \
                any(isinstance(v, str) and v in WEIGHTS_ONLY_TWINS for v in params.values()):
            item.add_marker(pytest.mark.slow)
