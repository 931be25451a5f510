"""Many event streams on one server: their windows share engine calls, each stream reports what
the stream gives alone (Predictor.stream fed the same chunks), "progress" reports every window,
and a silent or slow stream delays no other. Servers listen on 127.0.0.1 only."""
import json
import threading
import time

import numpy as np
import pytest
from websockets.sync.client import connect as ws_connect

from paddle_soundcls.deploy import Predictor
from paddle_soundcls.deploy.detection import FrameStream
from paddle_soundcls.deploy.events import EventConfig
from paddle_soundcls.serve import ServeSettings
from paddle_soundcls.serve.app import create_app
from serve_fixtures import make_export_dir, serve_in_thread, tone

WINDOW, HOP = 1.0, 0.25
OPTIONS = {'onset_threshold': 0.4, 'offset_threshold': 0.4, 'median_filter_seconds': 0.05,
           'min_duration_seconds': 0.0, 'min_gap_seconds': 0.0}


class CountingFrames:
    """The predictor's frame scores of features, with the batch size and the front-end frames of every
    call recorded."""

    def __init__(self, score_frames_of_features):
        self.score_frames_of_features, self.calls, self.lengths = score_frames_of_features, [], []

    def __call__(self, features):
        self.calls.append(len(features))
        self.lengths.append(features.shape[1])
        return self.score_frames_of_features(features)


def counted(predictor):
    """`predictor` with its frame scores counted (the server's frame scorer runs the instance's
    score_frames_of_features: an export's windows are scored from their features)."""
    counting = predictor.score_frames_of_features = CountingFrames(predictor.score_frames_of_features)
    return counting


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    export = make_export_dir(tmp_path_factory.mktemp('streams') / 'export')
    predictor = Predictor(export)
    counting = counted(predictor)
    with serve_in_thread(create_app(predictor, ServeSettings(max_batch=8, max_wait_ms=50))) as base:
        yield base, export, counting


def scene(i, sr):
    """A few seconds of tones that come and go, different for every stream."""
    rng = np.random.default_rng(i)
    parts = [tone(float(rng.uniform(0.3, 1.2)), sr, float(rng.uniform(200, 4000)), amp=float(rng.choice([0.001, 0.5])))
             for _ in range(int(rng.integers(3, 7)))]
    return (np.concatenate(parts) * 32767).astype('<i2')


def run_stream(base, pcm, sr, chunk, results, key, start_barrier=None, pause=0.0):
    messages = []
    with ws_connect(base.replace('http', 'ws') + '/v1/stream', open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({'sample_rate': sr, 'window': WINDOW, 'hop': HOP, 'mode': 'events', 'options': OPTIONS,
                            'progress': True}))
        messages.append(json.loads(ws.recv(timeout=10)))
        if start_barrier is not None:
            start_barrier.wait(timeout=30)
        for first in range(0, len(pcm), chunk):
            ws.send(pcm[first:first + chunk].tobytes())
            if pause:
                time.sleep(pause)
        ws.send(json.dumps({'type': 'end'}))
        for _ in range(10000):
            try:
                messages.append(json.loads(ws.recv(timeout=30)))
            except Exception:   # closed by the server
                break
    results[key] = (messages, time.monotonic())


def alone(export, pcm, sr, chunk):
    """Reports and window count of the same chunks through Predictor.stream, in process."""
    stream = Predictor(export).stream(sr, WINDOW, HOP, EventConfig(**OPTIONS))
    waves = [pcm[i:i + chunk].astype(np.float32) / 32768 for i in range(0, len(pcm), chunk)]
    reports = [r for wave in waves for r in stream.push(wave)] + stream.close()
    frames = FrameStream(stream.frames.scorer)
    frames.feed(pcm.astype(np.float32) / 32768)
    frames.finish()
    return reports, len(frames.next_windows(10 ** 6))


def kinds(reports, kind):
    return [r for r in reports if r['type'] == kind]


def test_streams_share_engine_calls_and_each_reports_what_it_reports_alone(served):
    base, export, counting = served
    sr = Predictor(export).frontend_cfg.sample_rate   # the model's rate: no resampling on either side
    pcms = [scene(i, sr) for i in range(6)]
    chunk = sr // 10
    results, barrier = {}, threading.Barrier(len(pcms))
    counting.calls.clear()
    threads = [threading.Thread(target=run_stream, args=(base, pcm, sr, chunk, results, i, barrier))
               for i, pcm in enumerate(pcms)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert max(counting.calls) > 1   # windows of different streams went through the network together
    events_seen = 0
    for i, pcm in enumerate(pcms):
        messages, _ = results[i]
        assert messages[0]['type'] == 'ready' and messages[-1]['type'] == 'done', messages[-3:]
        reports = [m for m in messages[1:-1] if m['type'] in ('start', 'end')]
        want, windows = alone(export, pcm, sr, chunk)
        assert [(r['label'], r['onset'], r['offset']) for r in kinds(reports, 'end')] == [
            (r['label'], r['onset'], r['offset']) for r in kinds(want, 'end')]
        np.testing.assert_allclose([r['confidence'] for r in kinds(reports, 'end')],
                                   [r['confidence'] for r in kinds(want, 'end')], atol=1e-5, rtol=0)
        assert [(r['label'], r['onset']) for r in kinds(reports, 'start')] == [
            (r['label'], r['onset']) for r in kinds(want, 'start')]
        events_seen += len(kinds(want, 'end'))
        progress = kinds(messages, 'progress')
        assert len(progress) == windows
        ends = [p['frames_end'] for p in progress]
        assert ends == sorted(ends) and ends[-1] == pytest.approx(len(pcm) / sr, abs=0.011)
    assert events_seen >= len(pcms)


def test_a_silent_or_slow_stream_delays_no_other(served):
    base, export, _ = served
    sr = Predictor(export).frontend_cfg.sample_rate
    results = {}
    silent = ws_connect(base.replace('http', 'ws') + '/v1/stream', open_timeout=10, close_timeout=5)
    try:
        silent.send(json.dumps({'sample_rate': sr, 'mode': 'events', 'window': WINDOW, 'hop': HOP}))
        assert json.loads(silent.recv(timeout=10))['type'] == 'ready'
        slow = threading.Thread(target=run_stream, args=(base, scene(10, sr), sr, sr // 20, results, 'slow'),
                                kwargs={'pause': 0.1})
        slow.start()
        quick = [threading.Thread(target=run_stream, args=(base, scene(i, sr), sr, sr // 10, results, i))
                 for i in range(3)]
        for thread in quick:
            thread.start()
        for thread in quick:
            thread.join(timeout=120)
        slow.join(timeout=180)
        for key in (0, 1, 2, 'slow'):
            assert results[key][0][-1]['type'] == 'done'
        # The quick streams were answered in full while the slow one was still sending.
        assert max(results[i][1] for i in range(3)) < results['slow'][1]
        silent.send(json.dumps({'type': 'end'}))
        assert [json.loads(silent.recv(timeout=10))['type']] == ['done']   # no audio: no window, no event
    finally:
        silent.close()


def test_progress_is_for_frame_modes_and_a_boolean(served):
    base, _, _ = served
    for start, word in (({'sample_rate': 16000, 'progress': True}, 'frame mode such as "events"'),
                        ({'sample_rate': 16000, 'mode': 'events', 'progress': 'yes'}, 'true or false')):
        with ws_connect(base.replace('http', 'ws') + '/v1/stream', open_timeout=10) as ws:
            ws.send(json.dumps(start))
            reply = json.loads(ws.recv(timeout=10))
        assert reply['type'] == 'error' and reply['error']['code'] == 'bad_start' and word in reply['error']['message']


def test_more_event_streams_than_queue_slots_all_finish(tmp_path):
    """Six streams on a server whose queue holds two units: a window the full queue refuses waits
    for room (the classification requests' 503 would end an event stream, whose every window is
    needed), so every stream finishes and reports what it reports alone."""
    export = make_export_dir(tmp_path / 'export')
    predictor = Predictor(export)
    counting = counted(predictor)
    sr = predictor.frontend_cfg.sample_rate
    pcms = [scene(20 + i, sr) for i in range(6)]
    results, barrier = {}, threading.Barrier(len(pcms))
    with serve_in_thread(create_app(predictor, ServeSettings(max_batch=2, max_queue=2, max_wait_ms=20))) as base:
        threads = [threading.Thread(target=run_stream, args=(base, pcm, sr, sr // 4, results, i, barrier))
                   for i, pcm in enumerate(pcms)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        health = json.loads(ws_free_get(base + '/healthz'))
    assert health['max_queue'] == 2
    for i, pcm in enumerate(pcms):
        messages, _ = results[i]
        assert messages[-1]['type'] == 'done', [m for m in messages if m['type'] == 'error'][:2]
        want, windows = alone(export, pcm, sr, sr // 4)
        assert [(r['type'], r['label'], r['onset']) for r in messages if r['type'] in ('start', 'end')] == [
            (r['type'], r['label'], r['onset']) for r in want]
        assert len(kinds(messages, 'progress')) == windows


def ws_free_get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_streams_beyond_max_streams_are_refused_and_a_closed_one_frees_its_place(tmp_path):
    """An upgraded WebSocket is no longer counted by uvicorn's --max-connections: the server counts
    its streams itself, refuses one more with error "busy" and close code 1013, and takes a new
    one when another has ended."""
    from websockets.exceptions import ConnectionClosed
    predictor = Predictor(make_export_dir(tmp_path / 'export'))
    sr = predictor.frontend_cfg.sample_rate
    with serve_in_thread(create_app(predictor, ServeSettings(max_streams=2))) as base:
        url = base.replace('http', 'ws') + '/v1/stream'
        first, second = ws_connect(url, open_timeout=10), ws_connect(url, open_timeout=10)
        try:
            for ws in (first, second):
                ws.send(json.dumps({'sample_rate': sr}))
                assert json.loads(ws.recv(timeout=10))['type'] == 'ready'
            with ws_connect(url, open_timeout=10) as third:
                reply = json.loads(third.recv(timeout=10))
                assert reply['error']['code'] == 'busy' and '--max-streams' in reply['error']['message']
                with pytest.raises(ConnectionClosed) as closed:
                    third.recv(timeout=10)
                assert closed.value.rcvd.code == 1013
        finally:
            first.close()
        for _ in range(100):   # the server notices the close at its next read
            with ws_connect(url, open_timeout=10) as again:
                again.send(json.dumps({'sample_rate': sr}))
                reply = json.loads(again.recv(timeout=10))
            if reply['type'] == 'ready':
                break
            time.sleep(0.05)
        assert reply['type'] == 'ready'
        second.close()
    with pytest.raises(ValueError, match='max_streams'):
        ServeSettings(max_streams=0)


def test_progress_and_options_go_with_a_frame_mode_made_by_a_factory(served, monkeypatch):
    """register_stream_mode's documented form, a factory function: whether the mode takes frames
    (and so progress) is asked of the mode it makes, and it gets its options."""
    from paddle_soundcls.serve import stream as stream_module
    base, export, _ = served
    sr = Predictor(export).frontend_cfg.sample_rate
    made = []

    def factory(config, labels, meta):
        made.append(dict(config.options))
        return stream_module.FrameEvents(config, labels, meta)
    monkeypatch.setitem(stream_module.STREAM_MODES, 'my_events', factory)
    pcm = scene(3, sr)
    with ws_connect(base.replace('http', 'ws') + '/v1/stream', open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({'sample_rate': sr, 'window': WINDOW, 'hop': HOP, 'mode': 'my_events', 'options': OPTIONS,
                            'progress': True}))
        assert json.loads(ws.recv(timeout=10))['type'] == 'ready'
        ws.send(pcm.tobytes())
        ws.send(json.dumps({'type': 'end'}))
        messages = []
        for _ in range(10000):
            messages.append(json.loads(ws.recv(timeout=30)))
            if messages[-1]['type'] == 'done':
                break
    assert made == [OPTIONS]
    assert len(kinds(messages, 'progress')) == alone(export, pcm, sr, len(pcm))[1]


def test_an_events_request_computes_its_features_in_the_engine_thread_not_on_the_event_loop(served, monkeypatch):
    """/v1/events cuts its windows on the event loop, but their features (up to --max-batch merged
    segments of --max-window-seconds at a time: tens of milliseconds) are computed in the engine
    thread, so other streams and requests are not held up meanwhile."""
    import httpx
    import io
    import soundfile as sf
    import threading as threads
    from paddle_soundcls.features import mel
    base, export, _ = served
    sr = Predictor(export).frontend_cfg.sample_rate
    where = []
    window = mel.OverlapFeatures.window
    monkeypatch.setattr(mel.OverlapFeatures, 'window',
                        lambda self, *args: (where.append(threads.current_thread().name), window(self, *args))[1])
    body = io.BytesIO()
    sf.write(body, np.concatenate([scene(i, sr) for i in range(50, 53)])[:int(6 * sr)], sr, format='WAV',
             subtype='PCM_16')
    response = httpx.post(base + '/v1/events', content=body.getvalue(), headers={'content-type': 'audio/wav'},
                          params={'window': 2.56, 'hop': 0.64}, timeout=60)
    assert response.status_code == 200, response.text
    assert where and all(name.startswith('paddle-soundcls-engine') for name in where), sorted(set(where))


def test_a_lone_events_request_batches_its_windows_in_merged_segments_within_max_window(served):
    """/v1/events alone on the server: its windows go to the engine --max-batch at a time, and where
    the network allows (CNN6 at 2.56 s / 0.64 s: hops on its 16-frame grid) consecutive windows are one
    segment of at most --max-window-seconds; the events are Predictor.detect's."""
    import httpx
    import soundfile as sf
    import io
    base, export, counting = served
    predictor = Predictor(export)
    sr = predictor.frontend_cfg.sample_rate
    pcm = np.concatenate([scene(i, sr) for i in range(30, 34)])[:int(9.5 * sr)]   # within --max-audio-seconds
    body = io.BytesIO()
    sf.write(body, pcm, sr, format='WAV', subtype='PCM_16')
    counting.calls.clear()
    counting.lengths.clear()
    response = httpx.post(base + '/v1/events', content=body.getvalue(), headers={'content-type': 'audio/wav'},
                          params={'window': 2.56, 'hop': 0.64}, timeout=60)
    assert response.status_code == 200, response.text
    assert max(counting.calls) > 1
    hop_length = predictor.frontend_cfg.hop_length   # the lengths are front-end frames
    assert 2.56 * sr / hop_length < max(counting.lengths) <= ServeSettings().max_window_seconds * sr / hop_length + 1
    [want] = predictor.detect([pcm.astype(np.float32) / 32768], sr, window=2.56, hop=0.64)
    got = response.json()['events']
    assert want['events']
    assert [(e['label'], e['onset'], e['offset']) for e in got] == [
        (e['label'], e['onset'], e['offset']) for e in want['events']]
    np.testing.assert_allclose([e['confidence'] for e in got], [e['confidence'] for e in want['events']],
                               atol=1e-4, rtol=0)


def test_a_full_server_still_refuses_bad_origins_and_keys_first(tmp_path):
    """At --max-streams, a client with a wrong key or a foreign Origin is refused as it is when the
    server has room (HTTP 403 to the handshake), not told the server is busy."""
    from websockets.exceptions import InvalidStatus
    predictor = Predictor(make_export_dir(tmp_path / 'export'))
    settings = ServeSettings(max_streams=1, api_key='s3cret')
    with serve_in_thread(create_app(predictor, settings)) as base:
        url = base.replace('http', 'ws') + '/v1/stream'
        with ws_connect(url, open_timeout=10, additional_headers={'X-API-Key': 's3cret'}) as held:
            held.send(json.dumps({'sample_rate': 16000}))
            assert json.loads(held.recv(timeout=10))['type'] == 'ready'
            for headers in ({'X-API-Key': 'wrong'}, {'X-API-Key': 's3cret', 'Origin': 'http://evil.example'}):
                with pytest.raises(InvalidStatus) as refused:
                    ws_connect(url, open_timeout=10, additional_headers=headers).close()
                assert refused.value.response.status_code == 403
            with ws_connect(url, open_timeout=10, additional_headers={'X-API-Key': 's3cret'}) as extra:
                assert json.loads(extra.recv(timeout=10))['error']['code'] == 'busy'


def test_events_requests_the_queue_took_wait_for_room_instead_of_failing(tmp_path):
    """Four /v1/events requests of 36 windows each on a server whose queue holds 4 units: a request
    the queue admitted (its audio decoded) waits for room for its windows, up to its deadline, so
    each answers 200 with Predictor.detect's events or is refused (503) before any window of it is
    scored: no request fails half-way with its work thrown away."""
    import io
    import httpx
    import soundfile as sf
    export = make_export_dir(tmp_path / 'export')
    predictor = Predictor(export)
    counting = counted(predictor)
    sr = predictor.frontend_cfg.sample_rate
    pcm = np.concatenate([scene(i, sr) for i in range(40, 44)])[:int(9.5 * sr)]
    body = io.BytesIO()
    sf.write(body, pcm, sr, format='WAV', subtype='PCM_16')
    results = {}

    def post(i):
        results[i] = httpx.post(base + '/v1/events', content=body.getvalue(), headers={'content-type': 'audio/wav'},
                                params={'window': 1.0, 'hop': 0.25}, timeout=120)
    with serve_in_thread(create_app(predictor, ServeSettings(max_batch=2, max_queue=4))) as base:
        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    scored = sum(counting.calls)
    [want] = predictor.detect([pcm.astype(np.float32) / 32768], sr, window=1.0, hop=0.25)
    windows = alone(export, pcm, sr, len(pcm))[1]
    answered = [r for r in results.values() if r.status_code == 200]
    assert all(r.status_code == 503 and r.json()['error']['code'] == 'busy' for r in results.values()
               if r.status_code != 200)
    assert len(answered) >= 2 and scored == windows * len(answered)
    for response in answered:
        assert [(e['label'], e['onset'], e['offset']) for e in response.json()['events']] == [
            (e['label'], e['onset'], e['offset']) for e in want['events']]
