"""The cache (paddle_soundcls.cache): downloads against a local HTTP server (127.0.0.1 only), and the
content-addressed caches' keys."""
import hashlib
import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest

from helpers import spec_with_url
from paddle_soundcls import cache
from paddle_soundcls.cache import DownloadError, check_file, fetch
from paddle_soundcls.models import registry

BODY = bytes(range(256)) * 1000  # 256 kB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `routes[path] = (status, body, content_length)`; records every request path."""
    routes, requests = {}, []

    def do_GET(self):
        type(self).requests.append(self.path)
        status, body, length = self.routes.get(self.path, (404, b'', None))
        if status != 200:
            self.send_error(status)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server:
    def __init__(self):
        self.handler = type('Handler', (_Handler,), {'routes': {}, 'requests': []})
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self.handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()

    def serve(self, path, body=BODY, status=200, content_length=None):
        self.handler.routes[path] = (status, body, content_length)
        return self.url + path

    @property
    def requests(self):
        return self.handler.requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def closed_port():
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def cache_files():
    return sorted(os.listdir(cache.cache_dir()))


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    assert cache.cache_dir() == os.environ['PADDLE_SOUNDCLS_HOME']
    assert os.path.isdir(cache.cache_dir())
    monkeypatch.delenv('PADDLE_SOUNDCLS_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert cache.cache_dir() == str(tmp_path / 'home' / '.cache' / 'paddle_soundcls')


def test_download_lands_in_the_cache_and_is_reused(server):
    url = server.serve('/w.bin')
    path = fetch(url, 'w.bin', md5=hashlib.md5(BODY).hexdigest(), sha256=hashlib.sha256(BODY).hexdigest().upper(),
                 size_range=(len(BODY), len(BODY)), progress=False)
    assert path == os.path.join(os.environ['PADDLE_SOUNDCLS_HOME'], 'w.bin')
    assert open(path, 'rb').read() == BODY
    assert cache_files() == ['w.bin']
    assert fetch(url, 'w.bin', md5=hashlib.md5(BODY).hexdigest(), progress=False) == path
    assert server.requests == ['/w.bin']  # the second fetch made no request


def test_root_argument(server, tmp_path):
    path = fetch(server.serve('/w.bin'), 'w.bin', root=str(tmp_path / 'elsewhere'), progress=False)
    assert path == str(tmp_path / 'elsewhere' / 'w.bin') and cache_files() == []
    with pytest.raises(DownloadError) as info:
        fetch(server.url + '/missing', 'm.bin', root=str(tmp_path / 'elsewhere'), progress=False)
    assert str(tmp_path / 'elsewhere' / 'm.bin') in str(info.value)  # the hint names the real target


@pytest.mark.parametrize('check', [{'md5': '0' * 32}, {'sha256': 'f' * 64}, {'size_range': (1, 1000)}])
def test_a_download_that_fails_its_check_is_not_kept(server, check):
    url = server.serve('/w.bin')
    with pytest.raises(DownloadError) as info:
        fetch(url, 'w.bin', progress=False, **check)
    message = str(info.value)
    assert url in message and next(iter(check)).split('_')[0] in message
    assert cache_files() == []  # no file, no .part leftover


@pytest.mark.parametrize('status', [404, 500])
def test_http_errors_name_the_url_and_the_cache_path(server, status):
    url = server.serve('/w.bin', status=status)
    with pytest.raises(DownloadError) as info:
        fetch(url, 'w.bin', progress=False)
    message = str(info.value)
    assert url in message and str(status) in message
    assert os.path.join(cache.cache_dir(), 'w.bin') in message
    assert cache_files() == []


def test_connection_refused_fails_fast_and_says_what_to_do():
    url = f'http://127.0.0.1:{closed_port()}/w.bin'
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(url, 'w.bin', progress=False)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and os.path.join(cache.cache_dir(), 'w.bin') in message
    assert 'copy it to' in message and 'PADDLE_SOUNDCLS_HOME' in message
    assert cache_files() == []


def test_a_stalling_server_times_out():
    # The kernel completes the connection into the listen backlog; nobody ever answers.
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen(4)
        url = f'http://127.0.0.1:{listener.getsockname()[1]}/w.bin'
        start = time.monotonic()
        with pytest.raises(DownloadError) as info:
            fetch(url, 'w.bin', timeout=0.5, progress=False)
        elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 3
    assert url in str(info.value) and '0.5 s' in str(info.value)
    assert cache_files() == []


def test_a_truncated_body_is_an_error_and_not_cached(server):
    url = server.serve('/w.bin', content_length=2 * len(BODY))
    with pytest.raises(DownloadError) as info:
        fetch(url, 'w.bin', progress=False)
    assert url in str(info.value) and 'closed' in str(info.value)
    assert cache_files() == []


def test_a_retry_succeeds_once_the_server_is_fixed(server):
    url = server.serve('/w.bin', status=500)
    with pytest.raises(DownloadError):
        fetch(url, 'w.bin', progress=False)
    server.serve('/w.bin')
    assert open(fetch(url, 'w.bin', progress=False), 'rb').read() == BODY


def test_a_damaged_cached_file_is_an_error_telling_to_delete_it(server):
    url = server.serve('/w.bin')
    path = os.path.join(cache.cache_dir(), 'w.bin')
    with open(path, 'wb') as f:
        f.write(BODY[:1000])
    md5 = hashlib.md5(BODY).hexdigest()
    with pytest.raises(DownloadError) as info:
        fetch(url, 'w.bin', md5=md5, progress=False)
    message = str(info.value)
    assert path in message and 'Delete it' in message and url in message
    assert server.requests == []  # never silently replaced
    os.remove(path)
    assert open(fetch(url, 'w.bin', md5=md5, progress=False), 'rb').read() == BODY


def test_check_file(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'abc')
    assert check_file(path, md5=hashlib.md5(b'abc').hexdigest(), size_range=(3, 3)) is None
    assert 'size is 3' in check_file(path, size_range=(4, 10))
    assert 'sha256' in check_file(path, sha256='0' * 64)


def test_a_download_is_readable_as_any_new_file(server):
    # The cache may be shared (a team's PADDLE_SOUNDCLS_HOME): a download gets the mode open() gives
    # a new file under the umask, not the owner-only 0600 of a temporary file.
    umask = os.umask(0o022)
    try:
        path = fetch(server.serve('/w.bin'), 'w.bin', progress=False)
    finally:
        os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_one_file_hasher(tmp_path):
    from paddle_soundcls import fileio
    from paddle_soundcls.deploy import exportdir
    path = tmp_path / 'f.bin'
    path.write_bytes(BODY)
    assert cache.file_digest is fileio.file_digest and exportdir.sha256_file is fileio.file_digest
    assert fileio.file_digest(path) == hashlib.sha256(BODY).hexdigest()
    assert fileio.file_digest(path, 'md5') == hashlib.md5(BODY).hexdigest()
    assert exportdir.file_record(path) == {'sha256': hashlib.sha256(BODY).hexdigest(), 'bytes': len(BODY)}


def test_settings_key_ignores_the_order_of_the_settings():
    assert cache.settings_key({'a': 1, 'b': [1, 2]}) == cache.settings_key({'b': [1, 2], 'a': 1})
    assert cache.settings_key({'a': 1}) != cache.settings_key({'a': 2})
    expected = hashlib.sha256(b'{"a": 1, "b": [1, 2]}').hexdigest()
    assert cache.settings_key({'b': [1, 2], 'a': 1}, length=64) == expected


def test_content_cache_keys_on_the_decoders_even_when_the_caller_forgets_them(tmp_path, monkeypatch):
    import json

    from paddle_soundcls import audio
    clip = tmp_path / 'a.wav'
    clip.write_bytes(BODY)
    (result,), todo = cache.content_cache(str(tmp_path / 'c'), {'format': 1}, [str(clip)])
    assert todo == [0] and os.path.basename(result) == hashlib.sha256(BODY).hexdigest() + '.npy'
    with open(os.path.join(os.path.dirname(result), 'settings.json'), encoding='utf-8') as f:
        assert json.load(f) == {'format': 1, **cache.decoding_settings()}
    np.save(result, np.zeros(1))
    assert cache.content_cache(str(tmp_path / 'c'), {'format': 1}, [str(clip)]) == ([result], [])
    # Another resampler gives other samples: the results computed with the old one are not used.
    monkeypatch.setattr(audio, 'RESAMPLER_VERSION', f'{audio.RESAMPLER_VERSION}-next')
    (other,), todo = cache.content_cache(str(tmp_path / 'c'), {'format': 1}, [str(clip)])
    assert todo == [0] and os.path.dirname(other) != os.path.dirname(result)


# ----- Module downloads through the registry -----

@pytest.fixture(scope='module')
def cnn6_file(tmp_path_factory):
    """A real CNN6 state dict (random weights, official names), as the official file would hold."""
    import paddle
    from paddle_soundcls.models.panns import ARCHITECTURES
    paddle.seed(0)
    state = ARCHITECTURES['cnn6']().state_dict()
    path = str(tmp_path_factory.mktemp('weights') / 'panns_cnn6.pdparams')
    paddle.save(state, path)
    return path, {k: v.numpy() for k, v in state.items()}


def point_registry_at(monkeypatch, url):
    cfg = spec_with_url('panns_cnn6', url)
    monkeypatch.setitem(registry._MODELS, 'panns_cnn6', cfg)


def test_module_downloads_and_loads_the_registry_weights(server, cnn6_file, monkeypatch):
    from paddle_soundcls import Module
    path, state = cnn6_file
    url = server.serve('/panns_cnn6.pdparams', open(path, 'rb').read())
    point_registry_at(monkeypatch, url)
    tagger = Module(name='panns_cnn6', task=None)
    assert cache_files() == ['panns_cnn6.pdparams']
    np.testing.assert_array_equal(tagger.backbone.conv_block1.conv1.weight.numpy(), state['conv_block1.conv1.weight'])
    np.testing.assert_array_equal(tagger.backbone.fc_audioset.weight.numpy(), state['fc_audioset.weight'])
    np.testing.assert_array_equal(tagger.backbone.bn0._mean.numpy(), state['bn0._mean'])
    classifier = Module(name='panns_cnn6', num_class=3)  # the cached file, a new head
    np.testing.assert_array_equal(classifier.backbone.fc1.weight.numpy(), state['fc1.weight'])
    assert server.requests == ['/panns_cnn6.pdparams']


def test_module_offline_raises_download_error_quickly(monkeypatch):
    from paddle_soundcls import Module
    url = f'http://127.0.0.1:{closed_port()}/panns_cnn6.pdparams'
    point_registry_at(monkeypatch, url)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        Module(name='panns_cnn6')  # the weights are fetched before anything else is asked
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and os.path.join(cache.cache_dir(), 'panns_cnn6.pdparams') in message
    assert cache_files() == []
