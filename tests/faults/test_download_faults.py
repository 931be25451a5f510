"""Downloads of weights and of the ESC-50 archive against a misbehaving local server
(127.0.0.1 only): whatever fails, the cache ends up without partial or wrong files, the
error names the URL and says what to do, and a retry succeeds once the server is fixed.

tests/test_weights.py covers a plain fetch failing with 404/500, refused connections, a
server that never answers, a short body and checksum mismatches; here are the rest.
"""
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile

import pytest

from faultkit import HERE, child_env, closed_port, kill_at_marker
from helpers import spec_with_url
from paddle_soundcls import cache
from paddle_soundcls.models import registry
from paddle_soundcls.datasets import ESC50, DatasetError, esc50
from test_datasets import make_esc50

CHILD = os.path.join(HERE, 'download_child.py')
BODY = bytes(range(256)) * 8192  # 2 MB
SHA = hashlib.sha256(BODY).hexdigest()


def cache_listing():
    return sorted(os.listdir(cache.cache_dir()))


def start(*args):
    return subprocess.Popen([sys.executable, CHILD, *args], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out.strip()


# ----- weights -----

def test_two_processes_fetch_the_same_file_at_once(server):
    url = server.serve('/w.bin', BODY, chunk_delay=0.1)  # about 2 s per download: they overlap
    procs = [start('fetch', url, 'w.bin', SHA) for _ in range(2)]
    paths = [finish(p) for p in procs]
    target = os.path.join(cache.cache_dir(), 'w.bin')
    assert paths == [target, target]
    assert server.requests == ['/w.bin', '/w.bin']  # both downloaded: the race did happen
    assert cache_listing() == ['w.bin'] and open(target, 'rb').read() == BODY


def test_a_download_killed_midway_is_cleaned_up_by_the_next_one(server):
    url = server.serve('/w.bin', BODY, stall_after=len(BODY) // 2)
    proc = start('fetch', url, 'w.bin', SHA)
    try:
        deadline = time.monotonic() + 60
        while not any(name.startswith('.w.bin~') and os.path.getsize(os.path.join(cache.cache_dir(), name))
                      for name in cache_listing()):
            assert time.monotonic() < deadline and proc.poll() is None, 'the download never started'
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    assert [name for name in cache_listing() if not name.startswith('.')] == []  # only a hidden partial file
    server.serve('/w.bin', BODY)
    path = cache.fetch(url, 'w.bin', sha256=SHA, progress=False)
    assert open(path, 'rb').read() == BODY
    assert cache_listing() == ['w.bin']  # the killed process's partial file is gone


def test_a_server_that_stalls_mid_body_times_out(server):
    url = server.serve('/w.bin', BODY, stall_after=len(BODY) // 2)
    start_time = time.monotonic()
    with pytest.raises(cache.DownloadError) as info:
        cache.fetch(url, 'w.bin', sha256=SHA, timeout=0.5, progress=False)
    assert time.monotonic() - start_time < 5
    assert url in str(info.value) and '0.5 s' in str(info.value)
    assert cache_listing() == []
    server.serve('/w.bin', BODY)
    assert open(cache.fetch(url, 'w.bin', sha256=SHA, progress=False), 'rb').read() == BODY


def test_a_body_cut_short_without_content_length_fails_its_checksum(server):
    url = server.serve('/w.bin', BODY[:len(BODY) // 3], length=None)  # the end of the body is the end of the stream
    with pytest.raises(cache.DownloadError, match='is corrupt: its sha256') as info:
        cache.fetch(url, 'w.bin', sha256=SHA, progress=False)
    assert url in str(info.value) and 'Nothing was saved' in str(info.value)
    assert cache_listing() == []
    server.serve('/w.bin', BODY, length=None)
    assert open(cache.fetch(url, 'w.bin', sha256=SHA, progress=False), 'rb').read() == BODY


@pytest.fixture(scope='module')
def cnn6_bytes():
    import paddle

    from paddle_soundcls.models.panns import ARCHITECTURES
    paddle.seed(0)
    buffer = io.BytesIO()
    paddle.save(ARCHITECTURES['cnn6']().state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize('fault', ['http-500', 'cut-short', 'wrong-file'])
def test_module_weights_download_fails_cleanly_then_succeeds(server, monkeypatch, cnn6_bytes, fault):
    from paddle_soundcls import Module
    url = server.url + '/panns_cnn6.pdparams'
    monkeypatch.setitem(registry._MODELS, 'panns_cnn6', spec_with_url('panns_cnn6', url))
    if fault == 'http-500':
        server.serve('/panns_cnn6.pdparams', status=500)
    elif fault == 'cut-short':
        server.serve('/panns_cnn6.pdparams', cnn6_bytes, length=len(cnn6_bytes) + 1000)
    else:  # an error page served with status 200
        server.serve('/panns_cnn6.pdparams', b'<html>rate limited</html>')
    with pytest.raises(cache.DownloadError) as info:
        Module('panns_cnn6', task=None)
    assert url in str(info.value) and os.path.join(cache.cache_dir(), 'panns_cnn6.pdparams') in str(info.value)
    assert cache_listing() == []
    server.serve('/panns_cnn6.pdparams', cnn6_bytes)
    tagger = Module('panns_cnn6', task=None)
    assert tagger.num_class == 527 and cache_listing() == ['panns_cnn6.pdparams']


# ----- the ESC-50 archive -----

@pytest.fixture(scope='module')
def esc50_zip(tmp_path_factory):
    base = tmp_path_factory.mktemp('esc50_src')
    make_esc50(base / 'src' / 'ESC-50-master')
    with open(shutil.make_archive(str(base / 'master'), 'zip', root_dir=base / 'src'), 'rb') as f:
        return f.read()


def with_bad_crc(data):
    """The archive with one byte of one clip's compressed data changed: only unpacking notices."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith('.wav'))
    local_header = data[info.header_offset:info.header_offset + 30]
    start = (info.header_offset + 30 + int.from_bytes(local_header[26:28], 'little')
             + int.from_bytes(local_header[28:30], 'little'))
    at = start + info.compress_size // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def zip_without_the_folder():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        z.writestr('something-else/readme.txt', 'not ESC-50')
    return buffer.getvalue()


ESC50_FAULTS = ['http-404', 'http-500', 'refused', 'no-answer', 'stall-mid-body', 'cut-short', 'not-a-zip',
                'no-esc50-folder', 'bad-crc']


@pytest.mark.parametrize('fault', ESC50_FAULTS)
def test_esc50_download_fails_cleanly_then_succeeds(server, monkeypatch, esc50_zip, fault):
    monkeypatch.setattr(cache, 'DEFAULT_TIMEOUT', 0.5)
    good_url = server.url + '/master.zip'
    url = good_url
    listener = None
    if fault == 'refused':
        url = f'http://127.0.0.1:{closed_port()}/master.zip'
    elif fault == 'no-answer':  # the kernel accepts the connection; nobody ever answers
        listener = socket.socket()
        listener.bind(('127.0.0.1', 0))
        listener.listen(4)
        url = f'http://127.0.0.1:{listener.getsockname()[1]}/master.zip'
    elif fault.startswith('http-'):
        server.serve('/master.zip', status=int(fault[5:]))
    else:
        body = {'stall-mid-body': esc50_zip, 'cut-short': esc50_zip, 'not-a-zip': b'<html>Not Found</html>',
                'no-esc50-folder': zip_without_the_folder(), 'bad-crc': with_bad_crc(esc50_zip)}[fault]
        server.serve('/master.zip', body, stall_after=len(body) // 2 if fault == 'stall-mid-body' else None,
                     length=len(body) * 2 if fault == 'cut-short' else 'auto')
    monkeypatch.setattr(esc50, 'ESC50_URL', url)
    try:
        with pytest.raises((cache.DownloadError, DatasetError)) as info:
            ESC50('dev', split=2, duration=0.2)
    finally:
        if listener is not None:
            listener.close()
    message = str(info.value)
    assert url in message and 'unpack ESC-50 yourself' in message and 'meta/esc50.csv' in message
    assert cache_listing() == []  # no archive, no folder, no temporary file

    server.serve('/master.zip', esc50_zip)
    monkeypatch.setattr(esc50, 'ESC50_URL', good_url)
    ds = ESC50('dev', split=2, duration=0.2)
    assert len(ds) == 3 and cache_listing() == ['ESC-50-master']


def test_two_processes_download_esc50_at_once(server, esc50_zip):
    url = server.serve('/master.zip', esc50_zip, chunk_delay=0.1)
    procs = [start('esc50', url) for _ in range(2)]
    folders = [finish(p) for p in procs]
    target = os.path.join(cache.cache_dir(), 'ESC-50-master')
    assert folders == [target, target]
    assert len(server.requests) == 2
    assert cache_listing() == ['ESC-50-master']
    assert len(os.listdir(os.path.join(target, 'audio'))) == 15
    assert len(ESC50('train', split=2, duration=0.2)) == 12


def test_esc50_killed_while_unpacking_is_cleaned_up_next_time(server, esc50_zip, monkeypatch):
    url = server.serve('/master.zip', esc50_zip)
    kill_at_marker([CHILD, 'esc50', url], {'at': 'unpacked', 'action': 'kill'}, timeout=120)
    left = cache_listing()
    assert 'ESC-50-master' not in left and 'ESC-50-master.zip' in left and len(left) == 2  # + the unpacking
    monkeypatch.setattr(esc50, 'ESC50_URL', url)
    assert len(ESC50('dev', split=2, duration=0.2)) == 3
    assert server.requests == ['/master.zip']  # the archive left behind was complete and reused
    assert cache_listing() == ['ESC-50-master']
