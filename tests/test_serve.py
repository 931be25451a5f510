"""The HTTP server: every endpoint and input form, PaddleSpeech's schema, errors, the API key,
CORS, micro-batching, the bounded queue, the limits, the WebSocket stream, and a server run
with Paddle unimportable. Servers listen on 127.0.0.1 on a free port."""
import argparse
import asyncio
import base64
import json
import os
import socket
import textwrap
import threading
from collections import OrderedDict

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect as ws_connect

from helpers import BLOCK_PADDLE
from paddle_soundcls import audio
from paddle_soundcls.deploy import Predictor
from paddle_soundcls.serve import ServeError, ServeSettings, add_serve_arguments, resolve_model_dir
from paddle_soundcls.serve.app import create_app
from paddle_soundcls.serve.batching import Batcher, Flow, QueueFull, ShuttingDown
from paddle_soundcls.serve.command import settings_from_args
from paddle_soundcls.serve.stream import register_stream_mode, STREAM_MODES
from serve_fixtures import (LABELS, audio_bytes, counting_engine, make_export_dir, read_answer, serve_in_process,
                            serve_in_thread, tone, wav_bytes)

WAV = wav_bytes(1.0, 16000)


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
    return make_export_dir(tmp_path_factory.mktemp('serve') / 'export')


@pytest.fixture(scope='module')
def predictor(export_dir):
    return Predictor(export_dir)


@pytest.fixture(scope='module')
def url(predictor):
    with serve_in_thread(create_app(predictor)) as base:
        yield base


def post_wav(url, data=WAV, content_type='audio/wav', path='/v1/classify', headers=None, **kwargs):
    headers = dict(headers or {}, **{'content-type': content_type})
    return httpx.post(url + path, content=data, headers=headers, timeout=30, **kwargs)


def expected_scores(predictor, tmp_path, data=WAV):
    path = tmp_path / 'clip.wav'
    path.write_bytes(data)
    [scores] = predictor.predict([str(path)])
    return scores


# Endpoints and input forms ----------------------------------------------------------------

def test_classify_raw_body_matches_the_predictor(url, predictor, tmp_path):
    response = post_wav(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body['model'] == 'panns_cnn6' and body['duration'] == pytest.approx(1.0)
    results = body['results']
    assert [set(r) for r in results] == [{'label', 'score'}] * len(LABELS)   # default top_k 5, capped at 3 labels
    assert [r['score'] for r in results] == sorted((r['score'] for r in results), reverse=True)
    expected = expected_scores(predictor, tmp_path)
    assert [r['label'] for r in results] == list(expected)
    np.testing.assert_allclose([r['score'] for r in results], list(expected.values()), atol=1e-5)


def test_a_long_clip_gets_the_predictors_scores(url, predictor, tmp_path):
    """A model that scores clips whole (no training clip length) is answered as Predictor.predict
    answers: the whole clip (9.5 s, under the 10 s such a model takes by default), not the mean of
    windows of --max-window-seconds (5 s)."""
    assert predictor.clip_seconds is None
    rng = np.random.default_rng(0)
    loud = np.concatenate([tone(3.0, 16000, 700.0), 0.3 * rng.standard_normal(4 * 16000), tone(2.5, 16000, 90.0)])
    data = audio_bytes(loud.astype(np.float32), 16000)
    response = post_wav(url, data)
    assert response.status_code == 200, response.text
    expected = expected_scores(predictor, tmp_path, data)
    np.testing.assert_allclose([r['score'] for r in response.json()['results']], list(expected.values()), atol=1e-5)


def test_every_input_form_gives_the_same_answer(url):
    b64 = base64.b64encode(WAV).decode()
    wrapped = '\n'.join(b64[i:i + 76] for i in range(0, len(b64), 76))   # as `base64` prints it
    answers = [
        post_wav(url, params={'top_k': 2}),
        post_wav(url, content_type='application/octet-stream', params={'top_k': 2}),
        httpx.post(url + '/v1/classify', files={'file': ('clip.wav', WAV, 'audio/wav')}, data={'top_k': '2'}),
        httpx.post(url + '/v1/classify', files={'file': ('clip.wav', WAV, 'audio/wav')}, params={'top_k': 2}),
        httpx.post(url + '/v1/classify', json={'inputs': b64, 'parameters': {'top_k': 2}}),
        httpx.post(url + '/v1/classify', json={'inputs': 'data:audio/wav;base64,' + wrapped,
                                               'parameters': {'top_k': 2}}),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
    first = answers[0].json()
    assert len(first['results']) == 2
    for response in answers[1:]:
        assert response.json() == first


@pytest.mark.parametrize('name, data', [
    ('flac_48k', audio_bytes(tone(1.0, 48000), 48000, 'FLAC')),
    ('ogg_vorbis', audio_bytes(tone(1.0, 22050), 22050, 'OGG', 'VORBIS')),
    ('stereo_44k', audio_bytes(tone(1.0, 44100, channels=2), 44100)),
    ('u8_8k', audio_bytes(tone(1.0, 8000), 8000, 'WAV', 'PCM_U8')),
    ('float64_32k', audio_bytes(tone(0.5, 32000), 32000, 'WAV', 'DOUBLE')),
    ('six_channels', audio_bytes(tone(0.5, 16000, channels=6), 16000)),
    ('very_short', audio_bytes(tone(0.02, 16000), 16000)),
])
def test_audio_formats_rates_and_channels(url, name, data):
    response = post_wav(url, data, 'audio/flac' if 'flac' in name else 'audio/wav')
    assert response.status_code == 200, response.text
    assert len(response.json()['results']) == len(LABELS)


def test_paddlespeech_cls_schema_is_exact(url, predictor, tmp_path):
    audio = base64.b64encode(WAV).decode()
    # PaddleSpeech's client posts the JSON as plain data, with no Content-Type.
    response = httpx.post(url + '/paddlespeech/cls', content=json.dumps({'audio': audio, 'topk': 2}))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {'success', 'code', 'message', 'result'}
    assert body['success'] is True and body['code'] == 200 and body['message'] == {'description': 'success'}
    assert set(body['result']) == {'topk', 'results'} and body['result']['topk'] == 2
    assert [set(r) for r in body['result']['results']] == [{'class_name', 'prob'}] * 2
    expected = expected_scores(predictor, tmp_path)
    assert [r['class_name'] for r in body['result']['results']] == list(expected)[:2]
    assert all(isinstance(r['prob'], float) for r in body['result']['results'])
    # topk defaults to 1, as in PaddleSpeech's request model.
    default = httpx.post(url + '/paddlespeech/cls', json={'audio': audio}).json()
    assert default['result']['topk'] == 1 and len(default['result']['results']) == 1


def test_paddlespeech_cls_failures_have_its_shape(url):
    # A body that does not fit the request model: 422 with FastAPI's `detail`, as PaddleSpeech answers.
    missing = httpx.post(url + '/paddlespeech/cls', json={'topk': 1})
    assert missing.status_code == 422
    assert missing.json()['detail'][0]['loc'] == ['body', 'audio']
    not_json = httpx.post(url + '/paddlespeech/cls', content=b'{"audio": ')
    assert not_json.status_code == 422 and not_json.json()['detail'][0]['type'] == 'json_invalid'
    wrong_type = httpx.post(url + '/paddlespeech/cls', json={'audio': 'x', 'topk': 'many'})
    assert wrong_type.status_code == 422 and wrong_type.json()['detail'][0]['loc'] == ['body', 'topk']
    # Audio or topk it cannot use: HTTP 200 with "success": false, as PaddleSpeech answers.
    audio = base64.b64encode(WAV).decode()
    for payload, words in (({'audio': 'not base64!'}, 'base64'), ({'audio': base64.b64encode(b'text').decode()},
                                                                    'not readable as audio'),
                           ({'audio': audio, 'topk': 4}, 'topk'), ({'audio': audio, 'topk': 0}, 'topk'),
                           ({'audio': ''}, 'empty')):
        response = httpx.post(url + '/paddlespeech/cls', json=payload)
        assert response.status_code == 200, payload
        body = response.json()
        assert set(body) == {'success', 'code', 'message'} and body['success'] is False
        assert body['code'] == 400 and words in body['message']['description'], body


def test_paddlespeech_help(url):
    body = httpx.get(url + '/paddlespeech/cls/help').json()
    assert body['success'] == 'True' and body['result']['description'] == 'cls server'


def test_healthz_model_docs_and_page(url):
    health = httpx.get(url + '/healthz')
    assert health.status_code == 200 and health.json()['status'] == 'ok'
    model = httpx.get(url + '/v1/model').json()
    assert model['name'] == 'panns_cnn6' and model['labels'] == list(LABELS)
    assert model['sample_rate'] == 32000 and model['frontend']['n_mels'] == 64
    assert model['precision'] == 'fp32' and model['task'] == 'sound-cls'
    spec = httpx.get(url + '/openapi.json').json()
    assert {'/v1/classify', '/paddlespeech/cls', '/healthz', '/v1/model'} <= set(spec['paths'])
    assert {'audio/*', 'multipart/form-data', 'application/json'} <= set(
        spec['paths']['/v1/classify']['post']['requestBody']['content'])
    assert httpx.get(url + '/docs').status_code == 200
    page = httpx.get(url + '/')
    assert page.status_code == 200 and 'text/html' in page.headers['content-type']
    for name, kind in (('app.js', 'javascript'), ('style.css', 'text/css'), ('recorder-worklet.js', 'javascript')):
        response = httpx.get(f'{url}/static/{name}')
        assert response.status_code == 200 and kind in response.headers['content-type']
    # Works offline: the page loads nothing from another site.
    for text in (page.text, httpx.get(url + '/static/app.js').text, httpx.get(url + '/static/style.css').text):
        assert 'http://' not in text and 'https://' not in text and '//cdn' not in text


# Errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, status, code, words', [
    (dict(content=b'not audio at all' * 10), 415, 'unsupported_media_type', 'without a Content-Type'),
    (dict(content=b'{"inputs": "AAAA"}', headers={'content-type': 'application/octet-stream'}), 415,
     'unsupported_media_type', 'application/octet-stream'),
    (dict(content=WAV, headers={'content-type': 'text/plain'}), 415, 'unsupported_media_type', 'audio/wav'),
    (dict(content=b'', headers={'content-type': 'audio/wav'}), 400, 'empty_audio', 'empty'),
    (dict(content=b'RIFF....WAVEjunk', headers={'content-type': 'audio/wav'}), 422, 'undecodable_audio',
     'not readable as audio'),
    (dict(content=b'{"inputs": ', headers={'content-type': 'application/json'}), 400, 'invalid_json', 'JSON'),
    (dict(json={'audio': 'x'}), 400, 'missing_field', '"inputs"'),
    (dict(json={'inputs': 'x', 'top_k': 2}), 400, 'unknown_parameter', 'top_k'),
    (dict(json={'inputs': 'AAAA', 'parameters': {'topk': 2}}), 400, 'unknown_parameter', 'topk'),
    (dict(json={'inputs': 'AAAA', 'parameters': {'top_k': 0}}), 400, 'invalid_parameter', 'parameters.top_k'),
    # a JSON number is a number, as in the stream's start message (text is for query strings and forms)
    (dict(json={'inputs': 'AAAA', 'parameters': {'top_k': '2'}}), 400, 'invalid_parameter', 'parameters.top_k'),
    (dict(json={'inputs': 'not base64 at all!'}), 400, 'invalid_base64', 'base64'),
    (dict(json={'inputs': 42}), 400, 'invalid_base64', 'string'),
    (dict(files={'upload': ('a.wav', WAV, 'audio/wav')}), 400, 'missing_field', '"file"'),
    (dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'top_k': 0}), 400, 'invalid_parameter',
     'top_k'),
    (dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'top_k': 'x'}), 400, 'invalid_parameter',
     'top_k'),
])
def test_bad_requests_get_json_errors_naming_the_problem(url, kwargs, status, code, words):
    response = httpx.post(url + '/v1/classify', timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()['error']
    assert error['code'] == code and words in error['message'], error


def test_audio_without_a_content_type_is_known_by_its_bytes(url):
    """Raw audio with no Content-Type (as Hugging Face's client sends it) or as
    application/octet-stream: told by its first bytes, for every format the decoder reads."""
    for data in (WAV, audio_bytes(tone(1.0, 48000), 48000, 'FLAC'), audio_bytes(tone(1.0, 22050), 22050, 'OGG',
                                                                              'VORBIS')):
        for headers in ({}, {'content-type': 'application/octet-stream'}):
            response = httpx.post(url + '/v1/classify', content=data, headers=headers, timeout=30)
            assert response.status_code == 200, (data[:4], headers, response.text)


UNKNOWN_IN_EVERY_FORM = [
    ('/v1/classify', dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'topk': 3}), 'topk'),
    ('/v1/classify', dict(files={'file': ('a.wav', WAV, 'audio/wav')}, data={'topk': '3'}), 'topk'),
    ('/v1/classify', dict(json={'inputs': base64.b64encode(WAV).decode(), 'parameters': {'topk': 3}}),
     'parameters.topk'),
    ('/v1/classify', dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'window': 2}), 'window'),
    ('/v1/events', dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'windw': 4}), 'windw'),
    ('/v1/events', dict(files={'file': ('a.wav', WAV, 'audio/wav')}, data={'windw': '4'}), 'windw'),
    ('/v1/events', dict(json={'inputs': base64.b64encode(WAV).decode(), 'parameters': {'top_k': 2}}),
     'parameters.top_k'),
    ('/hf/audio-classification', dict(content=WAV, params={'topk': 2}), 'topk'),
    ('/v1/classify', dict(content=WAV, headers={'content-type': 'audio/wav'}, params={'api_key': 'k'}), 'api_key'),
]


@pytest.mark.parametrize('path, kwargs, field', UNKNOWN_IN_EVERY_FORM)
def test_an_unknown_parameter_is_refused_in_every_form(url, path, kwargs, field):
    response = httpx.post(url + path, timeout=30, **kwargs)
    assert response.status_code == 400, response.text
    error = response.json()['error']
    assert error['code'] == 'unknown_parameter' and error['field'] == field, error
    accepted = ['hop', 'window'] if path == '/v1/events' else ['top_k']
    assert str(accepted) in error['message'], error


def test_the_stream_start_message_follows_the_same_rule(url):
    with ws_connect(url.replace('http', 'ws') + '/v1/stream', open_timeout=10) as ws:
        ws.send(json.dumps({'sample_rate': 16000, 'topk': 2}))
        error = json.loads(ws.recv(timeout=10))['error']
    assert error['code'] == 'unknown_parameter' and "'topk'" in error['message'] and 'top_k' in error['message']


def test_parameters_given_twice_or_in_any_one_form(url):
    twice = httpx.post(url + '/v1/classify', files={'file': ('a.wav', WAV, 'audio/wav')}, data={'top_k': '1'},
                       params={'top_k': 2})
    assert twice.status_code == 400 and twice.json()['error']['code'] == 'duplicate_parameter', twice.text
    b64_wav = base64.b64encode(WAV).decode()
    for body in ('{"inputs": "%s", "parameters": {"top_k": 1, "top_k": 2}}' % b64_wav,
                 '{"inputs": "%s", "inputs": "%s"}' % (b64_wav, b64_wav)):
        same_key = httpx.post(url + '/v1/classify', content=body, headers={'content-type': 'application/json'})
        assert same_key.status_code == 400 and same_key.json()['error']['code'] == 'duplicate_parameter', \
            same_key.text
    events_topk = httpx.post(url + '/v1/events', content=WAV, headers={'content-type': 'audio/wav'},
                             params={'topk': 2}).json()['error']['message']
    assert 'top_k is the name here' not in events_topk and "PaddleSpeech's spelling" in events_topk
    data = audio_bytes(tone(3.0, 16000), 16000)
    b64 = base64.b64encode(data).decode()
    answers = [httpx.post(url + '/v1/events', content=data, headers={'content-type': 'audio/wav'},
                          params={'window': '2', 'hop': '1'}, timeout=30),
               httpx.post(url + '/v1/events', files={'file': ('a.wav', data, 'audio/wav')},
                          data={'window': '2', 'hop': '1'}, timeout=30),
               httpx.post(url + '/v1/events', json={'inputs': b64, 'parameters': {'window': 2, 'hop': 1}}, timeout=30)]
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    assert len({json.dumps(a.json()) for a in answers}) == 1


def test_hugging_face_client_works_unchanged(url, predictor, tmp_path):
    hub = pytest.importorskip('huggingface_hub', reason='huggingface_hub is not installed (pip install '
                                                        'huggingface_hub): the Hugging Face client test needs it')
    client = hub.InferenceClient(model=url + '/hf/audio-classification')
    expected = expected_scores(predictor, tmp_path)
    every = client.audio_classification(WAV)                  # raw bytes, no Content-Type
    best_two = client.audio_classification(WAV, top_k=2)      # {"inputs": base64, "parameters": {"top_k": 2}}
    (tmp_path / 'clip.wav').write_bytes(WAV)
    from_path = client.audio_classification(str(tmp_path / 'clip.wav'))
    assert [e.label for e in every] == list(expected)[:5] == [e.label for e in from_path]
    np.testing.assert_allclose([e.score for e in every], list(expected.values()), atol=1e-5)
    assert [e.label for e in best_two] == list(expected)[:2]


def test_unknown_paths_and_methods(url):
    missing = httpx.get(url + '/v2/classify')
    assert missing.status_code == 404 and '/docs' in missing.json()['error']['message']
    assert httpx.get(url + '/v1/classify').status_code == 405


# Limits -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def strict_url(predictor):
    settings = ServeSettings(max_body_bytes=200_000, max_audio_seconds=2.0, timeout=1.5)
    with serve_in_thread(create_app(predictor, settings)) as base:
        yield base


def test_body_and_duration_limits(strict_url):
    big = wav_bytes(4.0, 32000)   # 256 kB
    too_big = post_wav(strict_url, big)
    assert too_big.status_code == 413 and too_big.json()['error']['code'] == 'body_too_large'
    message = too_big.json()['error']['message']
    assert '200000 bytes' in message and '--max-body-mb' in message
    long_clip = post_wav(strict_url, wav_bytes(3.0, 8000))   # small, but 3 s
    assert long_clip.status_code == 413 and long_clip.json()['error']['code'] == 'audio_too_long'
    assert '--max-audio-seconds' in long_clip.json()['error']['message']
    assert post_wav(strict_url, wav_bytes(2.0, 8000)).status_code == 200


def test_slow_body_gets_408(strict_url):
    host, port = strict_url.removeprefix('http://').split(':')
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n'
                     b'Content-Length: 1000\r\n\r\n' + WAV[:100])
        answer = read_answer(sock).decode('latin-1')
    assert answer.startswith('HTTP/1.1 408') and 'body_timeout' in answer


def test_model_that_does_not_answer_in_time_gets_504(strict_url, predictor):
    with counting_engine(predictor) as engine:
        engine.gate.clear()   # the engine holds every call until the test opens the gate
        response = post_wav(strict_url)
    assert response.status_code == 504 and response.json()['error']['code'] == 'timeout'
    assert post_wav(strict_url).status_code == 200


# Batching and the queue -------------------------------------------------------------------

def concurrent_posts(url, count, data=WAV):
    """`count` requests released together from their own threads; returns the responses."""
    barrier = threading.Barrier(count)
    responses = [None] * count

    def one(i):
        barrier.wait(timeout=10)
        responses[i] = post_wav(url, data)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return responses


def test_requests_arriving_together_share_engine_calls(predictor):
    settings = ServeSettings(max_batch=8, max_wait_ms=300)
    clip = wav_bytes(1.0, 32000)   # the model's rate and one length: one engine call per batch
    with serve_in_thread(create_app(predictor, settings)) as base, counting_engine(predictor) as engine:
        responses = concurrent_posts(base, 8, clip)
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert sum(engine.calls) == 8
        assert len(engine.calls) <= 2 and max(engine.calls) >= 4, engine.calls
        assert len({json.dumps(r.json()) for r in responses}) == 1
        assert httpx.get(base + '/healthz').json()['batches'] == len(engine.calls)


def test_full_queue_answers_503_with_retry_after(predictor):
    settings = ServeSettings(max_batch=1, max_queue=1, max_wait_ms=0, timeout=30)
    with serve_in_thread(create_app(predictor, settings)) as base, counting_engine(predictor) as engine:
        engine.gate.clear()
        results = {}
        first = threading.Thread(target=lambda: results.setdefault('running', post_wav(base)))
        first.start()
        assert engine.entered.wait(10)                        # the first clip is in the engine
        second = threading.Thread(target=lambda: results.setdefault('queued', post_wav(base)))
        second.start()
        for _ in range(100):                                  # until the second clip is queued
            if httpx.get(base + '/healthz').json()['queue'] == 1:
                break
            threading.Event().wait(0.05)
        refused = post_wav(base)
        engine.gate.set()
        first.join(30)
        second.join(30)
    assert refused.status_code == 503 and refused.json()['error']['code'] == 'busy'
    assert int(refused.headers['retry-after']) >= 1
    assert results['running'].status_code == 200 and results['queued'].status_code == 200


def test_batcher_batches_isolates_failures_and_refuses_when_full():
    calls = []

    def run_batch(items):
        calls.append(list(items))
        if 'bad' in items:
            raise ValueError('bad item')
        return [item.upper() for item in items]

    async def scenario():
        batcher = Batcher(run_batch, max_batch=3, max_wait=0.05, max_queue=4)
        await batcher.start()
        futures = [batcher.submit(x) for x in ('a', 'b', 'c', 'd')]
        with pytest.raises(QueueFull) as full:
            batcher.submit('e')
        assert full.value.retry_after >= 1
        assert await asyncio.gather(*futures) == ['A', 'B', 'C', 'D']
        mixed = [batcher.submit(x) for x in ('x', 'bad', 'y')]
        done = await asyncio.gather(*mixed, return_exceptions=True)
        assert done[0] == 'X' and isinstance(done[1], ValueError) and done[2] == 'Y'
        expired = batcher.submit('late')
        expired.cancel()                            # a request that went away while queued
        assert await batcher.submit('z') == 'Z'
        waiting = batcher.submit('never')
        await batcher.stop()
        with pytest.raises(ShuttingDown):
            await waiting
        return batcher

    batcher = asyncio.run(scenario())
    with pytest.raises(ShuttingDown):   # stopped: refuses at once rather than queue for nobody
        batcher.submit('after')
    assert calls[:2] == [['a', 'b', 'c'], ['d']]
    assert ['x', 'bad', 'y'] in calls and ['bad'] in calls   # the batch, then one by one
    assert not any('late' in call for call in calls)
    assert batcher.items >= 7


def test_batcher_fills_a_batch_with_a_flows_later_units_after_every_flows_head():
    """A request alone on the engine still batches its windows (units behind its head fill the
    batch), and another flow's head always comes before any flow's second unit; units of
    another run or key, or behind one in their flow, wait for their own batch."""
    calls = []

    def run_batch(items):
        calls.append(list(items))
        return list(items)

    async def scenario():
        batcher = Batcher(run_batch, max_batch=3, max_wait=0.05, max_queue=16)
        await batcher.start()
        lone = Flow()
        await asyncio.gather(*batcher.submit_many(['a1', 'a2', 'a3', 'a4', 'a5'], lone))
        first, second, other_key = Flow(), Flow(), Flow()
        futures = batcher.submit_many(['b1', 'b2', 'b3', 'b4'], first)
        futures += batcher.submit_many(['c1'], second)
        futures += batcher.submit_many(['k1', 'k2'], other_key, key='other')
        futures += batcher.submit_many(['b5'], first, key='other')
        await asyncio.gather(*futures)
        await batcher.stop()

    asyncio.run(scenario())
    assert calls[:2] == [['a1', 'a2', 'a3'], ['a4', 'a5']]
    # Turn order after the first batch: the flows that ran go to the back.
    assert calls[2:] == [['b1', 'c1', 'b2'], ['k1', 'k2'], ['b3', 'b4'], ['b5']]


# API key and CORS -------------------------------------------------------------------------

def test_api_key(predictor):
    settings = ServeSettings(api_key='s3cret')
    with serve_in_thread(create_app(predictor, settings)) as base:
        missing = post_wav(base)
        assert missing.status_code == 401 and missing.headers['www-authenticate'] == 'Bearer'
        assert 'no API key' in missing.json()['error']['message']
        wrong = post_wav(base, headers={'x-api-key': 's3cre'})
        assert wrong.status_code == 401 and 'wrong API key' in wrong.json()['error']['message']
        assert post_wav(base, headers={'authorization': 'Bearer s3cret'}).status_code == 200
        assert post_wav(base, headers={'x-api-key': 's3cret'}).status_code == 200
        assert httpx.get(base + '/v1/model').status_code == 401
        speech = httpx.post(base + '/paddlespeech/cls', json={'audio': ''})
        assert speech.status_code == 401 and speech.json()['success'] is False
        for open_path in ('/healthz', '/', '/static/app.js', '/openapi.json'):
            assert httpx.get(base + open_path).status_code == 200, open_path
        ws_url = base.replace('http', 'ws') + '/v1/stream'
        with ws_connect(ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({'sample_rate': 16000}))
            assert json.loads(ws.recv(timeout=10))['error']['code'] == 'unauthorized'
        with ws_connect(ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({'sample_rate': 16000, 'api_key': 's3cret'}))
            assert json.loads(ws.recv(timeout=10))['type'] == 'ready'
        with ws_connect(ws_url, open_timeout=10, additional_headers={'X-API-Key': 's3cret'}) as ws:
            ws.send(json.dumps({'sample_rate': 16000}))
            assert json.loads(ws.recv(timeout=10))['type'] == 'ready'


def test_api_key_guards_every_route_but_the_open_ones(predictor):
    """Every HTTP route of the app (the Hugging Face one included) needs the key, except the few
    named open: a route added later is guarded without anyone remembering to list it."""
    from starlette.routing import Mount, WebSocketRoute
    from paddle_soundcls.serve.settings import OPEN_PATHS
    app = create_app(predictor, ServeSettings(api_key='s3cret'))
    routes = [r for r in app.routes if not isinstance(r, (Mount, WebSocketRoute))]
    assert '/hf/audio-classification' in {r.path for r in routes}
    with serve_in_thread(app) as base:
        for route in routes:
            for method in sorted(route.methods - {'HEAD'}):
                answer = httpx.request(method, base + route.path, content=b'RIFF')
                if route.path in OPEN_PATHS:
                    assert answer.status_code != 401, route.path
                else:
                    assert answer.status_code == 401, (method, route.path, answer.status_code)


def test_api_key_from_environment(monkeypatch, export_dir):
    parser = add_serve_arguments(argparse.ArgumentParser())
    monkeypatch.setenv('PADDLE_SOUNDCLS_API_KEY', 'from-env')
    assert settings_from_args(parser.parse_args([export_dir])).api_key == 'from-env'
    assert settings_from_args(parser.parse_args([export_dir, '--api-key', 'flag'])).api_key == 'flag'
    monkeypatch.delenv('PADDLE_SOUNDCLS_API_KEY')
    args = parser.parse_args([export_dir])
    assert settings_from_args(args).api_key is None
    assert (args.host, args.port, args.workers, args.cors_origin) == ('127.0.0.1', 8866, 1, [])


def test_serve_names_engines_as_the_other_commands_do(export_dir, capsys):
    """serve --engine takes the vocabulary of predict/events/benchmark; the old --precision int8
    still works (as --engine onnxruntime_int8) with a note, and a contradiction is refused."""
    from paddle_soundcls.cli.common import ENGINE_CHOICES
    from paddle_soundcls.serve.command import SERVE_ENGINES, engine_from_args
    assert set(SERVE_ENGINES) == set(ENGINE_CHOICES) - {'dygraph'}
    parser = add_serve_arguments(argparse.ArgumentParser())
    assert engine_from_args(parser.parse_args([export_dir])) == 'onnxruntime'
    assert engine_from_args(parser.parse_args([export_dir, '--engine', 'onnxruntime_int8'])) == 'onnxruntime_int8'
    assert engine_from_args(parser.parse_args([export_dir, '--precision', 'int8'])) == 'onnxruntime_int8'
    assert '--precision is deprecated; use --engine onnxruntime_int8' in capsys.readouterr().err
    with pytest.raises(ServeError, match='--engine onnxruntime_int8'):
        engine_from_args(parser.parse_args([export_dir, '--precision', 'int8', '--engine', 'paddle']))


def test_cors_is_off_unless_asked(url, predictor):
    origin = {'origin': 'https://example.org'}
    assert 'access-control-allow-origin' not in post_wav(url, headers=origin).headers
    settings = ServeSettings(cors_origins=('https://example.org',))
    with serve_in_thread(create_app(predictor, settings)) as base:
        assert post_wav(base, headers=origin).headers['access-control-allow-origin'] == 'https://example.org'
        preflight = httpx.options(base + '/v1/classify', headers=dict(origin, **{
            'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type'}))
        assert preflight.status_code == 200
        other = post_wav(base, headers={'origin': 'https://elsewhere.example'})
        assert 'access-control-allow-origin' not in other.headers


# WebSocket stream -------------------------------------------------------------------------

def stream(url, start, chunks, end=True):
    """Send the start message and the chunks; returns every message until the server closes."""
    messages = []
    with ws_connect(url.replace('http', 'ws') + '/v1/stream', open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps(start))
        messages.append(json.loads(ws.recv(timeout=10)))
        for chunk in chunks:
            ws.send(chunk)
        if end:
            ws.send(json.dumps({'type': 'end'}))
        for _ in range(1000):
            try:
                messages.append(json.loads(ws.recv(timeout=20)))
            except Exception:   # closed by the server
                break
    return messages


def test_stream_scores_a_sliding_window(url, predictor):
    wave = tone(2.0, 16000)
    pcm = (wave * 32767).astype('<i2').tobytes()
    chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]   # 0.1 s each
    messages = stream(url, {'sample_rate': 16000, 'format': 'int16', 'window': 1.0, 'hop': 0.5, 'top_k': 2},
                      chunks)
    assert messages[0]['type'] == 'ready' and messages[0]['model'] == 'panns_cnn6'
    scores = [m for m in messages if m['type'] == 'scores']
    assert [(m['start'], m['end']) for m in scores] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]
    assert messages[-1] == {'type': 'done'}
    assert all(len(m['results']) == 2 for m in scores)
    # The stream is resampled to the model's rate as one recording; a window is a piece of it.
    at_model_rate = audio.resample((wave * 32767).astype('<i2').astype(np.float32) / 32768, 16000, 32000)
    [expected] = predictor.predict(at_model_rate[16000:48000], sample_rate=32000, topk=2)
    got = OrderedDict((r['label'], r['score']) for r in scores[1]['results'])
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-5)


def test_stream_float32_stereo_and_a_short_tail(url):
    stereo = np.stack([tone(0.3, 8000), tone(0.3, 8000)], axis=1).astype('<f4')
    messages = stream(url, {'sample_rate': 8000, 'format': 'float32', 'channels': 2, 'window': 1.0},
                      [stereo.tobytes()])
    scores = [m for m in messages if m['type'] == 'scores']
    assert [(m['start'], m['end']) for m in scores] == [(0.0, 0.3)]   # shorter than a window: scored at the end


def test_stream_modes_are_pluggable(url):
    class Loudest:
        def __init__(self, config, labels, meta):
            self.best = []

        def on_window(self, start, end, scores):
            self.best.append(next(iter(scores)))
            return []

        def on_end(self):
            return [{'type': 'summary', 'best': self.best}]

    register_stream_mode('summary', Loudest)
    try:
        pcm = (tone(2.0, 16000) * 32767).astype('<i2').tobytes()
        messages = stream(url, {'sample_rate': 16000, 'window': 1.0, 'hop': 1.0, 'mode': 'summary'}, [pcm])
    finally:
        STREAM_MODES.pop('summary')
    assert [m['type'] for m in messages] == ['ready', 'summary', 'done']
    assert len(messages[1]['best']) == 2 and set(messages[1]['best']) <= set(LABELS)


# The command line -------------------------------------------------------------------------

def test_resolve_model_dir(export_dir, tmp_path):
    from helpers import small_module
    from paddle_soundcls.deploy import Predictor
    assert resolve_model_dir(export_dir) == export_dir
    # A checkpoint directory is exported once into the cache and served from there.
    module = small_module('panns_cnn6', label_map=['a', 'b'])
    module.save(str(tmp_path / 'ckpt'))
    served = resolve_model_dir(tmp_path / 'ckpt')
    assert served.startswith(os.environ['PADDLE_SOUNDCLS_HOME']) and os.path.isfile(os.path.join(served, 'export.json'))
    wave = tone(1.5, 32000, 440.0)
    expected = module.predict([wave], 32000, engine='dygraph')[0]
    got = Predictor(served).predict([wave], 32000)[0]
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-4)
    stamp = os.path.getmtime(os.path.join(served, 'export.json'))
    assert resolve_model_dir(tmp_path / 'ckpt') == served  # not exported again
    assert os.path.getmtime(os.path.join(served, 'export.json')) == stamp
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ServeError, match=r'neither an export directory \(no export.json\) nor a checkpoint '
                                         r'directory .*\(no meta.json\)') as refused:
        resolve_model_dir(tmp_path / 'empty')
    assert '--model' not in str(refused.value)   # an option of other commands, not of serve
    with pytest.raises(ServeError, match='neither an export directory.*panns_cnn14'):
        resolve_model_dir('no_such_model')
    (tmp_path / 'file.wav').write_bytes(WAV)
    with pytest.raises(ServeError, match='is a file'):
        resolve_model_dir(tmp_path / 'file.wav')


def test_run_serve_refuses_a_bad_command_line_before_starting(export_dir, tmp_path):
    from paddle_soundcls.serve import run_serve
    parser = add_serve_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match='meta.json'):
        run_serve(parser.parse_args([str(tmp_path)]))
    with pytest.raises(ServeError, match='max_batch must be a positive int'):
        run_serve(parser.parse_args([export_dir, '--max-batch', '0']))
    with pytest.raises(ServeError, match='--workers must be at least 1'):
        run_serve(parser.parse_args([export_dir, '--workers', '0']))
    for size in ('inf', 'nan', '0'):
        with pytest.raises(ServeError, match='--max-body-mb must be a positive number of MiB'):
            run_serve(parser.parse_args([export_dir, '--max-body-mb', size]))
    for hosts, says in (('localhost:8866', 'without a port'), ('', 'is empty')):
        with pytest.raises(ServeError, match=f'--allowed-hosts .*{says}'):
            run_serve(parser.parse_args([export_dir, '--allowed-hosts', hosts]))
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f'cannot listen on 127.0.0.1:{port}.*another --port'):
            run_serve(parser.parse_args([export_dir, '--port', str(port)]))


def test_settings_are_checked():
    with pytest.raises(ValueError, match='max_batch must be a positive int'):
        ServeSettings(max_batch=0)
    with pytest.raises(ValueError, match='timeout must be a positive number'):
        ServeSettings(timeout=float('nan'))
    with pytest.raises(ValueError, match='api_key'):
        ServeSettings(api_key='  ')
    with pytest.raises(ValueError, match='max_decode_samples must be a positive int'):
        ServeSettings(max_decode_samples=0)
    with pytest.raises(ValueError, match='max_overlap must be a number >= 1'):
        ServeSettings(max_overlap=0.5)
    with pytest.raises(ValueError, match='max_window_seconds must be a positive number'):
        ServeSettings(max_window_seconds=-1)
    parser = add_serve_arguments(argparse.ArgumentParser())
    settings = settings_from_args(parser.parse_args(['x', '--max-decode-samples', '2e6', '--max-window-seconds', '8',
                                                     '--max-overlap', '2']))
    assert (settings.max_decode_samples, settings.max_window_seconds, settings.max_overlap) == (2_000_000, 8.0, 2.0)
    with pytest.raises(ValueError, match='max_decode_samples must be a positive int'):
        settings_from_args(parser.parse_args(['x', '--max-decode-samples', '1.5']))


def test_server_runs_without_paddle(export_dir, tmp_path):
    """`run_serve` in a child process with paddle unimportable: it serves, and never imports paddle."""
    report = tmp_path / 'modules.json'
    prelude = BLOCK_PADDLE + textwrap.dedent(f'''
        import atexit
        atexit.register(lambda: open({str(report)!r}, 'w').write(json.dumps(
            sorted(m for m in sys.modules if m == 'paddle' or m.startswith('paddle.')))))
    ''')
    with serve_in_process(export_dir, prelude=prelude, env={'PADDLE_SOUNDCLS_API_KEY': 'k'}) as (base, process):
        response = post_wav(base, headers={'x-api-key': 'k'})
        assert response.status_code == 200, response.text
        assert [r['label'] for r in response.json()['results']][0] in LABELS
        assert post_wav(base).status_code == 401                           # the key came from the environment
    assert process.returncode == 0, process.stderr.read()[-3000:]
    assert json.loads(report.read_text()) == []


def test_several_workers(export_dir):
    with serve_in_process(export_dir, '--workers', '2') as (base, process):
        responses = concurrent_posts(base, 6)
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert process.returncode == 0, process.stderr.read()[-3000:]


# Event detection ---------------------------------------------------------------------------

def test_events_endpoint_answers_the_predictors_events(url, predictor, tmp_path):
    sr = 16000
    wave = np.concatenate([tone(1.0, sr, 300.0, amp=0.001), tone(1.5, sr, 1200.0), tone(1.0, sr, 300.0, amp=0.001)])
    data = audio_bytes(wave, sr)
    response = post_wav(url, data=data, path='/v1/events', params={'window': 2.0, 'hop': 1.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body['model'] == 'panns_cnn6' and body['duration'] == pytest.approx(3.5) and body['frame_hop'] == 0.01
    (tmp_path / 'clip.wav').write_bytes(data)
    [expected] = predictor.detect([str(tmp_path / 'clip.wav')], window=2.0, hop=1.0)
    assert body['events'] == json.loads(json.dumps(expected['events']))
    bad = post_wav(url, data=data, path='/v1/events', params={'window': 0})
    assert bad.status_code == 400 and bad.json()['error']['field'] == 'window'
    assert post_wav(url, data=b'', path='/v1/events').status_code == 400


def test_stream_events_mode_reports_each_event_once(url, predictor):
    sr = 16000
    quiet, loud = tone(1.0, sr, 300.0, amp=0.001), tone(2.0, sr, 1500.0, amp=0.5)
    pcm = (np.concatenate([quiet, loud, quiet]) * 32767).astype('<i2').tobytes()
    options = {'onset_threshold': 0.5, 'offset_threshold': 0.5, 'median_filter_seconds': 0.0,
               'min_duration_seconds': 0.0, 'min_gap_seconds': 0.0}
    messages = stream(url, {'sample_rate': sr, 'window': 1.0, 'hop': 0.5, 'mode': 'events', 'options': options},
                      [pcm[i:i + 8000] for i in range(0, len(pcm), 8000)])
    assert messages[0]['type'] == 'ready' and messages[-1]['type'] == 'done'
    reports = messages[1:-1]
    starts = [m for m in reports if m['type'] == 'start']
    ends = [m for m in reports if m['type'] == 'end']
    assert len(starts) == len(ends) >= 1
    assert sorted((m['label'], m['onset']) for m in starts) == sorted((m['label'], m['onset']) for m in ends)
    # The frames and decisions of offline detection (Predictor.detect, /v1/events): the same events.
    from paddle_soundcls.deploy.events import EventConfig
    wave = np.frombuffer(pcm, '<i2').astype(np.float32) / 32768
    [offline] = predictor.detect([wave], sr, window=1.0, hop=0.5, config=EventConfig(**options))
    assert [(m['label'], m['onset'], m['offset']) for m in ends] == [
        (e['label'], e['onset'], e['offset']) for e in offline['events']]
    bad = stream(url, {'sample_rate': sr, 'mode': 'events', 'options': {'onset_threshold': 7}}, [], end=False)
    assert bad[-1]['type'] == 'error' and 'onset_threshold' in bad[-1]['error']['message']


def test_the_longest_clip_depends_on_how_the_model_scores_clips(predictor):
    """Left to the model: 10 s for one that scores clips whole (one engine call per clip), 60 s for
    one with a training clip length (scored in windows of it); an explicit value is kept."""
    class Windowed:
        clip_seconds = 2.0
    assert ServeSettings().for_model(predictor).max_audio_seconds == 10.0
    assert ServeSettings().for_model(Windowed()).max_audio_seconds == 60.0
    assert ServeSettings(max_audio_seconds=30.0).for_model(predictor).max_audio_seconds == 30.0
    with serve_in_thread(create_app(predictor)) as base:
        response = post_wav(base, wav_bytes(10.5, 16000))
        assert response.status_code == 413 and '10 s' in response.json()['error']['message']
        assert httpx.get(base + '/v1/model').json()['max_audio_seconds'] == 10.0


def test_search_answers_the_nearest_clips_of_the_served_index(export_dir, tmp_path):
    """/v1/search embeds the clip as Predictor.embed does and answers what the index answers for it."""
    pytest.importorskip('faiss')
    from paddle_soundcls.cli import main as cli_main
    from paddle_soundcls.search import VectorIndex
    clips = []
    for i, freq in enumerate((300, 1200, 4000)):
        path = tmp_path / f'clip{i}.wav'
        path.write_bytes(wav_bytes(1.0, 16000, freq=freq))
        clips.append(str(path))
    assert cli_main(['embed', str(export_dir), *clips, '--output', str(tmp_path / 'emb')]) == 0
    assert cli_main(['index', str(tmp_path / 'emb'), '--output', str(tmp_path / 'index')]) == 0
    predictor = Predictor(export_dir)
    expected = VectorIndex.load(tmp_path / 'index').search(predictor.embed(clips[1])[0]['embeddings'][0], k=2)
    settings = ServeSettings(index_dir=str(tmp_path / 'index'), max_search_k=2)
    with serve_in_thread(create_app(predictor, settings)) as base:
        answer = post_wav(base, (tmp_path / 'clip1.wav').read_bytes(), path='/v1/search?top_k=5').json()
        assert [r['file'] for r in answer['results']] == [r['file'] for r in expected] and answer['results'][0][
            'file'] == clips[1]
        np.testing.assert_allclose([r['score'] for r in answer['results']], [r['score'] for r in expected],
                                   atol=1e-5)
        assert post_wav(base, WAV, path='/v1/search?top_k=0').status_code == 400
    with serve_in_thread(create_app(predictor)) as base:   # no --index
        response = post_wav(base, WAV, path='/v1/search')
        assert response.status_code == 501 and 'start it with --index' in response.text
