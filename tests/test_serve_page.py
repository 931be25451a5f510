"""The page at / in a real headless browser (Debian's chromium, driven by selenium through
chromium-driver): upload a generated WAV, read the rendered labels and bars.

Skipped when chromium is absent, except in CI (CI set), where a missing browser fails:
install it with `apt-get install -y chromium chromium-driver`.
"""
import os
import shutil

import httpx
import pytest

from paddle_soundcls.deploy import Predictor
from paddle_soundcls.serve.app import create_app
from serve_fixtures import make_export_dir, serve_in_thread, wav_bytes

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMEDRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-dev-shm-usage')


def require_browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if not missing:
        return
    message = f'{", ".join(missing)} not found: apt-get install -y chromium chromium-driver'
    if os.environ.get('CI'):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f'--user-data-dir={tmp_path / "profile"}')   # a fresh profile every time
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope='module')
def url(tmp_path_factory):
    predictor = Predictor(make_export_dir(tmp_path_factory.mktemp('serve_page') / 'export'))
    with serve_in_thread(create_app(predictor)) as base:
        yield base


def test_page_classifies_an_uploaded_wav(url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / 'tone.wav'
    clip.write_bytes(wav_bytes(1.5, 22050, freq=660.0))
    expected = httpx.post(url + '/v1/classify', content=clip.read_bytes(), headers={'content-type': 'audio/wav'},
                          timeout=30).json()['results']

    browser.get(url + '/')
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: 'panns_cnn6' in d.find_element(By.ID, 'model').text)
    assert '3 labels' in browser.find_element(By.ID, 'model').text

    browser.find_element(By.ID, 'file').send_keys(str(clip))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#results li'))
    rows = browser.find_elements(By.CSS_SELECTOR, '#results li')
    labels = [row.find_element(By.CLASS_NAME, 'label').text for row in rows]
    scores = [row.find_element(By.CLASS_NAME, 'score').text for row in rows]
    widths = [row.find_element(By.CSS_SELECTOR, '.bar > div').get_attribute('style') for row in rows]
    assert labels == [r['label'] for r in expected]
    assert scores == [f'{r["score"]:.3f}' for r in expected]
    assert all('width' in style for style in widths)
    assert 'tone.wav' in browser.find_element(By.ID, 'status').text
    assert not browser.find_element(By.ID, 'error').is_displayed()
    # The timeline: the events /v1/events finds, one track per label, or "nothing detected".
    events = httpx.post(url + '/v1/events', content=clip.read_bytes(), headers={'content-type': 'audio/wav'},
                        timeout=30).json()['events']
    wait.until(lambda d: d.find_element(By.ID, 'timeline-status').text)
    if events:
        bars = browser.find_elements(By.CSS_SELECTOR, '#timeline .event')
        assert len(bars) == len(events)
        assert sorted(b.get_attribute('title').split(':')[0] for b in bars) == sorted(e['label'] for e in events)
        assert f'{len(events)} events' in browser.find_element(By.ID, 'timeline-status').text
    else:
        assert 'Nothing detected' in browser.find_element(By.ID, 'timeline-status').text
    browser.save_screenshot(str(tmp_path / 'page.png'))
    assert (tmp_path / 'page.png').stat().st_size > 1000

    # A file that is not audio: the server's message is shown, and no stale results.
    text = tmp_path / 'notes.wav'
    text.write_text('not audio at all')
    browser.find_element(By.ID, 'file').send_keys(str(text))
    wait.until(lambda d: d.find_element(By.ID, 'error').is_displayed())
    assert 'not readable as audio' in browser.find_element(By.ID, 'error').text
    assert browser.find_elements(By.CSS_SELECTOR, '#results li') == []
