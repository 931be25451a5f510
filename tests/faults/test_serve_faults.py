"""Bad and hostile requests to the HTTP server: each gets its error (or its connection closed),
and a valid request still succeeds afterwards. Every server listens on 127.0.0.1; every loop
is bounded in count and time."""
import base64
import contextlib
import json
import socket
import struct
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from paddle_soundcls.deploy import Predictor
from paddle_soundcls.serve import ServeSettings
from paddle_soundcls.serve.app import create_app
from paddle_soundcls.serve.settings import MAX_STREAM_MESSAGE_BYTES
from serve_fixtures import audio_bytes, make_export_dir, read_answer, serve_in_thread, tone, wav_bytes

TIMEOUT = 1.5           # the server's --timeout in this suite
MAX_BODY = 300_000      # its --max-body-mb, in bytes
WAV = wav_bytes(1.0, 16000)


@pytest.fixture(scope='module')
def url(tmp_path_factory):
    predictor = Predictor(make_export_dir(tmp_path_factory.mktemp('serve_faults') / 'export'))
    settings = ServeSettings(max_body_bytes=MAX_BODY, max_audio_seconds=3.0, timeout=TIMEOUT)
    # The same WebSocket message limit as `paddle-soundcls serve` sets.
    with serve_in_thread(create_app(predictor, settings), ws_max_size=MAX_STREAM_MESSAGE_BYTES) as base:
        yield base


@pytest.fixture(autouse=True)
def still_serves(url):
    """After every hostile request of a test, a valid one is answered."""
    yield
    response = httpx.post(url + '/v1/classify', content=WAV, headers={'content-type': 'audio/wav'}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()['results']) == 3


def post(url, data, content_type='audio/wav', **kwargs):
    return httpx.post(url + '/v1/classify', content=data, headers={'content-type': content_type}, timeout=30,
                      **kwargs)


def address(url):
    host, port = url.removeprefix('http://').split(':')
    return host, int(port)


@contextlib.contextmanager
def raw_connection(url, timeout=10):
    sock = socket.create_connection(address(url), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def request_head(content_length, content_type='audio/wav', extra=b''):
    return (b'POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ' + content_type.encode()
            + b'\r\nContent-Length: ' + str(content_length).encode() + b'\r\n' + extra + b'\r\n')


def patched(data, offset, fmt, value):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


# Undecodable and damaged audio ------------------------------------------------------------

def _float_wav(values):
    return audio_bytes(np.asarray(values, dtype=np.float32), 16000, 'WAV', 'FLOAT')


@pytest.mark.parametrize('name, data, status, codes', [
    ('random_bytes', np.random.default_rng(0).bytes(5000), 422, {'undecodable_audio'}),
    ('text', b'hello, this is not audio\n' * 40, 422, {'undecodable_audio'}),
    ('json', json.dumps({'inputs': 'AAAA'}).encode(), 422, {'undecodable_audio'}),
    ('pcm_without_header', (tone(1.0) * 32767).astype('<i2').tobytes(), 422, {'undecodable_audio'}),
    ('truncated_wav', WAV[:len(WAV) // 2], 422, {'truncated_audio'}),
    ('header_only_wav', WAV[:44], 422, {'truncated_audio', 'empty_audio'}),
    ('no_frames', audio_bytes(np.zeros(0, np.float32), 16000), 422, {'empty_audio', 'undecodable_audio'}),
    ('nan_samples', _float_wav([0.1, np.nan] * 8000), 422, {'bad_samples'}),
    ('inf_samples', _float_wav([0.1, np.inf] * 8000), 422, {'bad_samples'}),
    ('huge_samples', _float_wav([1e20] * 16000), 422, {'bad_samples'}),
    ('sample_rate_1_hz', patched(WAV, 24, '<I', 1), 422, {'bad_sample_rate', 'undecodable_audio'}),
    ('sample_rate_4_ghz', patched(WAV, 24, '<I', 4_000_000_000), 422, {'bad_sample_rate', 'undecodable_audio'}),
    ('zero_channels', patched(WAV, 22, '<H', 0), 422, {'undecodable_audio', 'empty_audio'}),
    ('ogg_header_then_junk', audio_bytes(tone(1.0), 16000, 'OGG', 'VORBIS')[:200] + b'\0' * 4000, 422,
     {'undecodable_audio', 'truncated_audio'}),
    # Ten minutes of silence compress to a few kB of FLAC: refused from the header, never decoded.
    ('flac_bomb', audio_bytes(np.zeros(600 * 8000, np.float32), 8000, 'FLAC'), 413, {'audio_too_long'}),
])
def test_undecodable_and_damaged_audio(url, name, data, status, codes):
    assert len(data) < MAX_BODY
    response = post(url, data)
    assert response.status_code == status, response.text
    assert response.json()['error']['code'] in codes, response.json()
    assert response.json()['error']['field'] == 'body'


@pytest.mark.parametrize('subtype', ['PCM_24', 'PCM_32', 'ULAW', 'ALAW', 'IMA_ADPCM', 'MS_ADPCM', 'PCM_U8'])
def test_other_sample_formats_decode(url, subtype):
    response = post(url, audio_bytes(tone(1.0, 16000), 16000, 'WAV', subtype))
    assert response.status_code == 200, response.text


def test_the_same_damage_through_every_input_form(url):
    broken = WAV[:len(WAV) // 2]
    b64 = base64.b64encode(broken).decode()
    multipart = httpx.post(url + '/v1/classify', files={'file': ('a.wav', broken, 'audio/wav')})
    as_json = httpx.post(url + '/v1/classify', json={'inputs': b64})
    speech = httpx.post(url + '/paddlespeech/cls', json={'audio': b64})
    assert multipart.status_code == 422 and multipart.json()['error']['field'] == 'file'
    assert as_json.status_code == 422 and as_json.json()['error']['field'] == 'inputs'
    assert speech.status_code == 200 and speech.json()['success'] is False
    assert 'truncated' in speech.json()['message']['description']


# Empty bodies -----------------------------------------------------------------------------

def test_empty_bodies(url):
    raw = post(url, b'')
    assert raw.status_code == 400 and raw.json()['error']['code'] == 'empty_audio'
    upload = httpx.post(url + '/v1/classify', files={'file': ('a.wav', b'', 'audio/wav')})
    assert upload.status_code == 400 and upload.json()['error']['field'] == 'file'
    inputs = httpx.post(url + '/v1/classify', json={'inputs': ''})
    assert inputs.status_code == 400 and inputs.json()['error']['field'] == 'inputs'
    no_json = post(url, b'', 'application/json')
    assert no_json.status_code == 400 and no_json.json()['error']['code'] == 'invalid_json'
    no_multipart = post(url, b'', 'multipart/form-data; boundary=xyz')
    assert no_multipart.status_code == 400
    speech = httpx.post(url + '/paddlespeech/cls', content=b'')
    assert speech.status_code == 422 and 'detail' in speech.json()


# Wrong content types ----------------------------------------------------------------------

@pytest.mark.parametrize('content_type, data, status, code', [
    ('text/plain', WAV, 415, 'unsupported_media_type'),
    ('application/x-www-form-urlencoded', WAV, 415, 'unsupported_media_type'),   # curl --data-binary's default
    ('image/png', WAV, 415, 'unsupported_media_type'),
    ('', WAV, 415, 'unsupported_media_type'),
    ('application/json', WAV, 400, 'invalid_json'),
    ('application/json', b'[1, 2, 3]', 400, 'missing_field'),
    ('application/json', b'"a string"', 400, 'missing_field'),
    ('application/json', b'{"inputs": "AAAA", "parameters": [5]}', 400, 'invalid_parameter'),
    ('multipart/form-data', WAV, 400, 'bad_multipart'),                            # no boundary
    ('multipart/form-data; boundary=abc', WAV, 400, 'bad_multipart'),
    ('audio/wav', json.dumps({'inputs': base64.b64encode(WAV).decode()}).encode(), 422, 'undecodable_audio'),
])
def test_wrong_content_types(url, content_type, data, status, code):
    headers = {'content-type': content_type} if content_type else {}
    response = httpx.post(url + '/v1/classify', content=data, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()['error']['code'] == code


def test_unicode_and_non_string_payloads(url):
    weird = httpx.post(url + '/v1/classify', json={'inputs': 'ÄÖÜ' * 10})
    assert weird.status_code == 400 and weird.json()['error']['code'] == 'invalid_base64'
    nested = httpx.post(url + '/v1/classify', json={'inputs': {'nested': [1, 2]}})
    assert nested.status_code == 400 and nested.json()['error']['code'] == 'invalid_base64'
    speech = httpx.post(url + '/paddlespeech/cls', json={'audio': ['list'], 'topk': 1})
    assert speech.status_code == 422


# Oversized requests -----------------------------------------------------------------------

def test_declared_oversized_body_is_refused_before_it_is_sent(url):
    with raw_connection(url) as sock:
        sock.sendall(request_head(50_000_000))          # the body never follows
        answer = read_answer(sock)
    assert answer.startswith(b'HTTP/1.1 413') and b'body_too_large' in answer
    assert b'connection: close' in answer.lower()


def test_oversized_bodies_in_every_form(url):
    big = wav_bytes(10.0, 16000)   # 320 kB
    assert len(big) > MAX_BODY
    for response in (post(url, big),
                     httpx.post(url + '/v1/classify', files={'file': ('a.wav', big, 'audio/wav')}),
                     httpx.post(url + '/v1/classify', json={'inputs': base64.b64encode(big).decode()}),
                     httpx.post(url + '/paddlespeech/cls', json={'audio': base64.b64encode(big).decode()})):
        assert response.status_code == 413, response.text
    assert response.json()['success'] is False   # /paddlespeech/cls: its shape


def test_chunked_body_past_the_limit(url):
    def chunks():
        for _ in range(40):                  # 40 x 10 kB = 400 kB, past the limit, no Content-Length
            yield b'\0' * 10_000

    response = httpx.post(url + '/v1/classify', content=chunks(), headers={'content-type': 'audio/wav'}, timeout=30)
    assert response.status_code == 413 and response.json()['error']['code'] == 'body_too_large'


@pytest.mark.parametrize('extra', [
    b'X-Padding: ' + b'a' * 100_000 + b'\r\n',                                  # one huge header
    b''.join(b'X-Many-%d: %s\r\n' % (i, b'b' * 100) for i in range(2000)),     # very many headers
])
def test_oversized_headers(url, extra):
    with raw_connection(url) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request_head(len(WAV), extra=extra) + WAV)
        answer = read_answer(sock)
    # Ours (431), or uvicorn's parser's (400), or the connection closed.
    assert answer == b'' or answer.startswith((b'HTTP/1.1 431', b'HTTP/1.1 400')), answer[:200]


def test_bad_content_length(url):
    with raw_connection(url) as sock:
        sock.sendall(b'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n'
                     b'Content-Length: lots\r\n\r\n' + WAV[:100])
        answer = read_answer(sock)
    assert answer.startswith(b'HTTP/1.1 400'), answer[:200]


# Truncated uploads and slow clients -------------------------------------------------------

def test_upload_cut_off_by_the_client(url):
    for _ in range(5):
        with raw_connection(url) as sock:
            sock.sendall(request_head(len(WAV)) + WAV[:len(WAV) // 3])
            sock.shutdown(socket.SHUT_WR)           # the client goes away mid-body
            answer = read_answer(sock)
        assert answer == b'' or answer.startswith(b'HTTP/1.1 4'), answer[:200]


def test_upload_that_stalls_gets_408(url):
    started = time.monotonic()
    with raw_connection(url) as sock:
        sock.sendall(request_head(len(WAV)) + WAV[:1000])
        answer = read_answer(sock)
    assert answer.startswith(b'HTTP/1.1 408') and b'body_timeout' in answer
    assert time.monotonic() - started < 10 * TIMEOUT   # answered, not left hanging


def test_multipart_cut_short(url):
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b'Content-Type: audio/wav\r\n\r\n' + WAV[:5000])          # no closing boundary
    response = post(url, body, 'multipart/form-data; boundary=XyZ')
    assert response.status_code in (400, 422), response.text


def test_slow_clients_do_not_block_others(url):
    """Connections that send their headers a byte at a time, and idle ones, while valid requests are served."""
    slow = [socket.create_connection(address(url), timeout=5) for _ in range(8)]
    idle = [socket.create_connection(address(url), timeout=5) for _ in range(30)]
    head = request_head(len(WAV))
    try:
        for i in range(10):                          # 10 rounds, about 1 s in all
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(head[i:i + 1])
            assert post(url, WAV).status_code == 200
            time.sleep(0.1)
    finally:
        for sock in slow + idle:
            sock.close()


# WebSocket --------------------------------------------------------------------------------

def ws_url(url):
    return url.replace('http://', 'ws://') + '/v1/stream'


def messages_until_closed(ws, limit=50):
    """Messages until the server closes; returns (messages, close code)."""
    messages = []
    for _ in range(limit):
        try:
            messages.append(json.loads(ws.recv(timeout=10 * TIMEOUT)))
        except ConnectionClosed:
            break
    return messages, ws.close_code


def assert_stream_works(url):
    pcm = (tone(0.6, 16000) * 32767).astype('<i2').tobytes()
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': 16000, 'window': 0.5}))
        ws.send(pcm)
        ws.send(json.dumps({'type': 'end'}))
        messages, code = messages_until_closed(ws)
    assert [m['type'] for m in messages] == ['ready', 'scores', 'scores', 'end'] and code == 1000


def test_websocket_that_never_sends(url):
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        messages, code = messages_until_closed(ws)
    assert messages[-1]['error']['code'] == 'timeout' and code == 1008
    assert_stream_works(url)


def test_websocket_that_goes_silent_mid_stream(url):
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': 16000}))
        ws.send(b'\0\0' * 1000)
        messages, code = messages_until_closed(ws)
    assert messages[0]['type'] == 'ready' and messages[-1]['error']['code'] == 'timeout' and code == 1008


START = json.dumps({'sample_rate': 16000})


@pytest.mark.parametrize('name, sends, code, error', [
    ('garbage_text_first', ['{{{ not json'], 1003, 'bad_message'),
    ('binary_first', [b'\x00\x01' * 100], 1008, 'bad_start'),
    ('start_not_an_object', ['[16000]'], 1008, 'bad_start'),
    ('start_without_rate', ['{"format": "int16"}'], 1008, 'bad_start'),
    ('start_unknown_field', ['{"sample_rate": 16000, "rate": 1}'], 1008, 'bad_start'),
    ('start_bad_rate', ['{"sample_rate": 7}'], 1008, 'bad_start'),
    ('start_bad_format', ['{"sample_rate": 16000, "format": "int24"}'], 1008, 'bad_start'),
    ('start_bad_window', ['{"sample_rate": 16000, "window": -1}'], 1008, 'bad_start'),
    ('start_too_long_window', ['{"sample_rate": 16000, "window": 1e9}'], 1008, 'bad_start'),
    ('start_bad_mode', ['{"sample_rate": 16000, "mode": "karaoke"}'], 1008, 'bad_start'),
    ('odd_int16_chunk', [START, b'\x00\x01\x02'], 1007, 'bad_chunk'),
    ('float_nan_chunk', ['{"sample_rate": 16000, "format": "float32"}',
                         np.array([np.nan] * 100, '<f4').tobytes()], 1007, 'bad_chunk'),
    ('stereo_half_frame', ['{"sample_rate": 16000, "channels": 2}', b'\x00\x01'], 1007, 'bad_chunk'),
    ('garbage_text_later', [START, 'stop please'], 1003, 'bad_message'),
    ('wrong_control_message', [START, '{"type": "pause"}'], 1003, 'bad_message'),
])
def test_websocket_garbage(url, name, sends, code, error):
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        for message in sends:
            ws.send(message)
        messages, close_code = messages_until_closed(ws)
    assert messages[-1]['type'] == 'error' and messages[-1]['error']['code'] == error, messages
    assert close_code == code
    assert_stream_works(url)


def test_websocket_message_too_large(url):
    with ws_connect(ws_url(url), open_timeout=10, max_size=None) as ws:
        ws.send(START)
        ws.recv(timeout=10)
        with contextlib.suppress(ConnectionClosed):
            ws.send(b'\0\0' * (MAX_STREAM_MESSAGE_BYTES // 2 + 1024))
        _, code = messages_until_closed(ws)
    assert code in (1007, 1009)
    assert_stream_works(url)


def test_websocket_dropped_without_closing(url):
    for _ in range(3):
        ws = ws_connect(ws_url(url), open_timeout=10)
        ws.send(START)
        ws.send(b'\0\0' * 20000)
        ws.socket.close()        # the TCP connection vanishes, no closing handshake
    assert_stream_works(url)


def test_plain_http_on_the_websocket_path(url):
    response = httpx.get(url + '/v1/stream')
    assert response.status_code in (400, 404, 426)


# Memory -----------------------------------------------------------------------------------

def hostile_round(url):
    post(url, b'')
    post(url, np.random.default_rng(1).bytes(20_000))
    post(url, WAV[:len(WAV) // 2])
    post(url, wav_bytes(10.0, 16000))
    post(url, WAV, 'text/plain')
    httpx.post(url + '/v1/classify', json={'inputs': '!!'})
    httpx.post(url + '/paddlespeech/cls', json={'audio': 'AAAA'})
    post(url, WAV)


def test_bad_requests_do_not_leak_memory(url):
    """Python memory of this process (server thread included) after 3 rounds of bad requests,
    then after 3 more: it does not keep growing."""
    tracemalloc.start()
    try:
        for _ in range(3):
            hostile_round(url)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            hostile_round(url)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 1_000_000, (before, after)
