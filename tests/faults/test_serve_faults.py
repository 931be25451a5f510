"""Bad and hostile requests to the HTTP server: each gets its error (or its connection closed),
and a valid request still succeeds afterwards. Every server listens on 127.0.0.1; every loop
is bounded in count and time."""
import base64
import contextlib
import io
import json
import socket
import struct
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from paddle_soundcls.deploy import Predictor
from paddle_soundcls.serve import ServeSettings
from paddle_soundcls.serve.app import create_app
from paddle_soundcls.serve.command import WS_DEFLATE
from paddle_soundcls.serve.settings import MAX_STREAM_MESSAGE_BYTES
from serve_fixtures import (LABELS, audio_bytes, counting_engine, cpu_seconds, make_export_dir, memory_mb, read_answer,
                            reset_peak, serve_in_process, serve_in_thread, tone, wav_bytes)

TIMEOUT = 1.5           # the server's --timeout in this suite
MAX_BODY = 300_000      # its --max-body-mb, in bytes
WAV = wav_bytes(1.0, 16000)


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
    return make_export_dir(tmp_path_factory.mktemp('serve_faults') / 'export')


@pytest.fixture(scope='module')
def predictor(export_dir):
    return Predictor(export_dir)


@pytest.fixture(scope='module')
def url(predictor):
    settings = ServeSettings(max_body_bytes=MAX_BODY, max_audio_seconds=3.0, timeout=TIMEOUT)
    # The same WebSocket options as `paddle-soundcls serve` sets.
    with serve_in_thread(create_app(predictor, settings), ws_max_size=MAX_STREAM_MESSAGE_BYTES,
                         ws_per_message_deflate=WS_DEFLATE) as base:
        yield base


@pytest.fixture(autouse=True)
def still_serves(url):
    """After every hostile request of a test, a valid one is answered."""
    yield
    response = httpx.post(url + '/v1/classify', content=WAV, headers={'content-type': 'audio/wav'}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()['results']) == 3


def post(url, data, content_type='audio/wav', headers=None, **kwargs):
    return httpx.post(url + '/v1/classify', content=data, headers={'content-type': content_type, **(headers or {})},
                      timeout=30, **kwargs)


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
    ('', b'hello, this is not audio\n' * 40, 415, 'unsupported_media_type'),   # no type, bytes not audio
    ('application/octet-stream', json.dumps({'inputs': 'AAAA'}).encode(), 415, 'unsupported_media_type'),
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
    pcm = (tone(1.2, 16000) * 32767).astype('<i2').tobytes()
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': 16000, 'window': 1.0}))
        ws.send(pcm)
        ws.send(json.dumps({'type': 'end'}))
        messages, code = messages_until_closed(ws)
    assert [m['type'] for m in messages] == ['ready', 'scores', 'scores', 'done'] and code == 1000


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
    ('garbage_text_first', ['{{{ not json'], 1008, 'bad_start'),
    ('binary_first', [b'\x00\x01' * 100], 1008, 'bad_start'),
    ('start_not_an_object', ['[16000]'], 1008, 'bad_start'),
    ('start_without_rate', ['{"format": "int16"}'], 1008, 'bad_start'),
    ('start_unknown_field', ['{"sample_rate": 16000, "rate": 1}'], 1008, 'unknown_parameter'),
    ('start_rate_below_the_floor', ['{"sample_rate": 4000}'], 1008, 'bad_start'),
    ('start_too_large', [json.dumps({'sample_rate': 16000, 'options': {'x': 'y' * 100_000}})], 1008, 'bad_start'),
    ('start_too_many_items', [json.dumps({'sample_rate': 16000, 'options': {'x': [0] * 5000}})], 1008,
     'bad_start'),
    ('start_bad_rate', ['{"sample_rate": 7}'], 1008, 'bad_start'),
    ('start_bad_format', ['{"sample_rate": 16000, "format": "int24"}'], 1008, 'bad_start'),
    ('start_bad_window', ['{"sample_rate": 16000, "window": -1}'], 1008, 'bad_start'),
    ('start_too_long_window', ['{"sample_rate": 16000, "window": 1e9}'], 1008, 'bad_start'),
    ('start_bad_mode', ['{"sample_rate": 16000, "mode": "karaoke"}'], 1008, 'bad_start'),
    ('start_huge_int_window', ['{"sample_rate": 16000, "window": 1' + '0' * 400 + '}'], 1008, 'bad_start'),
    ('start_duplicate_field', ['{"sample_rate": 4000, "sample_rate": 16000}'], 1008, 'duplicate_parameter'),
    ('start_options_in_scores_mode', ['{"sample_rate": 16000, "options": {"bogus": 1}}'], 1008, 'bad_start'),
    # the tracker sorts this many seconds of frame scores per frame, on the event loop
    ('start_median_filter_too_long', ['{"sample_rate": 16000, "mode": "events", '
                                      '"options": {"median_filter_seconds": 3000}}'], 1008, 'bad_start'),
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
        reason = ws.close_reason
    assert messages[-1]['type'] == 'error' and messages[-1]['error']['code'] == error, messages
    assert close_code == code and reason.startswith(error + ':'), reason   # the close frame says why
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


# What one client may cost ------------------------------------------------------------------
# Each test below is one defect of a server that a single client could bring down: memory and
# CPU are read from /proc for a server in a child process, engine calls are counted in-process.

@pytest.fixture(scope='module')
def child(export_dir):
    """`paddle-soundcls serve` with its default limits in a child process: (base URL, pid)."""
    with serve_in_process(export_dir) as (base, process):
        for seconds in (1.0, 10.0):   # the engine's buffers for these shapes exist before anything is measured
            assert post(base, wav_bytes(seconds, 32000)).status_code == 200
        yield base, process.pid


def stream_messages(base, start, chunks, end=True, limit=500, headers=None):
    """Every message of one stream until the server closes it, and the close code."""
    with ws_connect(ws_url(base), open_timeout=10, additional_headers=headers) as ws:
        ws.send(json.dumps(start))
        for chunk in chunks:
            ws.send(chunk)
        if end:
            ws.send(json.dumps({'type': 'end'}))
        return messages_until_closed(ws, limit)


def int16(wave):
    return (np.asarray(wave) * 32767).astype('<i2').tobytes()


def test_stream_hop_has_a_floor_and_one_message_costs_little_memory(child):
    base, pid = child
    # A one-sample hop: each pushed sample would complete a window.
    messages, code = stream_messages(base, {'sample_rate': 16000, 'window': 2, 'hop': 0.0000625}, [], end=False)
    assert code == 1008 and messages[-1]['error']['code'] == 'bad_start', messages
    assert 'hop' in messages[-1]['error']['message']
    # The finest hop allowed, 2 s of PCM, then one 8,000-byte message: a few windows, scored one at a time.
    windows = httpx.get(base + '/v1/model').json()['windows']
    hop = max(windows['min_hop'], 2.0 / windows['max_overlap'])
    reset_peak(pid)
    before = memory_mb(pid)['rss']
    messages, code = stream_messages(base, {'sample_rate': 16000, 'window': 2, 'hop': hop},
                                     [int16(tone(2.0, 16000)), b'\0' * 8000])
    assert code == 1000 and messages[-1] == {'type': 'done'}, messages[-3:]
    assert sum(m['type'] == 'scores' for m in messages) == 1 + int(0.25 / hop) + 1   # the last one: the tail
    assert memory_mb(pid)['peak'] - before < 30


def flac_of_silence(seconds, rate, channels):
    """FLAC bytes of `seconds` of silence: a few kB, however many samples it holds."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, 'w', rate, channels, 'PCM_16', format='FLAC') as f:
        second = np.zeros((rate, channels), np.int16)
        for _ in range(int(seconds)):
            f.write(second)
    return buffer.getvalue()


def test_a_small_compressed_file_cannot_make_decoding_cost_gigabytes(child):
    base, pid = child
    limit = ServeSettings().max_decode_samples
    rate = 655350                                          # FLAC's highest
    bomb = flac_of_silence(4, rate, 8)                     # 21 million samples in 4 s, under the clip length
    largest = flac_of_silence(limit // (rate * 8), rate, 8)   # the most the default limit lets through
    assert len(bomb) < 300_000 and 4 * rate * 8 > limit
    reset_peak(pid)
    before = memory_mb(pid)['rss']
    refused = post(base, bomb, 'audio/flac')
    assert refused.status_code == 413, refused.text
    assert refused.json()['error']['code'] == 'too_many_samples' and refused.json()['error']['field'] == 'body'
    assert '--max-decode-samples' in refused.json()['error']['message']
    assert memory_mb(pid)['peak'] - before < 15
    # Decoded in blocks, mixed to mono and resampled as it goes: never the whole file at its own rate.
    answered = post(base, largest, 'audio/flac')
    assert answered.status_code == 200, answered.text
    assert memory_mb(pid)['peak'] - before < 40   # the README's worst case for decoding (besides the body)


class SlowFrames:
    """A Predictor whose frame scores take `delay` seconds a call (as a long window on a slow
    machine would), counting the calls."""

    def __init__(self, predictor, delay):
        self.predictor, self.delay, self.calls = predictor, delay, 0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def frame_scorer(self, window=None, hop=None):
        scorer = self.predictor.frame_scorer(window, hop)
        score_inputs = scorer.score_inputs   # the network call of every window (samples or features)

        def slow(inputs):
            self.calls += 1
            time.sleep(self.delay)
            return score_inputs(inputs)
        scorer.score_inputs = slow
        return scorer

    def detect(self, data, sample_rate=None, window=None, hop=None, config=None):
        from paddle_soundcls.deploy import detection
        return detection.detect_inputs(self.frame_scorer(window, hop), data, sample_rate,
                                       config or self.predictor.event_config)


def test_events_windows_shorter_than_the_model_input_are_refused(url):
    data = audio_bytes(tone(2.0, 1000), 1000)
    for params, field in (({'window': 0.01, 'hop': 0.01}, 'window'), ({'window': 2.0, 'hop': 0.01}, 'hop')):
        response = httpx.post(url + '/v1/events', content=data, params=params, headers={'content-type': 'audio/wav'},
                              timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()['error']['field'] == field


def test_events_pass_the_queue_and_stop_at_the_deadline(predictor):
    slow = SlowFrames(predictor, delay=0.15)
    settings = ServeSettings(max_queue=2, max_audio_seconds=20.0, timeout=3.0)
    with serve_in_thread(create_app(slow, settings)) as base:
        clip = wav_bytes(3.0, 16000)                        # 3 windows of 1 s
        barrier = threading.Barrier(6)
        responses = [None] * 6

        def one(i):
            barrier.wait(timeout=10)
            responses[i] = httpx.post(base + '/v1/events', content=clip, params={'window': 1.0, 'hop': 1.0},
                                      headers={'content-type': 'audio/wav'}, timeout=30)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        statuses = sorted(r.status_code for r in responses)
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        assert all(int(r.headers['retry-after']) >= 1 for r in responses if r.status_code == 503)
        # 40 windows of 0.15 s each: past the 3-s deadline, and the work stops with the answer.
        started = time.monotonic()
        late = httpx.post(base + '/v1/events', content=wav_bytes(20.0, 16000), params={'window': 1.0, 'hop': 0.5},
                          headers={'content-type': 'audio/wav'}, timeout=30)
        assert late.status_code == 504 and time.monotonic() - started < 3.0 + 1.0, late.text
        calls = slow.calls
        time.sleep(1.0)
        assert slow.calls - calls <= 1


def test_a_stream_message_costs_work_in_proportion_to_the_message(child):
    base, pid = child
    rate, window = 768000, ServeSettings().max_window_seconds
    almost = int16(np.zeros(int(rate * window) - 100))
    with ws_connect(ws_url(base), open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': rate, 'window': window, 'hop': window / 2}))
        assert json.loads(ws.recv(timeout=10))['type'] == 'ready'
        for i in range(0, len(almost), MAX_STREAM_MESSAGE_BYTES):     # a buffer just short of one window
            ws.send(almost[i:i + MAX_STREAM_MESSAGE_BYTES])
        time.sleep(1.0)                                                # let the server catch up
        cpu, slowest = cpu_seconds(pid), 0.0
        for i in range(300):                                           # then 300 messages of one sample
            ws.send(b'\0\0')
            if i % 30 == 0:
                started = time.monotonic()
                assert httpx.get(base + '/healthz', timeout=10).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.5)
        busy = cpu_seconds(pid) - cpu
    after_leaving = cpu_seconds(pid)
    time.sleep(1.0)
    assert busy < 0.3, busy                     # copying the window at every message: about 3 ms each
    assert slowest < 0.5, slowest               # a stalled event loop: seconds (0.11 s seen on a loaded machine)
    assert cpu_seconds(pid) - after_leaving < 0.3


def test_requests_of_clients_that_hang_up_are_not_run(predictor):
    settings = ServeSettings(max_audio_seconds=3.0, timeout=10.0)
    clip = wav_bytes(2.0, 16000)
    with serve_in_thread(create_app(predictor, settings)) as base, counting_engine(predictor) as engine:
        engine.gate.clear()                                   # the engine holds one request ...
        held = threading.Thread(target=lambda: post(base, WAV))
        held.start()
        assert engine.entered.wait(10)
        clients = [socket.create_connection(address(base), timeout=10) for _ in range(24)]
        for sock in clients:                                  # ... while 24 clients send a clip,
            sock.sendall(request_head(len(clip)) + clip)
        for _ in range(50):                                   # wait until their work is queued,
            if httpx.get(base + '/healthz').json()['queue'] >= 24:
                break
            time.sleep(0.1)
        for sock in clients:                                  # and hang up
            sock.close()
        for _ in range(50):                                   # their waiting work is dropped
            if httpx.get(base + '/healthz').json()['queue'] == 0:
                break
            time.sleep(0.1)
        engine.gate.set()
        held.join(30)
        time.sleep(0.5)
        assert sum(engine.calls) <= 2, engine.calls


def test_a_stream_is_read_with_the_channels_of_its_start_message(url):
    stereo = np.stack([tone(1.0, 8000, 440.0), tone(1.0, 8000, 880.0, amp=0.1)], axis=1)
    pcm = int16(stereo)
    start = {'sample_rate': 8000, 'channels': 2, 'window': 1.0}
    whole, _ = stream_messages(url, start, [pcm])
    split = 6000 * 4                                  # the last quarter of a second one frame at a time
    frame_by_frame, _ = stream_messages(url, start, [pcm[:split]] + [pcm[i:i + 4] for i in range(split, len(pcm), 4)])
    assert [m['type'] for m in whole] == ['ready', 'scores', 'done']
    assert frame_by_frame == whole


def test_a_flood_of_tiny_messages_is_cut_off(url):
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': 16000}))
        assert json.loads(ws.recv(timeout=10))['type'] == 'ready'
        # 20,000 binary frames of 2 bytes (masked with a zero key) at once, as a fast client sends them.
        with contextlib.suppress(OSError):
            ws.socket.sendall(b'\x82\x82\0\0\0\0\0\0' * 20_000)
        messages, _ = messages_until_closed(ws)
    assert messages and messages[-1]['error']['code'] == 'too_many_messages', messages


def test_start_message_of_the_wrong_types(url):
    deep = '[' * 100_000 + ']' * 100_000
    for start in ({'sample_rate': 16000, 'format': ['int16']}, {'sample_rate': 16000, 'mode': {}},
                  {'sample_rate': 16000, 'mode': 'events', 'options': {'onset_threshold': [0.6]}},
                  {'sample_rate': 16000, 'mode': 'events', 'options': {'onset_threshold': {'a': 1}}},
                  {'sample_rate': 16000, 'channels': '2'}, {'sample_rate': [16000]}):
        messages, code = stream_messages(url, start, [], end=False)
        assert code == 1008 and messages[-1]['error']['code'] == 'bad_start', (start, messages)
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        ws.send(deep)
        messages, code = messages_until_closed(ws)
    assert code in (1003, 1008) and messages[-1]['error']['code'] in ('bad_start', 'bad_message'), messages


@pytest.mark.parametrize('kwargs', [
    dict(files={'file': ('a.wav', WAV, 'audio/wav')}, data={'top_k': '²'}),
    dict(files={'file': ('a.wav', WAV, 'audio/wav')}, data={'top_k': '9' * 5000}),
    dict(json={'inputs': base64.b64encode(WAV).decode(), 'parameters': {'top_k': '²'}}),
    dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'top_k': '²'}),
    dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'top_k': '9' * 5000}),
    dict(content=b'{"inputs": ' + b'[' * 100_000 + b']' * 100_000 + b'}', headers={'content-type': 'application/json'}),
    dict(json={'inputs': base64.b64encode(WAV).decode(), 'parameters': []}),
    dict(json={'inputs': base64.b64encode(WAV).decode(), 'parameters': 0}),
    dict(json={'inputs': base64.b64encode(WAV).decode(), 'parameters': False}),
])
def test_client_mistakes_are_answered_as_client_mistakes(url, kwargs):
    response = httpx.post(url + '/v1/classify', timeout=30, **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()['error']['code'] in ('invalid_parameter', 'invalid_json')


def test_paddlespeech_deeply_nested_json_gets_422(url):
    response = httpx.post(url + '/paddlespeech/cls', content=b'[' * 100_000 + b']' * 100_000)
    assert response.status_code == 422 and response.json()['detail'][0]['type'] == 'json_invalid', response.text


class FailingEngine:
    """A Predictor whose engine fails: every request gets a 500."""

    def __init__(self, predictor):
        self.predictor = predictor

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def score_batch(self, waveforms):
        raise RuntimeError('the engine failed')

    def predict(self, *args, **kwargs):
        raise RuntimeError('the engine failed')


def test_a_server_failure_keeps_the_cors_header(predictor):
    settings = ServeSettings(cors_origins=('https://good.example',))
    with serve_in_thread(create_app(FailingEngine(predictor), settings)) as base:
        response = post(base, WAV, headers={'origin': 'https://good.example'})
        assert response.status_code == 500 and response.json()['error']['code'] == 'internal_error'
        assert response.headers['access-control-allow-origin'] == 'https://good.example'
        other = post(base, WAV, headers={'origin': 'https://evil.example'})
        assert other.status_code == 500 and 'access-control-allow-origin' not in other.headers


def test_stream_and_events_share_one_window_rule(url):
    messages, code = stream_messages(url, {'sample_rate': 16000, 'window': 1.0, 'hop': 4.0}, [], end=False)
    assert code == 1008 and messages[-1]['error']['code'] == 'bad_start', messages
    events = httpx.post(url + '/v1/events', content=WAV, params={'window': 1.0, 'hop': 4.0},
                        headers={'content-type': 'audio/wav'})
    assert events.status_code == 400 and events.json()['error']['field'] == 'hop'
    assert messages[-1]['error']['message'] == events.json()['error']['message']


def test_the_end_of_a_stream_is_not_the_end_of_an_event(url):
    options = {'onset_threshold': 1e-6, 'offset_threshold': 1e-6, 'median_filter_seconds': 0.0,
               'min_duration_seconds': 0.0, 'min_gap_seconds': 0.0}   # every label is on until the stream ends
    messages, code = stream_messages(url, {'sample_rate': 16000, 'window': 1.0, 'hop': 1.0, 'mode': 'events',
                                           'options': options}, [int16(tone(2.0, 16000))])
    types = [m['type'] for m in messages]
    assert code == 1000 and types[-1] == 'done' and types.count('done') == 1, types
    assert types.count('end') == len(LABELS)   # each label's event ends before the stream does


def handshake_status(base, origin):
    headers = {'origin': origin} if origin else None
    try:
        with ws_connect(ws_url(base), open_timeout=10, additional_headers=headers) as ws:
            ws.send(json.dumps({'sample_rate': 16000}))
            return json.loads(ws.recv(timeout=10))['type']
    except InvalidStatus as exc:
        return exc.response.status_code


def test_websocket_handshake_follows_the_cors_rule(url, predictor):
    assert handshake_status(url, 'https://evil.example') == 403
    assert handshake_status(url, None) == 'ready'              # not a browser
    assert handshake_status(url, url) == 'ready'               # the server's own page
    with serve_in_thread(create_app(predictor, ServeSettings(cors_origins=('https://good.example',)))) as base:
        assert handshake_status(base, 'https://evil.example') == 403
        assert handshake_status(base, 'https://good.example') == 'ready'


def test_api_keys_as_clients_send_them(predictor):
    for key, sent in (('clé', 'clé'.encode('utf-8')), ('clé', 'clé'.encode('latin-1')), ('abc\n', b'abc')):
        with serve_in_thread(create_app(predictor, ServeSettings(api_key=key))) as base:
            assert post(base, WAV, headers={'x-api-key': sent}).status_code == 200, (key, sent)
            assert post(base, WAV, headers={'x-api-key': b'wrong'}).status_code == 401
    with pytest.raises(ValueError, match='control character'):
        ServeSettings(api_key='abc\ndef')


@pytest.mark.parametrize('bad', [np.nan, np.inf, 1e30])
@pytest.mark.parametrize('mode', ['scores', 'events'])
def test_a_stream_of_bad_samples_then_its_end_is_closed_at_once(url, bad, mode):
    """NaN / inf / absurd samples followed at once by the end message: the stream gets its error
    and is closed at once, never left waiting for the client."""
    wave = np.full(16000 * 3, bad, np.float32)
    wave[::2] = 0.1
    started = time.monotonic()
    with ws_connect(ws_url(url), open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': 16000, 'format': 'float32', 'window': 1.0, 'hop': 0.5, 'mode': mode}))
        with contextlib.suppress(ConnectionClosed):   # the server may have closed before the end is sent
            ws.send(wave.tobytes())
            ws.send(json.dumps({'type': 'end'}))
        messages, code = messages_until_closed(ws)
    assert messages[-1]['error']['code'] == 'bad_chunk' and code == 1007, messages
    assert time.monotonic() - started < TIMEOUT, 'the stream waited for the client instead of closing'


def test_a_wrong_key_in_the_handshake_is_refused_before_any_message(predictor):
    with serve_in_thread(create_app(predictor, ServeSettings(api_key='k', timeout=TIMEOUT))) as base:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(ws_url(base), open_timeout=10, additional_headers={'X-API-Key': 'wrong'})
        assert refused.value.response.status_code == 403
        with ws_connect(ws_url(base), open_timeout=10, additional_headers={'X-API-Key': 'k'}) as ws:
            ws.send(START)
            assert json.loads(ws.recv(timeout=10))['type'] == 'ready'


@pytest.mark.parametrize('body', [
    '{"inputs": "AAAA", "parameters": {"top_k": 1e400}}',
    '{"inputs": "AAAA", "parameters": {"top_k": -1e400}}',
    '{"inputs": "AAAA", "parameters": {"top_k": %s}}' % ('9' * 5000),
    '{"inputs": "AAAA", "parameters": {"top_k": NaN}}',
])
def test_odd_json_numbers_are_client_mistakes(url, body):
    response = httpx.post(url + '/v1/classify', content=body, headers={'content-type': 'application/json'})
    assert response.status_code == 400, response.text
    assert response.json()['error']['code'] in ('invalid_parameter', 'invalid_json')


def test_paddlespeech_topk_out_of_range_numbers_get_its_422(url):
    audio = base64.b64encode(WAV).decode()
    for topk in ('1e400', '-1e400', 'NaN'):
        response = httpx.post(url + '/paddlespeech/cls', content='{"audio": "%s", "topk": %s}' % (audio, topk))
        assert response.status_code == 422 and response.json()['detail'][0]['loc'] == ['body', 'topk'], response.text


def test_a_bulky_json_body_is_refused_before_it_is_parsed(url):
    """Many small items (100,000 numbers in 200 kB) would cost tens of bytes of memory each once
    parsed: refused from a count of its commas and brackets."""
    body = '{"inputs": "AAAA", "parameters": {"top_k": [%s]}}' % ','.join(['1'] * 100_000)
    assert len(body) < MAX_BODY
    tracemalloc.start()
    try:
        response = httpx.post(url + '/v1/classify', content=body, headers={'content-type': 'application/json'})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 400 and response.json()['error']['code'] == 'invalid_json', response.text
    assert 'items' in response.json()['error']['message']
    assert peak < 20 * len(body), peak   # the body and its copies, never a parsed list of 100,000 ints


def test_host_names_outside_the_allowlist_are_refused(predictor):
    """Bound to a loopback address without a key, a request for another name (a web page's own
    domain pointed at 127.0.0.1) is refused, on HTTP and on the WebSocket."""
    from paddle_soundcls.serve.settings import LOOPBACK_HOSTS
    with serve_in_thread(create_app(predictor, ServeSettings(allowed_hosts=LOOPBACK_HOSTS))) as base:
        assert post(base, WAV).status_code == 200                                   # Host: 127.0.0.1:PORT
        assert post(base, WAV, headers={'host': 'localhost'}).status_code == 200
        rebound = post(base, WAV, headers={'host': 'evil.example'})
        assert rebound.status_code == 421 and rebound.json()['error']['code'] == 'host_not_allowed'
        assert 'evil.example' in rebound.json()['error']['message']
        with raw_connection(base) as sock:   # a handshake of its own: the client library sets Host itself
            sock.sendall(b'GET /v1/stream HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n'
                         b'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
                         b'Sec-WebSocket-Version: 13\r\n\r\n')
            assert read_answer(sock).startswith(b'HTTP/1.1 403')


def test_the_command_line_allowlist_depends_on_the_address_and_the_key():
    import argparse
    from paddle_soundcls.serve import add_serve_arguments
    from paddle_soundcls.serve.command import settings_from_args
    parser = add_serve_arguments(argparse.ArgumentParser())
    assert set(settings_from_args(parser.parse_args(['x'])).allowed_hosts) == {'localhost', '127.0.0.1', '[::1]'}
    assert settings_from_args(parser.parse_args(['x', '--host', '0.0.0.0'])).allowed_hosts == ()
    assert settings_from_args(parser.parse_args(['x', '--api-key', 'k'])).allowed_hosts == ()
    assert settings_from_args(parser.parse_args(['x', '--allowed-hosts', 'a.example, b'])).allowed_hosts == (
        'a.example', 'b')
