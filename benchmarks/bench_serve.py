"""Throughput, latency, errors and memory of `paddle-soundcls serve` under N concurrent clients,
next to the in-process batched `Predictor` on the same model and clips, in one run.

    python benchmarks/bench_serve.py --json                               # panns_cnn6, random weights
    python benchmarks/bench_serve.py EXPORT_DIR --clients 1,4,16,64 --duration 10 --json
    python benchmarks/bench_serve.py --memory-requests --json             # + RSS after 1,000 and 10,000 requests
    python benchmarks/bench_serve.py --abuse --json                       # the worst request of each kind

The server runs in a child process on 127.0.0.1 (a free port) with default options but
--max-batch / --max-wait-ms; clients are asyncio tasks of this process (httpx), each posting
WAV files (raw body) one after another for --duration seconds per concurrency level. The
in-process figure is `Predictor.predict(paths, batch_size=--max-batch)` on the same WAV files
(decoding included, as in the server), measured before and after the server runs. Figures
only: nothing is asserted. Without EXPORT_DIR the model gets random weights (speed does not
depend on them), which needs Paddle for the export; the server itself never imports it.

--abuse: the server with its default options, then, one after another for --attack-seconds
each, one hostile client sending the worst request or stream of each kind the defaults allow,
back to back (see `attacks`); meanwhile a normal client classifies a --normal-seconds clip over
and over and a prober calls /healthz every 0.1 s; the same runs for 3 s with no attacker just
before each attack, for the quiet figures next to it. Per attack: the server's peak RSS (from
/proc, reset before the attack) and CPU seconds (during it, and in the 1.5 s after the
attacker left), the attacker's answers, the latency of /healthz and of the normal request; and
`alone`: one such request (or stream) with nothing else, its time, CPU seconds and peak memory.
"""
import argparse
import asyncio
import base64
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.deploy import Predictor  # noqa: E402
from paddle_soundcls.deploy.engines import cpu_count  # noqa: E402
from paddle_soundcls.analysis.benchmark import machine_info  # noqa: E402

MEMORY_CHECKPOINTS = (1000, 10000)
SERVER_CODE = ('import argparse, sys\n'
               'from paddle_soundcls.serve import add_serve_arguments, run_serve\n'
               'sys.exit(run_serve(add_serve_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])))\n')


def random_export(model, directory, num_classes=50):
    import paddle

    from paddle_soundcls.export import export_static
    from paddle_soundcls import Module
    paddle.seed(0)
    module = Module(model, task='sound-cls', num_class=num_classes, pretrained=False)
    export_static(module, directory, opset=13)
    return directory


def write_clips(directory, count, seconds, sample_rate):
    """`count` WAV files of tones in noise, 16-bit, at the model's rate."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    paths = []
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(len(t))
        path = os.path.join(directory, f'clip{i}.wav')
        sf.write(path, wave.astype(np.float32), sample_rate, subtype='PCM_16')
        paths.append(path)
    return paths


def in_process_clips_per_s(predictor, paths, batch_size, duration):
    predictor.predict(paths[:batch_size], batch_size=batch_size)   # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration or done == 0:
        predictor.predict(paths, batch_size=batch_size)
        done += len(paths)
    return done / (time.perf_counter() - started)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def proc_status_mb(pid, field):
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
        for line in f:
            if line.startswith(field + ':'):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def rss_mb(pid):
    return proc_status_mb(pid, 'VmRSS')


def reset_peak_rss(pid):
    """VmHWM (peak RSS) of `pid` starts again from its current RSS."""
    with open(f'/proc/{pid}/clear_refs', 'w', encoding='ascii') as f:
        f.write('5')


def cpu_seconds(pid):
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def start_server(model_dir, port, options):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get('PYTHONPATH', '')]))
    process = subprocess.Popen([sys.executable, '-c', SERVER_CODE, model_dir, '--port', str(port), *options],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'the server exited: {process.stderr.read()[-2000:]}')
        try:
            if httpx.get(f'http://127.0.0.1:{port}/healthz', timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError('the server did not start within 120 s')


async def load(url, bodies, clients, duration=None, total=None):
    """`clients` tasks posting the bodies in turn until `duration` s have passed or `total`
    requests were sent. Returns (latencies in s of the 200 answers, errors, seconds)."""
    import httpx
    latencies, errors, sent = [], {}, [0]
    deadline = time.monotonic() + duration if duration else None
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def one_client(index):
            i = index
            while (deadline is None or time.monotonic() < deadline) and (total is None or sent[0] < total):
                sent[0] += 1
                body = bodies[i % len(bodies)]
                i += 1
                started = time.perf_counter()
                try:
                    response = await client.post(url + '/v1/classify', content=body,
                                                 headers={'content-type': 'audio/wav'})
                    status = response.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        return latencies, errors, time.perf_counter() - started


def level_figures(clients, latencies, errors, seconds):
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {'clients': clients, 'requests': len(latencies) + sum(errors.values()), 'errors': sum(errors.values()),
            'error_kinds': errors, 'clips_per_s': round(len(latencies) / seconds, 2),
            'latency_ms': {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ('p50', 'p95', 'p99')}}


# The abuse run ----------------------------------------------------------------------------

def audio_bytes(seconds, rate, channels=1, format='WAV', subtype='PCM_16', silence=False):
    """An audio file as bytes: noise (or silence) written a second at a time, so a long or fast
    file never sits in memory as floats."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, 'w', rate, channels, subtype, format=format) as f:
        left = int(round(seconds * rate))
        while left > 0:
            n = min(rate, left)
            block = np.zeros((n, channels), np.float32) if silence else \
                (0.1 * rng.standard_normal((n, channels))).astype(np.float32)
            f.write(block)
            left -= n
    return buffer.getvalue()


def latency_figures(seconds):
    if not seconds:
        return {'count': 0}
    ms = np.array(seconds) * 1000
    return {'count': len(ms), 'p50': round(float(np.percentile(ms, 50)), 1),
            'p95': round(float(np.percentile(ms, 95)), 1), 'max': round(float(ms.max()), 1)}


def counted(log):
    counts = {}
    for status in log:
        counts[status] = counts.get(status, 0) + 1
    return counts


def http_attack(path, body, content_type=None, params=None, json_body=None, files=None):
    """An attacker posting one request after another; the client gives up at the deadline (and
    so closes its connection)."""
    def run(url, stop, deadline, log, once=False):
        import httpx
        with httpx.Client() as client:
            while not stop.is_set() and not (once and log):
                remaining = deadline - time.monotonic()
                if remaining < 0.2:
                    return
                kwargs = dict(timeout=remaining, params=params)
                if files is not None:
                    kwargs['files'] = files
                elif json_body is not None:
                    kwargs['content'], kwargs['headers'] = json_body, {'content-type': 'application/json'}
                else:
                    kwargs['content'], kwargs['headers'] = body, {'content-type': content_type}
                try:
                    log.append(str(client.post(url + path, **kwargs).status_code))
                except httpx.TimeoutException:
                    log.append('client_gave_up')
                except httpx.HTTPError as exc:
                    log.append(type(exc).__name__)
    return run


def stream_attack(start, first, message, alone_messages):
    """An attacker streaming `first` then `message` over and over as fast as the server reads,
    reading every answer, and leaving without the end message at the deadline. once: one stream
    of `first` and `alone_messages` messages, ended properly, every answer awaited."""
    def run(url, stop, deadline, log, once=False):
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect
        if once:
            with connect(url.replace('http://', 'ws://') + '/v1/stream', open_timeout=10, max_size=None,
                         max_queue=None, close_timeout=5) as ws:
                ws.send(json.dumps(start))
                assert json.loads(ws.recv(timeout=10))['type'] == 'ready'
                for part in first + [message] * alone_messages:
                    ws.send(part)
                ws.send(json.dumps({'type': 'end'}))
                replies = []
                try:
                    while not replies or replies[-1]['type'] not in ('done', 'error'):
                        replies.append(json.loads(ws.recv(timeout=120)))
                except ConnectionClosed:   # the server closed the stream
                    pass
                last = replies[-1]['type'] if replies else 'closed'
                log.append(f'{last}:{sum(r["type"] == "scores" for r in replies)}_windows')
            return
        while not stop.is_set() and time.monotonic() < deadline - 0.2:
            try:
                with connect(url.replace('http://', 'ws://') + '/v1/stream', open_timeout=10, max_size=None,
                             max_queue=None, close_timeout=1) as ws:
                    ws.send(json.dumps(start))
                    reply = json.loads(ws.recv(timeout=10))
                    if reply['type'] != 'ready':
                        log.append(reply.get('error', {}).get('code', 'refused'))
                        return
                    for part in first:
                        ws.send(part)
                    sent = 0
                    while not stop.is_set() and time.monotonic() < deadline:
                        ws.send(message)
                        sent += 1
                    log.append(f'messages:{sent}')
                    ws.socket.close()   # gone, without the end message or a closing handshake
            except Exception as exc:  # a refused or broken stream is a figure, not a failure
                log.append(type(exc).__name__)
    return run


def hangup_attack(body, clients=24):
    """24 clients send the clip and hang up once it is in, once a second (once: one round)."""
    def run(url, stop, deadline, log, once=False):
        host, port = url.removeprefix('http://').split(':')
        head = (f'POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: audio/wav\r\n'
                f'Content-Length: {len(body)}\r\n\r\n').encode()
        while not stop.is_set() and time.monotonic() < deadline - 0.5:
            socks = []
            for _ in range(clients):
                sock = socket.create_connection((host, int(port)), timeout=10)
                sock.sendall(head + body)
                socks.append(sock)
            time.sleep(0.3)
            for sock in socks:
                sock.close()
            log.append(f'hung_up:{clients}')
            if once:
                return
            stop.wait(0.7)
    return run


QUIET_SECONDS = 3.0            # the normal client alone, just before each attack
AFTER_SECONDS = 1.5            # watched after each attack, every client gone
STREAM_ALONE_MIB = 16          # alone: 16 MiB of PCM, 10.9 s at 768 kHz
TINY_ALONE_MESSAGES = 1000


def attacks(predictor):
    """(name, what, attacker) of the worst request or stream of each kind the defaults allow."""
    from paddle_soundcls.serve import ServeSettings
    defaults = ServeSettings().for_model(predictor)
    rate = predictor.frontend_cfg.sample_rate
    longest = audio_bytes(defaults.max_audio_seconds, rate)                     # the longest clip, model's rate
    big = audio_bytes(defaults.max_audio_seconds, 48000, 2, subtype='PCM_24')   # 48 kHz stereo 24-bit
    encoded = base64.b64encode(big).decode()
    fastest = 655350                                                            # FLAC's highest sample rate
    # The most decoding allowed: as many samples as --max-decode-samples lets through, in the
    # longest clip allowed, as channels of FLAC's highest rate.
    most_channels = max(1, min(8, defaults.max_decode_samples // int(defaults.max_audio_seconds * fastest)))
    most_seconds = min(defaults.max_audio_seconds, defaults.max_decode_samples / (fastest * most_channels))
    most_samples = audio_bytes(most_seconds, fastest, most_channels, format='FLAC', silence=True)
    bomb = audio_bytes(59, fastest, 8, format='FLAC', silence=True)            # the 8-channel bomb
    window = defaults.max_window_seconds
    finest_hop = window / defaults.max_overlap
    stream_rate = 768000                                                        # the highest rate accepted
    one_mib = np.zeros((1 << 20) // 2, '<i2').tobytes()
    almost_a_window = np.zeros(int(window * stream_rate) - 100, '<i2').tobytes()
    return [
        ('classify_longest_clip', f'/v1/classify, a {defaults.max_audio_seconds:g}-s WAV at {rate} Hz '
                                  f'({len(longest) / 1e6:.1f} MB)', http_attack('/v1/classify', longest, 'audio/wav')),
        ('classify_most_decoding', f'/v1/classify, a FLAC of {most_seconds:g} s x {most_channels} channels at {fastest} Hz '
                                   f'({len(most_samples) / 1e3:.0f} kB): the most decoding and resampling allowed',
         http_attack('/v1/classify', most_samples, 'audio/flac')),
        ('classify_flac_bomb', f'/v1/classify, the FLAC of 59 s x 8 channels at {fastest} Hz '
                               f'({len(bomb) / 1e3:.0f} kB); refused from its header',
         http_attack('/v1/classify', bomb, 'audio/flac')),
        ('classify_json_largest_body', f'/v1/classify, JSON base64 of a {defaults.max_audio_seconds:g}-s 48-kHz stereo 24-bit WAV '
                                       f'({len(encoded) / 1e6:.1f} MB body)',
         http_attack('/v1/classify', None, json_body=json.dumps({'inputs': encoded}).encode())),
        ('classify_multipart_largest_body', f'/v1/classify, the same WAV as a multipart upload '
                                            f'({len(big) / 1e6:.1f} MB)',
         http_attack('/v1/classify', None, files={'file': ('a.wav', big, 'audio/wav')})),
        ('paddlespeech_largest_body', '/paddlespeech/cls, the same WAV as PaddleSpeech JSON',
         http_attack('/paddlespeech/cls', None, json_body=json.dumps({'audio': encoded}).encode())),
        ('events_most_windows', f'/v1/events, the {defaults.max_audio_seconds:g}-s WAV, window {window:g} s, '
                                f'hop {finest_hop:g} s (the longest windows, most overlapped)',
         http_attack('/v1/events', longest, 'audio/wav', params={'window': window, 'hop': finest_hop})),
        ('stream_most_work', f'/v1/stream at {stream_rate} Hz, window {window:g} s, hop {finest_hop:g} s, '
                             f'1-MiB messages as fast as the server reads them',
         stream_attack({'sample_rate': stream_rate, 'window': window, 'hop': finest_hop}, [], one_mib,
                       STREAM_ALONE_MIB)),
        ('stream_tiny_messages', f'/v1/stream at {stream_rate} Hz, window {window:g} s: a buffer just short of one '
                                 f'window, then 2-byte messages as fast as possible',
         stream_attack({'sample_rate': stream_rate, 'window': window, 'hop': window / 2},
                       [almost_a_window[i:i + len(one_mib)] for i in range(0, len(almost_a_window), len(one_mib))],
                       b'\0\0', TINY_ALONE_MESSAGES)),
        ('hang_ups', f'24 clients send the {defaults.max_audio_seconds:g}-s WAV and hang up once it is sent, '
                     f'once a second', hangup_attack(longest)),
    ]


def abuse(model_dir, attack_seconds, normal_seconds, only=None):
    """Figures of the server under each attack, and with none (see the module docstring)."""
    import httpx
    predictor = Predictor(model_dir)
    rate = predictor.frontend_cfg.sample_rate
    normal = audio_bytes(normal_seconds, rate)
    chosen = [a for a in attacks(predictor) if only is None or a[0] in only]
    del predictor
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    server = start_server(model_dir, port, [])
    results = {}
    try:
        for _ in range(5):   # warm-up: the engine's buffers for the normal clip and a 10-s window
            httpx.post(url + '/v1/classify', content=normal, headers={'content-type': 'audio/wav'}, timeout=60)
            httpx.post(url + '/v1/classify', content=audio_bytes(10, rate), headers={'content-type': 'audio/wav'},
                       timeout=60)

        def phase(attacker, seconds):
            stop = threading.Event()
            health, classify, normal_errors, log = [], [], [], []

            def probe():
                with httpx.Client() as client:
                    while not stop.is_set():
                        started = time.perf_counter()
                        client.get(url + '/healthz', timeout=30)
                        health.append(time.perf_counter() - started)
                        stop.wait(0.1)

            def normal_client():
                with httpx.Client() as client:
                    while not stop.is_set():
                        started = time.perf_counter()
                        response = client.post(url + '/v1/classify', content=normal,
                                               headers={'content-type': 'audio/wav'}, timeout=60)
                        if response.status_code == 200:
                            classify.append(time.perf_counter() - started)
                        else:
                            normal_errors.append(response.status_code)
                        stop.wait(0.05)

            reset_peak_rss(server.pid)
            rss_before, cpu_before = rss_mb(server.pid), cpu_seconds(server.pid)
            phase_started = time.monotonic()
            deadline = phase_started + seconds
            threads = [threading.Thread(target=probe), threading.Thread(target=normal_client)]
            if attacker is not None:
                threads.append(threading.Thread(target=attacker, args=(url, stop, deadline, log)))
            for thread in threads:
                thread.start()
            time.sleep(max(0.0, deadline - time.monotonic()))
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            cpu_during = cpu_seconds(server.pid) - cpu_before
            stopped = time.monotonic() - phase_started
            time.sleep(AFTER_SECONDS)   # what the server still does once every client has gone
            figures = {'seconds': round(stopped, 1), 'server_cpu_s': round(cpu_during, 2),
                       'server_cpu_s_after_clients_left': round(cpu_seconds(server.pid) - cpu_before - cpu_during, 2),
                       'server_rss_mb_before': rss_before, 'server_peak_rss_mb': proc_status_mb(server.pid, 'VmHWM'),
                       'healthz_ms': latency_figures(health), 'classify_ms': latency_figures(classify),
                       'classify_errors': counted(str(e) for e in normal_errors)}
            figures['peak_over_before_mb'] = round(figures['server_peak_rss_mb'] - rss_before, 1)
            if attacker is not None:
                figures['attacker'] = counted(log)
            return figures

        def alone(attacker):
            """One request (or stream, or round of hang-ups) with nothing else going on."""
            log = []
            reset_peak_rss(server.pid)
            rss_before, cpu_before, started = rss_mb(server.pid), cpu_seconds(server.pid), time.monotonic()
            attacker(url, threading.Event(), started + 120, log, once=True)
            wall = time.monotonic() - started
            time.sleep(1.0)   # work that goes on after the answer counts too
            return {'outcome': counted(log), 'wall_s': round(wall, 2),
                    'server_cpu_s': round(cpu_seconds(server.pid) - cpu_before, 2),
                    'peak_over_before_mb': round(proc_status_mb(server.pid, 'VmHWM') - rss_before, 1)}

        quiet = phase(None, attack_seconds)
        for name, what, attacker in chosen:
            # The quiet figures next to each attack: other work on a shared machine comes and goes.
            before = phase(None, QUIET_SECONDS)
            figures = {'what': what, 'alone': alone(attacker), **phase(attacker, attack_seconds),
                       'quiet_classify_ms': before['classify_ms'], 'quiet_healthz_ms': before['healthz_ms']}
            for q in ('p50', 'p95'):
                figures[f'classify_{q}_vs_quiet'] = round(figures['classify_ms'].get(q, float('nan'))
                                                          / before['classify_ms'][q], 2)
            results[name] = figures
    finally:
        server.send_signal(2)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    worst_health = max(r['healthz_ms']['max'] for r in results.values()) if results else None
    return {'quiet': quiet, 'attacks': results,
            'targets': {'healthz_max_ms': worst_health, 'healthz_under_50_ms': worst_health is not None
                        and worst_health < 50,
                        'classify_p50_within_2x_quiet': all(r['classify_p50_vs_quiet'] <= 2 for r in results.values()),
                        'classify_p95_within_2x_quiet': all(r['classify_p95_vs_quiet'] <= 2 for r in results.values())}}


# The streams run ---------------------------------------------------------------------------

STREAM_KEEP_UP_P95_S = 0.25
AUTO_CLASSES = 3


def stream_scene(seconds, rate, seed):
    """int16 PCM of a scene: noise floor, tones and noise bursts at random times."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    wave = 0.01 * rng.standard_normal(n)
    t = np.arange(n) / rate
    for _ in range(max(3, int(seconds / 3))):
        onset, length = rng.uniform(0, seconds - 1.5), rng.uniform(0.3, 1.5)
        span = (t >= onset) & (t < onset + length)
        if rng.random() < 0.5:
            wave[span] += 0.4 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t[span])
        else:
            wave[span] += 0.3 * rng.standard_normal(int(span.sum()))
    return (np.clip(wave, -1, 1) * 32767).astype(np.int16)


def expected_windows(predictor, window, hop, samples):
    """Windows FrameStream cuts of `samples` samples at the model's rate."""
    from paddle_soundcls.deploy.detection import FrameStream
    frames = FrameStream(predictor.frame_scorer(window, hop))
    frames.feed(np.zeros(samples, np.float32))
    frames.finish()
    count = 0
    while frames.next_window() is not None and count < 100000:
        count += 1
    return count


async def one_stream(url, pcm, rate, chunk, start_message, delay, deadline):
    import websockets
    result = {'progress': [], 'events': [], 'error': None, 'done': False}
    sent_at = []   # (samples sent so far, wall time)
    step = max(1, int(round(chunk * rate)))
    try:
        async with websockets.connect(url.replace('http://', 'ws://') + '/v1/stream', max_size=None,
                                      open_timeout=30, close_timeout=10) as ws:
            await ws.send(json.dumps(start_message))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if ready.get('type') != 'ready':
                result['error'] = str(ready)[:200]
                return result

            async def receive():
                while True:
                    message = json.loads(await ws.recv())
                    now = time.perf_counter()
                    if message['type'] == 'progress':
                        result['progress'].append((message['end'], now))
                    elif message['type'] in ('start', 'end'):
                        result['events'].append(message)
                    elif message['type'] == 'done':
                        result['done'] = True
                        return
                    else:
                        result['error'] = str(message)[:200]
                        return
            receiver = asyncio.ensure_future(receive())
            await asyncio.sleep(delay)
            began = time.perf_counter()
            for i, first in enumerate(range(0, len(pcm), step)):
                wait = began + i * chunk - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if receiver.done() or time.monotonic() > deadline:
                    break
                await ws.send(pcm[first:first + step].tobytes())
                sent_at.append((min(len(pcm), first + step), time.perf_counter()))
            await ws.send(json.dumps({'type': 'end'}))
            await asyncio.wait_for(receiver, max(1.0, deadline + 30 - time.monotonic()))
    except Exception as exc:  # a stream that fails is a figure of the run
        result['error'] = result['error'] or f'{type(exc).__name__}: {exc}'[:200]
    ends = np.array([n for n, _ in sent_at])
    latencies = []
    for end_s, arrived in result['progress']:
        i = int(np.searchsorted(ends, int(round(end_s * rate)), side='left'))
        if i < len(sent_at):
            latencies.append(arrived - sent_at[i][1])
    result['latencies'] = latencies
    return result


def run_streams_level(url, scenes, rate, args, start_message):
    async def all_streams():
        deadline = time.monotonic() + args.stream_seconds + args.hop + 60
        return await asyncio.gather(*(one_stream(url, pcm, rate, args.chunk_seconds, start_message,
                                                 args.hop * i / len(scenes), deadline)
                                      for i, pcm in enumerate(scenes)))
    return asyncio.run(all_streams())


def stream_thresholds(predictor, args, rate):
    """Event options for the streams: --onset-threshold, or with 'auto' per-class thresholds at
    the 80th / 60th percentiles of the frame scores of a scene for the AUTO_CLASSES classes whose
    scores vary most, and above any score for the others: a random-weights model, whose scores
    barely move, still starts and ends a few events a second for the reports check to compare."""
    if args.onset_threshold != 'auto':
        onset = float(args.onset_threshold)
        return {'onset_threshold': onset, 'offset_threshold': onset * 0.8}
    pcm = stream_scene(min(args.stream_seconds, 10.0), rate, 10_000)
    [result] = predictor.detect([pcm.astype(np.float32) / 32768], rate, args.window, args.hop)
    scores = result['frame_scores']
    onset, offset = np.quantile(scores, 0.8, axis=0), np.quantile(scores, 0.6, axis=0)
    quiet = np.argsort(scores.std(axis=0))[:-AUTO_CLASSES]
    onset[quiet], offset[quiet] = 1.0, 1.0
    return {'onset_threshold': [float(v) for v in onset], 'offset_threshold': [float(v) for v in offset],
            'median_filter_seconds': 0.05, 'min_duration_seconds': 0.0, 'min_gap_seconds': 0.0}


def streams_for(model_dir, engine, args, levels):
    import httpx
    predictor = Predictor(model_dir, engine=engine)
    rate = predictor.frontend_cfg.sample_rate
    frames_precision = getattr(predictor, 'frames_precision', None)
    pcm_len = int(args.stream_seconds * rate)
    windows = expected_windows(predictor, args.window, args.hop, pcm_len)
    options = stream_thresholds(predictor, args, rate)
    start_message = {'sample_rate': rate, 'format': 'int16', 'window': args.window, 'hop': args.hop,
                     'mode': 'events', 'progress': True, 'options': options}
    results, best = [], None

    def level(n):
        scenes = [stream_scene(args.stream_seconds, rate, seed) for seed in range(n)]
        server_options = ['--engine', engine, '--max-batch', str(args.stream_max_batch), '--max-queue',
                          str(max(64, 2 * n + 8)), '--max-connections', str(n + 32), '--max-streams', str(n + 32), '--timeout', '60']
        port = free_port()
        url = f'http://127.0.0.1:{port}'
        server = start_server(model_dir, port, server_options)
        try:
            run_streams_level(url, scenes[:1], rate, argparse.Namespace(**{**vars(args), 'stream_seconds': 3}),
                              start_message)   # warm-up
            rss_before, cpu_server, cpu_client = rss_mb(server.pid), cpu_seconds(server.pid), time.process_time()
            health_before = httpx.get(url + '/healthz').json()
            mid = {}
            timer = threading.Timer(args.stream_seconds / 2 + args.hop, lambda: mid.setdefault('rss', rss_mb(server.pid)))
            timer.start()
            started = time.perf_counter()
            streamed = run_streams_level(url, scenes, rate, args, start_message)
            wall = time.perf_counter() - started
            timer.cancel()
            health = httpx.get(url + '/healthz').json()
            server_cpu = cpu_seconds(server.pid) - cpu_server
        finally:
            server.kill()
            server.wait(timeout=30)
        client_cpu = time.process_time() - cpu_client
        kept = 0
        everything = []
        for r in streamed:
            p95 = float(np.percentile(r['latencies'], 95)) if r['latencies'] else float('inf')
            r['kept_up'] = (len(r['progress']) == windows and r['error'] is None and r['done']
                            and p95 <= STREAM_KEEP_UP_P95_S)
            kept += r['kept_up']
            everything += r['latencies']
        lat = np.array(everything) if everything else np.array([np.nan])
        batches = health.get('batches', 0) - health_before.get('batches', 0)
        items = health.get('clips', 0) - health_before.get('clips', 0)
        figures = {'streams': n, 'kept_up': kept, 'all_kept_up': kept == n, 'expected_windows_per_stream': windows,
                   'errors': sorted({r['error'] for r in streamed if r['error']})[:5],
                   'latency_s': {q: round(float(np.percentile(lat, v)), 3) for q, v in (('p50', 50), ('p95', 95))}
                   | {'max': round(float(np.max(lat)), 3)},
                   'wall_s': round(wall, 1), 'server_cpu_pct': round(100 * server_cpu / wall, 1),
                   'client_cpu_pct': round(100 * client_cpu / wall, 1),
                   'server_rss_mb_before': rss_before, 'server_rss_mb_mid': mid.get('rss'),
                   'rss_growth_mb_per_stream': round((mid['rss'] - rss_before) / n, 3) if mid.get('rss') else None,
                   'batches': batches, 'items': items,
                   'mean_batch': round(items / batches, 2) if batches else None, 'server_options': server_options}
        results.append(figures)
        return figures, streamed, scenes

    good, bad, tried = None, None, 0
    for n in levels:
        if tried >= args.max_stream_runs:
            break
        figures, streamed, scenes = level(n)
        tried += 1
        if figures['all_kept_up']:
            good, best = n, (streamed, scenes)
        else:
            bad = n
            break
    while good is not None and bad is not None and bad - good > max(2, good // 8) and tried < args.max_stream_runs:
        n = (good + bad) // 2
        figures, streamed, scenes = level(n)
        tried += 1
        if figures['all_kept_up']:
            good, best = n, (streamed, scenes)
        else:
            bad = n
    check = None
    if best is not None:
        streamed, scenes = best
        step = max(1, int(round(args.chunk_seconds * rate)))
        worst, identical = 0.0, True
        for r, pcm in list(zip(streamed, scenes))[:20]:
            stream = predictor.stream(rate, args.window, args.hop, config=options)
            events = []
            for first in range(0, len(pcm), step):
                events += stream.push(pcm[first:first + step].astype(np.float32) / 32768)
            events += stream.close()
            if len(events) != len(r['events']):
                identical = False
                continue
            for a, b in zip(events, r['events']):
                if a['type'] != b['type'] or a['label'] != b['label'] or abs(a['onset'] - b['onset']) > 1e-6 \
                        or abs(a.get('offset', 0) - b.get('offset', 0)) > 1e-6:
                    identical = False
                diff = abs(float(a['confidence']) - float(b['confidence']))
                worst = max(worst, diff)
                identical = identical and diff <= 1e-4
        events = [len(r['events']) for r in streamed[:20]]
        # Without reports there is nothing to compare: not a pass.
        check = {'streams_checked': min(20, len(scenes)), 'events_per_stream': events,
                 'max_confidence_diff': worst, 'reports_identical': identical if sum(events) else None}
    return {'engine': engine, 'frames_precision': frames_precision, 'sample_rate': rate, 'levels': results,
            'largest_good_streams': good, 'first_bad_streams': bad, 'reports_check': check,
            'reports_identical': None if check is None else check['reports_identical']}


def streams(args):
    from paddle_soundcls.export.quantize import quantize_export
    import shutil
    levels = [int(n) for n in args.stream_levels.split(',')]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.stream_models:
            export = random_export(model, os.path.join(tmp, model))
            for precision in args.precisions:
                engine = 'onnxruntime'
                model_dir = export
                if precision == 'int8':
                    model_dir = export + '_int8'
                    shutil.copytree(export, model_dir)
                    rate = Predictor(export).frontend_cfg.sample_rate
                    calib = os.path.join(tmp, f'calib_{model}')
                    os.makedirs(calib, exist_ok=True)
                    write_clips(calib, 16, 5.0, rate)
                    quantize_export(model_dir, calib, force=True, progress=False)
                    engine = 'onnxruntime_int8'
                out[f'{model}/{precision}'] = streams_for(model_dir, engine, args, levels)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model_dir', nargs='?', default=None, help='an export directory (default: a random-weights '
                                                                   'export of --model)')
    parser.add_argument('--model', default='panns_cnn6', help='registered model without MODEL_DIR (default panns_cnn6)')
    parser.add_argument('--clip-seconds', type=float, default=5.0, help='length of the clips (default 5)')
    parser.add_argument('--clips', type=int, default=16, help='distinct WAV files sent in turn (default 16)')
    parser.add_argument('--clients', default='1,4,16,64', help='concurrency levels (default 1,4,16,64)')
    parser.add_argument('--duration', type=float, default=10.0, help='seconds per level (default 10)')
    parser.add_argument('--max-batch', type=int, default=8, help='server --max-batch and in-process batch (default 8)')
    parser.add_argument('--max-wait-ms', type=float, default=5.0, help='server --max-wait-ms (default 5)')
    parser.add_argument('--memory-requests', action='store_true',
                        help='then send requests (16 clients) up to 1,000 and 10,000 in all, reporting RSS at each')
    parser.add_argument('--memory-clip-seconds', type=float, default=1.0,
                        help='clip length for the memory run (default 1: 10,000 requests in minutes, not hours)')
    parser.add_argument('--abuse', action='store_true',
                        help='instead: the server with default options under the worst request of each kind')
    parser.add_argument('--attack-seconds', type=float, default=4.0, help='--abuse: seconds per attack (default 4)')
    parser.add_argument('--normal-seconds', type=float, default=5.0,
                        help='--abuse: length of the normal client\'s clip (default 5)')
    parser.add_argument('--attacks', default=None, help='--abuse: comma-separated names of the attacks to run '
                                                        '(default all)')
    parser.add_argument('--streams', action='store_true',
                        help='instead: the most live event streams (WebSocket) one server keeps up with')
    parser.add_argument('--stream-models', nargs='+', default=['efficientat_mn04'], help='--streams: models')
    parser.add_argument('--precisions', nargs='+', default=['float'], choices=('float', 'int8'))
    parser.add_argument('--chunk-seconds', type=float, default=0.1)
    parser.add_argument('--stream-seconds', type=float, default=20.0)
    parser.add_argument('--window', type=float, default=2.0)
    parser.add_argument('--hop', type=float, default=0.5)
    parser.add_argument('--onset-threshold', default='auto',
                        help="--streams: the events' onset threshold (offset: 0.8 of it), or 'auto' (default): "
                             "per-class percentiles of a scene's frame scores, so random weights give events too")
    parser.add_argument('--stream-levels', default='25,50,100,200,400')
    parser.add_argument('--stream-max-batch', type=int, default=32)
    parser.add_argument('--max-stream-runs', type=int, default=6)
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')
    args = parser.parse_args(argv)
    if args.streams:
        run_started = time.monotonic()
        logging.getLogger('httpx').setLevel(logging.WARNING)
        figures = {'runs': streams(args), 'setup': {
            'window': args.window, 'hop': args.hop, 'chunk_seconds': args.chunk_seconds,
            'stream_seconds': args.stream_seconds, 'keep_up_p95_s': STREAM_KEEP_UP_P95_S,
            'window_bound_seconds': args.window - (args.window - args.hop) / 2,
            'client': 'one asyncio process (websockets), sharing the CPUs with the server',
            'machine': machine_info(), 'wall_seconds': round(time.monotonic() - run_started, 1)}}
        print(json.dumps(figures, indent=2))
        return 0
    run_started = time.monotonic()
    logging.getLogger('httpx').setLevel(logging.WARNING)
    if args.abuse:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = args.model_dir or random_export(args.model, os.path.join(tmp, 'export'))
            only = set(args.attacks.split(',')) if args.attacks else None
            figures = abuse(model_dir, args.attack_seconds, args.normal_seconds, only)
        figures['setup'] = {'model': args.model if args.model_dir is None else args.model_dir,
                            'server_options': 'defaults', 'attack_seconds': args.attack_seconds,
                            'normal_clip_seconds': args.normal_seconds, 'engine_threads': cpu_count(),
                            'machine': machine_info(), 'wall_seconds': round(time.monotonic() - run_started, 1)}
        if args.json:
            print(json.dumps(figures, indent=2))
            return 0
        quiet = figures['quiet']
        print(f'quiet: /healthz p50 {quiet["healthz_ms"]["p50"]} ms, classify p50 {quiet["classify_ms"]["p50"]} ms')
        for name, r in figures['attacks'].items():
            print(f'{name}: server CPU {r["server_cpu_s"]} s (+{r["server_cpu_s_after_clients_left"]} s after), '
                  f'peak RSS {r["server_peak_rss_mb"]} MB (+{r["peak_over_before_mb"]}), /healthz max '
                  f'{r["healthz_ms"]["max"]} ms, classify p50 {r["classify_ms"].get("p50")} ms '
                  f'({r["classify_p50_vs_quiet"]}x), attacker {r.get("attacker")}')
        return 0
    levels = [int(n) for n in args.clients.split(',')]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or random_export(args.model, os.path.join(tmp, 'export'))
        predictor = Predictor(model_dir)
        rate = predictor.frontend_cfg.sample_rate
        paths = write_clips(tmp, args.clips, args.clip_seconds, rate)
        bodies = [open(p, 'rb').read() for p in paths]
        in_process = [in_process_clips_per_s(predictor, paths, args.max_batch, args.duration)]
        del predictor   # its threads would compete with the server's

        port = free_port()
        url = f'http://127.0.0.1:{port}'
        options = ['--max-batch', str(args.max_batch), '--max-wait-ms', str(args.max_wait_ms)]
        server = start_server(model_dir, port, options)
        try:
            asyncio.run(load(url, bodies, 2, total=2 * args.max_batch))   # warm-up
            rss_before = rss_mb(server.pid)
            results = []
            sent = 2 * args.max_batch
            for clients in levels:
                latencies, errors, seconds = asyncio.run(load(url, bodies, clients, duration=args.duration))
                figures = level_figures(clients, latencies, errors, seconds)
                figures['server_rss_mb_after'] = rss_mb(server.pid)
                sent += figures['requests']
                results.append(figures)
            rss_after = rss_mb(server.pid)
            memory = None
            if args.memory_requests:
                os.makedirs(os.path.join(tmp, 'short'))
                short = write_clips(os.path.join(tmp, 'short'), 4, args.memory_clip_seconds, rate)
                short_bodies = [open(p, 'rb').read() for p in short]
                memory = {'clip_seconds': args.memory_clip_seconds, 'clients': 16, 'errors': 0}
                for checkpoint in MEMORY_CHECKPOINTS:
                    if sent < checkpoint:
                        latencies, errors, seconds = asyncio.run(load(url, short_bodies, 16, total=checkpoint - sent))
                        memory['errors'] += sum(errors.values())
                        memory[f'requests_{sent}_to_{checkpoint}'] = {
                            'answered': len(latencies), 'seconds': round(seconds, 1),
                            'clips_per_s': round(len(latencies) / seconds, 2)}
                        sent = checkpoint
                    memory[f'server_rss_mb_after_{checkpoint}'] = rss_mb(server.pid)
                first, last = (memory[f'server_rss_mb_after_{n}'] for n in MEMORY_CHECKPOINTS)
                memory['growth_1000_to_10000_pct'] = round(100 * (last - first) / first, 1)
        finally:
            server.send_signal(2)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

        predictor = Predictor(model_dir)
        in_process.append(in_process_clips_per_s(predictor, paths, args.max_batch, args.duration))

    reference = float(np.mean(in_process))
    by_clients = {r['clients']: r for r in results}
    summary = {
        'setup': {'model': args.model if args.model_dir is None else args.model_dir, 'clip_seconds': args.clip_seconds,
                  'clips': args.clips, 'duration_per_level_s': args.duration, 'server_options': options,
                  'engine_threads': cpu_count(), 'machine': machine_info()},
        'in_process': {'batch_size': args.max_batch, 'clips_per_s_before': round(in_process[0], 2),
                       'clips_per_s_after': round(in_process[1], 2), 'clips_per_s': round(reference, 2)},
        'server': {'levels': results, 'server_rss_mb_before': rss_before, 'server_rss_mb_after': rss_after},
        'server_vs_in_process': {str(n): round(r['clips_per_s'] / reference, 3) for n, r in by_clients.items()},
    }
    if memory is not None:
        summary['memory'] = memory
    summary['setup']['wall_seconds'] = round(time.monotonic() - run_started, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f'{summary["setup"]["model"]}, {args.clip_seconds:g}-s clips, {cpu_count()} engine threads')
    print(f'  in-process Predictor, batch {args.max_batch}: {reference:.2f} clips/s')
    for r in results:
        print(f'  {r["clients"]:3d} clients: {r["clips_per_s"]:7.2f} clips/s ({r["clips_per_s"] / reference:.2f}x), '
              f'p50 {r["latency_ms"]["p50"]} ms, p95 {r["latency_ms"]["p95"]} ms, p99 {r["latency_ms"]["p99"]} ms, '
              f'{r["errors"]} errors, RSS {r["server_rss_mb_after"]} MB')
    if memory is not None:
        print(f'  RSS after 1,000 requests {memory["server_rss_mb_after_1000"]} MB, after 10,000 '
              f'{memory["server_rss_mb_after_10000"]} MB ({memory["growth_1000_to_10000_pct"]:+.1f}%)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
