"""Shared by the serve tests: a small export directory, audio files as bytes, and servers on
127.0.0.1 (in a thread of the test process, or in a child process), always on a free port,
always stopped within a bounded time."""
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import soundfile as sf

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
LABELS = ('dog', 'rain', 'siren')


def make_export_dir(out, labels=LABELS):
    """The one place the serve tests build an export directory (panns_cnn6, random weights,
    `labels`, with model.onnx). Paddle is imported here only, not by the server."""
    import paddle

    from helpers import small_module
    from paddle_soundcls.export import export_static
    paddle.seed(0)
    export_static(small_module('panns_cnn6', task='sound-cls', label_map=list(labels)), out, opset=13)
    return str(out)


def tone(seconds=1.0, sr=16000, freq=440.0, amp=0.3, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def audio_bytes(wave, sr=16000, format='WAV', subtype=None):
    buffer = io.BytesIO()
    sf.write(buffer, wave, sr, format=format, subtype=subtype)
    return buffer.getvalue()


def wav_bytes(seconds=1.0, sr=16000, freq=440.0):
    return audio_bytes(tone(seconds, sr, freq), sr)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_healthy(url, timeout=60.0, process=None):
    """Poll GET /healthz until 200; fails after `timeout` s or when `process` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f'the server exited with status {process.returncode} before answering')
        try:
            if httpx.get(url + '/healthz', timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f'{url} did not become healthy within {timeout:g} s')


@contextlib.contextmanager
def serve_in_thread(app, **uvicorn_options):
    """Run `app` with uvicorn on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn
    port = free_port()
    options = dict(host='127.0.0.1', port=port, log_level='warning', lifespan='on', access_log=False)
    options.update(uvicorn_options)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name='serve-test', daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{port}'
    try:
        wait_healthy(url, timeout=30)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def serve_argv(model_dir, *options):
    """Python code, as `-c` arguments, that runs `run_serve` with a parser of `add_serve_arguments`."""
    code = ('import argparse, sys\n'
            'from paddle_soundcls.serve import add_serve_arguments, run_serve\n'
            'parser = add_serve_arguments(argparse.ArgumentParser())\n'
            'sys.exit(run_serve(parser.parse_args(sys.argv[1:])))\n')
    return ['-c', code, str(model_dir), *options]


@contextlib.contextmanager
def serve_in_process(model_dir, *options, prelude='', env=None, timeout=90.0):
    """Run the server in a child Python process on a free port; yields (base URL, process).

    prelude: code run before the server (e.g. tests/helpers.BLOCK_PADDLE). The child is sent
    SIGINT at the end (uvicorn's clean stop) and killed if it has not stopped 15 s later.
    """
    port = free_port()
    args = serve_argv(model_dir, '--port', str(port), *options)
    args[1] = prelude + args[1]
    child_env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
                     PYTHONUNBUFFERED='1')
    child_env.update(env or {})
    process = subprocess.Popen([sys.executable, *args], env=child_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    url = f'http://127.0.0.1:{port}'
    try:
        wait_healthy(url, timeout=timeout, process=process)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(2)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def read_answer(sock, limit=1 << 20):
    """Bytes of one HTTP answer from a raw socket (until its Content-Length, the server closes,
    or `limit`); b'' if the server closed without answering."""
    data = b''
    with contextlib.suppress(socket.timeout, ConnectionResetError):
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, found, body = data.partition(b'\r\n\r\n')
            lengths = [int(line.split(b':')[1]) for line in head.split(b'\r\n')
                       if line.lower().startswith(b'content-length:')]
            if found and lengths and len(body) >= lengths[0]:
                break
    return data


class CountingEngine:
    """Wraps a Predictor's engine: counts calls and batch sizes; can hold calls at a gate."""

    def __init__(self, engine, delay=0.0):
        self.engine = engine
        self.delay = delay
        self.calls = []                    # batch size of every call
        self.entered = threading.Event()   # set when a call starts
        self.gate = threading.Event()      # calls wait here until it is set
        self.gate.set()

    def __call__(self, features):
        self.calls.append(len(features))
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.delay:
            time.sleep(self.delay)
        return self.engine(features)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@contextlib.contextmanager
def counting_engine(predictor, delay=0.0):
    counting = CountingEngine(predictor.engine, delay)
    predictor.engine = counting
    try:
        yield counting
    finally:
        counting.gate.set()
        predictor.engine = counting.engine


# What a server process costs, from /proc (Linux) ----------------------------------------

def memory_mb(pid):
    """{'rss': MB now, 'peak': MB at most since start or the last reset_peak} of process `pid`."""
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
        fields = dict(line.split(':', 1) for line in f if line.startswith(('VmRSS', 'VmHWM')))
    return {'rss': int(fields['VmRSS'].split()[0]) / 1024, 'peak': int(fields['VmHWM'].split()[0]) / 1024}


def reset_peak(pid):
    """Start measuring the peak resident memory of `pid` afresh (it drops to the current RSS)."""
    with open(f'/proc/{pid}/clear_refs', 'w', encoding='ascii') as f:
        f.write('5')


def cpu_seconds(pid):
    """CPU seconds (user + system, all threads) process `pid` has used."""
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
