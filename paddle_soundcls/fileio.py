"""Every file and folder the package writes goes through here: written beside its target
under a temporary name, flushed to disk, then renamed into place in one step.

So a reader sees the complete old or the complete new file, never a half-written one: after
a killed process, and, because the file and its folder are fsynced before and after the
rename, after a power loss or an operating-system crash too. Temporary names carry the pid
and host of their writer, so the next writer removes those left by processes that died.
The package's one file hasher (file_digest) lives here too, beside the writers.

Paddle-free: the standard library only.
"""
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile

from .errors import ArgumentError


def _default_mode(base):
    """`base` less the process umask: what open()/mkdir() would have given (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def temp_prefix(name):
    """Prefix of the temporary file or folder that becomes `name`: `.name~pid@host~`.

    It says which process made it, so one left behind by a killed process can be told from
    one that another process is still writing (see remove_stale).
    """
    return f'.{name}~{os.getpid()}@{socket.gethostname()}~'


_OWNER = re.compile(r'^\..+~(\d+)@([^~]+)~[^~]*$')  # what temp_prefix + mkstemp/mkdtemp make
_cleaned = set()  # folders this process has cleaned


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, under another user
        return True
    return True


def remove_stale(parent, once=False):
    """Delete the temporary files and folders in `parent` left by processes of this host that have died.

    A process killed while writing (SIGKILL, power loss) cannot clean up after itself, and a
    weights file or checkpoint can be hundreds of MB; the next writer into the folder does it.
    once: only the first time this process writes there (for writers of many small files).
    """
    parent = os.path.abspath(parent)
    if once and parent in _cleaned:
        return
    _cleaned.add(parent)
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        match = _OWNER.match(entry)
        if not match or match.group(2) != host or _alive(int(match.group(1))):
            continue
        path = os.path.join(parent, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            remove_file(path)


def remove_file(path):
    """Delete a file that another process may delete first (a stale temporary, a pruned cache entry)."""
    try:
        os.remove(path)
    except OSError:  # another process removed it first
        pass


def file_digest(path, algorithm='sha256'):
    """The hex digest of a file's bytes (any hashlib algorithm): the package's one file hasher,
    for download checks, export.json's file records and content-addressed caches."""
    h = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def fsync_dir(directory):
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support it on folders
        pass
    finally:
        os.close(fd)


def _fsync_tree(root):
    """fsync every file and folder under `root` (a directory built before it is swapped in)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), 'rb') as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


def atomic_write(path, write):
    """Write `path` in one step: write(tmp_path) fills a temporary file beside it (e.g.
    lambda tmp: onnx.save(model, tmp)), which is then flushed to disk and renamed over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale(directory, once=True)  # atomic_write may write thousands of files to one folder
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(os.path.basename(path)), suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode(0o666))
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_file(path, write, mode='wb'):
    """atomic_write for writers that take an open file: write(f) with f opened in `mode`."""
    def fill(tmp):
        with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8', 'newline': ''})) as f:
            write(f)
    atomic_write(path, fill)


def write_npy(path, array):
    """One numpy array as a .npy file (through an open file: np.save would add '.npy' to a name)."""
    import numpy as np
    atomic_write_file(path, lambda f: np.save(f, array), mode='wb')


def write_json(path, data):
    atomic_write_file(path, lambda f: json.dump(data, f, indent=2, ensure_ascii=False), mode='w')


def _exchange(a, b):
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not supported."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such libc function (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), b)


def replace_dir(build, target):
    """Build a directory with build(tmp_dir), then swap it in for `target`.

    On Linux the two are exchanged in one step, so `target` is at every moment the complete
    old or the complete new directory. Elsewhere the old directory is kept as `target.old`
    until the new one is in place, so a crash at any moment leaves a complete directory at
    `target` or at `target.old` (see recover_dir).
    """
    target = os.fspath(target)
    if not target:
        raise ArgumentError('the output directory is an empty path: name the folder to write')
    if os.path.lexists(target) and not os.path.isdir(target):   # never moved aside for a directory
        raise ArgumentError(f'{target} is a file, not a directory: name a folder to write (it is replaced only '
                            f'once complete), or remove the file first')
    parent = os.path.dirname(os.path.abspath(target)) or '.'
    name = os.path.basename(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent)
    recover_dir(target)  # a crash left only target.old: it is the current copy, never to be deleted first
    tmp = tempfile.mkdtemp(dir=parent, prefix=temp_prefix(name), suffix='.tmp')
    try:
        os.chmod(tmp, _default_mode(0o777))
        build(tmp)
        _fsync_tree(tmp)
        if os.path.isdir(target) and not os.path.islink(target) and _exchange(tmp, target):
            fsync_dir(parent)
            return  # tmp now holds the old directory: removed below
        old = target + '.old'
        if os.path.exists(old):
            shutil.rmtree(old)
        if os.path.exists(target):
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(parent)
        if os.path.exists(old):
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def recover_dir(target):
    """Put back `target.old` if a crash left it without `target`; return whether `target` exists."""
    old = target + '.old'
    if not os.path.exists(target) and os.path.exists(old):
        os.replace(old, target)
    return os.path.exists(target)


