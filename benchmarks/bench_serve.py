"""Throughput, latency, errors and memory of `paddle-soundcls serve` under N concurrent clients,
next to the in-process batched `Predictor` on the same model and clips, in one run.

    python benchmarks/bench_serve.py --json                               # panns_cnn6, random weights
    python benchmarks/bench_serve.py EXPORT_DIR --clients 1,4,16,64 --duration 10 --json
    python benchmarks/bench_serve.py --memory-requests --json             # + RSS after 1,000 and 10,000 requests

The server runs in a child process on 127.0.0.1 (a free port) with default options but
--max-batch / --max-wait-ms; clients are asyncio tasks of this process (httpx), each posting
WAV files (raw body) one after another for --duration seconds per concurrency level. The
in-process figure is `Predictor.predict(paths, batch_size=--max-batch)` on the same WAV files
(decoding included, as in the server), measured before and after the server runs. Figures
only: nothing is asserted. Without EXPORT_DIR the model gets random weights (speed does not
depend on them), which needs Paddle for the export; the server itself never imports it.
"""
import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
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
from paddle_soundcls.export.benchmark import machine_info  # noqa: E402

MEMORY_CHECKPOINTS = (1000, 10000)
SERVER_CODE = ('import argparse, sys\n'
               'from paddle_soundcls.serve import add_serve_arguments, run_serve\n'
               'sys.exit(run_serve(add_serve_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])))\n')


def random_export(model, directory, num_classes=50):
    import paddle

    from paddle_soundcls.export import export_static
    from paddle_soundcls.hub import Module
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


def rss_mb(pid):
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return round(int(line.split()[1]) / 1024, 1)
    return None


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
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')
    args = parser.parse_args(argv)
    run_started = time.monotonic()
    levels = [int(n) for n in args.clients.split(',')]
    logging.getLogger('httpx').setLevel(logging.WARNING)   # not a line per request

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or random_export(args.model, os.path.join(tmp, 'export'))
        predictor = Predictor(model_dir)
        rate = predictor.frontend.sample_rate
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
