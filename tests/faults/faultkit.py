"""Helpers of the fault suite: child processes killed at chosen points, a misbehaving HTTP
server, file digests.

Child scripts (train_child.py, export_child.py, ...) read PSC_FAULT, a JSON object
{'at': point name, 'action': 'kill' | 'enospc' | 'nan', 'nth': which time the point is
reached (default 1)}. At that point a child asked to be
killed prints FAULT_MARKER on stdout and sleeps; `kill_at_marker` then sends it SIGKILL, so
it dies exactly there, with no chance to clean up.
"""
import hashlib
import http.server
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
FAULT_MARKER = 'PSC-FAULT-POINT'


def child_env(fault=None, **extra):
    """Environment of a child: the package importable, one CPU thread (deterministic, and
    polite to the other processes on the machine), and the fault to inject."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, TESTS, HERE, env.get('PYTHONPATH', '')])
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.pop('PSC_FAULT', None)
    if fault is not None:
        env['PSC_FAULT'] = json.dumps(fault)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_child(args, fault=None, timeout=300, cwd=None, **env):
    """Run `python args...` to the end (killed after `timeout` s); returns CompletedProcess."""
    return subprocess.run([sys.executable, *args], env=child_env(fault, **env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def kill_at_marker(args, fault, timeout=300, cwd=None, **env):
    """Start `python args...`, wait until it reports reaching the fault point, SIGKILL it.

    Returns (stdout lines, stderr). Fails if the child ends or times out before the point.
    """
    proc = subprocess.Popen([sys.executable, *args], env=child_env(fault, **env), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    err = []
    threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f'the child did not reach {fault} within {timeout} s') from None
            if line is None:
                proc.wait(timeout=30)
                time.sleep(0.2)
                raise AssertionError(f'the child ended (status {proc.returncode}) before reaching {fault}:\n'
                                     + ''.join(seen) + ''.join(err)[-4000:])
            seen.append(line)
            if line.startswith(FAULT_MARKER):
                break
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.1)
    return seen, ''.join(err)


# ----- what the child does at a fault point -----

def fault_spec():
    text = os.environ.get('PSC_FAULT')
    return json.loads(text) if text else None


_reached = {}


def fault_point(name, spec, path=None):
    """In a child: act if `name` is the configured point, reached for the spec['nth'] time
    (default 1). 'kill' waits to be killed; 'enospc' raises the error a full disk gives
    while writing `path`."""
    if spec is None or spec['at'] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != spec.get('nth', 1):
        return
    if spec['action'] == 'kill':
        print(f'{FAULT_MARKER} {name}', flush=True)
        time.sleep(600)
        os._exit(99)  # never reached when the parent is alive
    if spec['action'] == 'enospc':
        import errno
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path or name)


_TMP = re.compile(r'^\.(.+?)~')  # a temporary file or folder of the checkpoint writers (paddle_soundcls.fileio): .<target>~pid@host~...


def target_of(path):
    """The name a (possibly temporary) file or folder will have once it is in place."""
    name = os.path.basename(path)
    match = _TMP.match(name)
    return match.group(1) if match else name


def install_dir_faults(spec):
    """In a child: fault points in paddle_soundcls.fileio's atomic writes.

    write:<dir>/<file>   atomic_write of <file> into <dir> (or its temporary copy), before it starts
    built:<dir>          replace_dir: the new directory is complete, not yet swapped in
    swapped:<dir>        replace_dir: swapped in, the old copy not yet removed
    prune:<epoch_N>      the trainer removing an old epoch: its trainer.json (the marker of a
                         complete epoch) is deleted, the rest not yet
    """
    import shutil

    from paddle_soundcls import fileio
    real_atomic_write = fileio.atomic_write

    def atomic_write(path, write):
        fault_point(f'write:{target_of(os.path.dirname(path))}/{os.path.basename(path)}', spec, path)
        return real_atomic_write(path, write)
    fileio.atomic_write = atomic_write

    real_replace_dir = fileio.replace_dir

    def replace_dir(build, target):
        name = os.path.basename(os.path.abspath(target))

        def built(tmp):
            build(tmp)
            fault_point(f'built:{name}', spec)
        return real_replace_dir(built, target)
    fileio.replace_dir = replace_dir

    # replace_dir removes the previous copy with shutil.rmtree once the new one is in place;
    # the trainer removes old epochs with it too.
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        name = target_of(path)
        if os.path.basename(path) != name:
            fault_point(f'swapped:{name}', spec)
        elif spec and spec['at'] == f'prune:{name}':
            marker = os.path.join(path, 'trainer.json')
            if os.path.exists(marker):  # the trainer deletes it first
                os.remove(marker)
            fault_point(spec['at'], spec)
        return real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree


# ----- files -----

def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def tree(root, skip=()):
    """{relative path: sha256} of every file under `root` (hidden files included)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = sha256(path)
    return out


# ----- a misbehaving HTTP server on 127.0.0.1 -----

class _Handler(http.server.BaseHTTPRequestHandler):
    """routes[path] = dict(status, body, length, stall_after, chunk_delay); see FaultServer.serve."""
    routes, requests, release = {}, [], None
    protocol_version = 'HTTP/1.0'

    def do_GET(self):
        type(self).requests.append(self.path)
        route = self.routes.get(self.path, {'status': 404})
        if route['status'] != 200:
            self.send_error(route['status'])
            return
        body = route['body']
        self.send_response(200)
        length = route.get('length', len(body))
        if length is not None:
            self.send_header('Content-Length', str(length))
        self.end_headers()
        stall_after = route.get('stall_after')
        if stall_after is not None:
            self.wfile.write(body[:stall_after])
            self.wfile.flush()
            self.release.wait(60)  # hold the connection open, silent, until the test ends
            return
        delay = route.get('chunk_delay', 0)
        step = max(1, len(body) // 20) if delay else len(body) or 1
        for start in range(0, len(body), step):
            self.wfile.write(body[start:start + step])
            self.wfile.flush()
            time.sleep(delay)

    def log_message(self, *args):
        pass


class FaultServer:
    def __init__(self):
        self.handler = type('Handler', (_Handler,), {'routes': {}, 'requests': [], 'release': threading.Event()})
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self.handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()

    def serve(self, path, body=b'', status=200, length='auto', stall_after=None, chunk_delay=0):
        """Serve `body` at `path`.

        status: an HTTP error status instead of the body.
        length: the Content-Length sent ('auto': the true one, None: no header, or a lie).
        stall_after: send this many bytes of the body, then nothing (the connection stays open).
        chunk_delay: send the body in 20 pieces with this many seconds between them.
        """
        route = {'status': status, 'body': body, 'stall_after': stall_after, 'chunk_delay': chunk_delay}
        if length != 'auto':
            route['length'] = length
        self.handler.routes[path] = route
        return self.url + path

    @property
    def requests(self):
        return self.handler.requests

    def close(self):
        self.handler.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port():
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
