"""Runs the fenced examples of README.md and docs/*.md, as a reader would, offline.

Rules (docs/README.md, "Testing the docs", says the same for writers):
- Every ```python, ```bash, ```sh and ```shell block runs. Python blocks of one page share one
  namespace, in page order; shell blocks of one page run in one working directory (bash, -e and
  pipefail), which holds the fixtures (world_files) and what earlier blocks wrote.
- An HTML comment on the line right before a block's fence steers it:
    <!-- docs-test: skip (reason) -->     not run; the reason is required
    <!-- docs-test: slow (reason) -->     run only by the slow docs test (pytest -m slow); reason required
    <!-- docs-test: as written -->        run without the substitutions below
    <!-- docs-test: server -->            a shell block whose `paddle-soundcls serve ...` lines start
                                          servers (see Page.start_servers)
    <!-- docs-test: output -->            on a non-run block: the exact output of the block before it
                                          (doctest's rules: `...` matches anything, whitespace runs are equal)
    <!-- docs-test: output shape -->      on a JSON block: the structure of the output of the block
                                          before it (the same keys, the same kinds of values; list
                                          lengths and values are not compared: the models have random weights;
                                          of several JSON answers printed, the last)
- SUBSTITUTIONS stand in for what needs a download or hours: applied to the text of every run
  block not marked `as written`, each listed with why.
"""
import contextlib
import dataclasses
import doctest
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request

RUN_LANGUAGES = ('python', 'bash', 'sh', 'shell')
MARKER = re.compile(r'^<!--\s*docs-test:\s*(?P<kind>[a-z ]+?)\s*(?:\((?P<reason>.*)\))?\s*-->$')
KINDS = ('skip', 'slow', 'as written', 'server', 'output', 'output shape')
NEEDS_REASON = ('skip', 'slow')
SERVE = re.compile(r'^\s*paddle-soundcls serve .*$', re.M)
DOCUMENTED_PORT = '8866'
SHELL_TIMEOUT = 240

# (pattern, replacement, why). Applied in order to every run block not marked `as written`.
SUBSTITUTIONS = [
    (r"pip install [^\n&|;]*(&& )?", lambda m: '' if m.group(1) else ': skipped pip install',
     'the package under test is installed already, and installing would fetch from PyPI'),
    (r'(--demo)(?![^\n]*--epochs)', r'\1 --epochs 1', 'a demo run of 20 epochs takes minutes: one epoch'),
    (r'--epochs \d+', '--epochs 1', 'long training: one epoch'),
    (r'\bepochs=\d+', 'epochs=1', 'long training: one epoch'),
    (r'--warmup-steps \d+', '--warmup-steps 2', 'a warm-up longer than a one-epoch run is refused'),
    (r'\b(panns_cnn14|efficientat_mn10)\b', 'efficientat_mn04',
     'CNN14 and mn10 train and export for minutes on 2 cores: the small EfficientAT network, which has '
     'the same kinds of head (a new one, or the AudioSet tagger) and pretrained weights'),
    (r'127\.0\.0\.1:' + DOCUMENTED_PORT, '127.0.0.1:{port}', 'the server started for the page listens on a free port'),
]
# What each page's working directory holds before its first block (made by tests/test_docs.py):
WORLD_FILES = {
    'dog.wav, rain.flac, clip.wav': 'short generated clips (a tone, noise)',
    'street.wav, long.wav, street_1h.wav': 'generated recordings of 12 s (street_1h.wav is not an hour long)',
    'clips/, archive/, data/dev/, data/calib/': 'folders of generated clips',
    'ESC-50-master/ (also $PADDLE_SOUNDCLS_HOME/ESC-50-master)': 'the generated demo set in the ESC-50 layout, '
                                                                 'instead of the real ESC-50',
    'my_sounds/': 'the demo set as one folder per class',
    'ckpt/best_model, ckpt_cnn14/best_model': 'an efficientat_mn04 fine-tuned for one epoch on the demo set',
    'exported/, exported_mn10/': 'the export of that checkpoint',
    'tagger/': 'an efficientat_mn04 AudioSet tagger (random weights), exported',
    'train_events.csv, dev_events.csv (+ scene_*.wav beside them)': 'generated scenes with event times',
    'device_irs/': 'two generated impulse responses',
    'pretrained weights': 'random weights of the same network (tests/docs_offline.py); nothing is downloaded',
}


class DocsError(AssertionError):
    """A block failed, or a page breaks the rules above."""


@dataclasses.dataclass
class Block:
    page: str
    line: int          # of the opening fence, 1-based
    language: str
    code: str
    marker: str = ''   # one of KINDS, or ''
    reason: str = ''

    @property
    def where(self):
        return f'{self.page}:{self.line}'

    @property
    def runs(self):
        return self.language in RUN_LANGUAGES


def parse(path, page=None):
    """The fenced blocks of a Markdown file, with their markers; a bad marker is a DocsError."""
    page = page or os.path.basename(path)
    lines = open(path, encoding='utf-8').read().split('\n')
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r'^(`{3,})(\S*)\s*$', lines[i])
        if not opening:
            if _is_marker(lines[i]) and not (i + 1 < len(lines) and lines[i + 1].startswith('```')):
                raise DocsError(f'{page}:{i + 1}: a docs-test marker must be on the line right before a fence')
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == opening.group(1)), None)
        if end is None:
            raise DocsError(f'{page}:{i + 1}: the fence is never closed')
        block = Block(page, i + 1, opening.group(2).lower(), '\n'.join(lines[i + 1:end]) + '\n')
        if i > 0 and _is_marker(lines[i - 1]):
            block.marker, block.reason = _marker(lines[i - 1].strip(), f'{page}:{i}')
        blocks.append(block)
        i = end + 1
    for before, block in zip([None] + blocks, blocks):
        if block.marker in ('output', 'output shape') and (block.runs or before is None or not before.runs):
            raise DocsError(f'{block.where}: an output marker goes on a block that does not run, right after one that does')
        if block.marker in ('server', 'as written', 'skip', 'slow') and not block.runs:
            raise DocsError(f'{block.where}: {block.marker!r} is for python or shell blocks, not {block.language!r}')
    return blocks


def _is_marker(line):
    return line.lstrip().startswith('<!--') and 'docs-test' in line


def _marker(line, where):
    m = MARKER.match(line)
    if not m or m.group('kind') not in KINDS:
        raise DocsError(f'{where}: unreadable docs-test marker {line!r}; write <!-- docs-test: KIND (reason) --> '
                        f'with KIND one of {KINDS}')
    kind, reason = m.group('kind'), (m.group('reason') or '').strip()
    if kind in NEEDS_REASON and not reason:
        raise DocsError(f'{where}: {kind!r} needs a reason: <!-- docs-test: {kind} (why) -->')
    return kind, reason


def substitute(code):
    for pattern, replacement, _ in SUBSTITUTIONS:
        code = re.sub(pattern, replacement, code)
    return code


def check_output(block, expected, actual):
    if expected.marker == 'output shape':
        try:
            want, got = json.loads(expected.code), last_json(actual)
        except ValueError as exc:
            raise DocsError(f'{expected.where}: the output of {block.where} is not the JSON shown ({exc}):\n{actual}')
        problem = _shape_difference(want, got, 'output')
        if problem:
            raise DocsError(f'{expected.where}: the output of {block.where} differs from the one shown: {problem}\n{actual}')
        return
    checker = doctest.OutputChecker()
    if not checker.check_output(expected.code, actual, doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE):
        raise DocsError(f'{expected.where}: the output of {block.where} differs from the one shown:\n'
                        f'--- shown\n{expected.code}--- got\n{actual}')


def last_json(text):
    """The last of the JSON values printed one after another (curl ends its answers with no newline)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    if not values:
        raise ValueError('no JSON printed')
    return values[-1]


def _shape_difference(want, got, path):
    kinds = ((bool,), (int, float), (str,), (list,), (dict,), (type(None),))
    kind = next(k for k in kinds if isinstance(want, k) and not (k == (int, float) and isinstance(want, bool)))
    if not isinstance(got, kind) or (kind == (int, float) and isinstance(got, bool)):
        return f'{path} is {got!r}, where the docs show {want!r}'
    if isinstance(want, dict) and set(want) != set(got):
        return f'{path} has the keys {sorted(got)}, where the docs show {sorted(want)}'
    if isinstance(want, dict):
        return next((p for k in want for p in [_shape_difference(want[k], got[k], f'{path}[{k!r}]')] if p), None)
    if isinstance(want, list) and want and got:
        return _shape_difference(want[0], got[0], f'{path}[0]')
    return None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Page:
    """Runs the blocks of one page in `workdir` with `env` (a dict of environment variables)."""

    def __init__(self, path, workdir, env, slow=False, page=None):
        self.blocks = parse(path, page)
        self.workdir, self.env, self.slow = workdir, env, slow
        self.namespace = {'__name__': '__docs__'}
        self.servers, self.port = [], None
        self.ran, self.skipped = [], []

    def run(self):
        try:
            for k, block in enumerate(self.blocks):
                if not block.runs:
                    continue
                if block.marker == 'skip' or (block.marker == 'slow' and not self.slow):
                    self.skipped.append((block.where, block.marker, block.reason))
                    continue
                output = self.run_block(block)
                self.ran.append(block.where)
                following = self.blocks[k + 1] if k + 1 < len(self.blocks) else None
                if following is not None and following.marker in ('output', 'output shape'):
                    check_output(block, following, output)
        finally:
            self.stop_servers()
        return self

    def code_of(self, block):
        code = block.code if block.marker == 'as written' else substitute(block.code)
        return code.replace('{port}', str(self.port or DOCUMENTED_PORT))

    def run_block(self, block):
        code = self.code_of(block)
        if block.marker == 'server':
            code = self.start_servers(block, code)
        if block.language == 'python':
            return self.run_python(block, code)
        return self.run_shell(block, code)

    def run_python(self, block, code):
        out, cwd = io.StringIO(), os.getcwd()
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        os.chdir(self.workdir)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, block.where, 'exec'), self.namespace)
        except Exception:
            raise DocsError(f'{block.where}: the python block failed:\n{code}\n{traceback.format_exc()}') from None
        finally:
            os.chdir(cwd)
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        return out.getvalue()

    def run_shell(self, block, code):
        try:
            done = subprocess.run(['bash', '-e', '-o', 'pipefail', '-c', code], cwd=self.workdir, env=self.env,
                                  capture_output=True, text=True, timeout=SHELL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DocsError(f'{block.where}: the shell block ran over {SHELL_TIMEOUT} s:\n{code}') from None
        if done.returncode != 0:
            raise DocsError(f'{block.where}: the shell block exited with {done.returncode}:\n{code}\n'
                            f'--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}')
        return done.stdout

    def start_servers(self, block, code):
        """Each `paddle-soundcls serve ...` line starts a server on a free port, in the background, and is
        waited for until /healthz answers. The first stays up for the rest of the page (its port
        replaces 8866 in later blocks); the others are stopped once they answered. The rest of the
        block runs as usual."""
        for k, line in enumerate(SERVE.findall(code)):
            port = free_port()
            command = line.split('#')[0].strip() + f' --port {port}'
            server = subprocess.Popen(['bash', '-c', f'exec {command}'], cwd=self.workdir, env=self.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True)
            self._wait_healthy(block, command, server, port)
            if k == 0:
                self.servers.append(server)
                self.port = port
            else:
                _stop(server)
        return SERVE.sub(': server started by the docs test', code)

    def _wait_healthy(self, block, command, server, port, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise DocsError(f'{block.where}: {command!r} exited with {server.returncode}:\n{server.stderr.read()[-3000:]}')
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        _stop(server)
        raise DocsError(f'{block.where}: {command!r} did not answer /healthz within {timeout} s')

    def stop_servers(self):
        for server in self.servers:
            _stop(server)
        self.servers = []


def _stop(server):
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def python_env(extra_path):
    """PYTHONPATH with `extra_path` first (it holds the offline sitecustomize.py)."""
    parts = [extra_path] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    return os.pathsep.join(parts)


if __name__ == '__main__':   # print the substitution list and world files, for docs/README.md
    for pattern, _, why in SUBSTITUTIONS:
        print(f'- `{pattern}`: {why}')
    for files, what in WORLD_FILES.items():
        print(f'- {files}: {what}')
    sys.exit(0)
