"""The package's cache: `$PADDLE_SOUNDCLS_HOME` (default ~/.cache/paddle_soundcls).

Two kinds of entries live there:
- downloads (pretrained weights, datasets), fetched once: `fetch` writes them through
  fileio.atomic_write after checking them (size, md5/sha256), so the cache never holds a
  partial or wrong file, and says how to place the file by hand when there is no network;
- results computed from other files (decoded waveforms, teacher logits, embeddings),
  content-addressed: `content_cache` finds them by the sha256 of the input file's bytes under
  a key of every setting the results depend on (`settings_key`), the decoders' versions
  (`decoding_settings`) always among them.

Paddle-free.
"""
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request

from . import fileio
from .errors import DownloadError  # (re-exported)
from .fileio import file_digest  # (re-exported: the package's one file hasher)
from .progress import progress_bar

DEFAULT_TIMEOUT = 10.0


def cache_dir():
    root = os.environ.get('PADDLE_SOUNDCLS_HOME') or os.path.join(os.path.expanduser('~'), '.cache', 'paddle_soundcls')
    os.makedirs(root, exist_ok=True)
    return root


def check_file(path, md5=None, sha256=None, size_range=None, check=None):
    """Return None when `path` passes every given check, else a sentence saying why not.

    check: optional function(path) -> None or a sentence, for what the file must hold.
    """
    size = os.path.getsize(path)
    if size_range is not None and not size_range[0] <= size <= size_range[1]:
        return f'its size is {size} bytes, expected between {size_range[0]} and {size_range[1]}'
    for algorithm, expected in (('md5', md5), ('sha256', sha256)):
        if expected:
            digest = file_digest(path, algorithm)
            if digest != expected.lower():
                return f'its {algorithm} is {digest}, expected {expected}'
    return check(path) if check is not None else None


def fetch(url, filename, md5=None, sha256=None, size_range=None, timeout=None, root=None, progress=True,
          check=None):
    """Return the cached path of `filename`, downloading it from `url` if it is not there yet.

    A file already in the cache is used without any network access once it passes its
    checks; a cached file that fails them is an error (it is never silently replaced).
    check: optional function(path) -> None or a sentence saying what is wrong with the file.
    timeout: seconds without an answer from the server before giving up (None: DEFAULT_TIMEOUT).
    Several processes may fetch the same file at once: each downloads to its own temporary
    file and the last complete one is renamed into place.
    """
    root = root or cache_dir()
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    path = os.path.join(root, filename)
    if os.path.exists(path):
        problem = check_file(path, md5, sha256, size_range, check)
        if problem:
            raise DownloadError(f'the cached file {path} is damaged: {problem}. Delete it and run again '
                                f'to download it from {url}.')
        return path

    def download(tmp):
        with open(tmp, 'wb') as out:
            _download(url, out, timeout, progress, path)
        problem = check_file(tmp, md5, sha256, size_range, check)
        if problem:
            raise DownloadError(f'the download of {url} is corrupt: {problem}. Nothing was saved; try again, '
                                f'or place a good copy at {path} by hand.')

    os.makedirs(root, exist_ok=True)
    fileio.remove_stale(root)  # partial downloads of killed processes: hundreds of MB each, so at every fetch
    fileio.atomic_write(path, download)
    return path


def _download(url, out, timeout, progress, path):
    """Write the body of `url` to the open file `out`; `path` is where the file will be cached."""
    name = os.path.basename(path)
    hint = (f'Download it on a machine with internet access and copy it to '
            f'{path} (or set PADDLE_SOUNDCLS_HOME to a folder that holds it).')
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get('Content-Length')
            total = int(total) if total else None
            received = 0
            with progress_bar(total=total, unit='B', unit_scale=True, desc=f'Downloading {name}', show=progress) as bar:
                while True:
                    block = response.read(1 << 16)
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:
                raise DownloadError(f'the connection to {url} closed after {received} of {total} bytes. {hint}')
    except urllib.error.HTTPError as exc:
        raise DownloadError(f'cannot download {url}: HTTP {exc.code} {exc.reason}. {hint}') from None
    except http.client.IncompleteRead as exc:  # newer Pythons and chunked bodies raise on a short body
        raise DownloadError(f'the connection to {url} closed early ({exc!r}). {hint}') from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        reason = getattr(exc, 'reason', exc)
        raise DownloadError(f'cannot download {url} (offline, or the server did not answer within '
                            f'{timeout} s: {reason}). {hint}') from None


def prune_cache(folder, suffix, keep):
    """Keep the `keep` most recently used files ending in `suffix` in `folder`; remove the rest.

    Callers mark a file as used with os.utime, so a model in use is never the one removed.
    """
    files = sorted((os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(suffix)),
                   key=os.path.getmtime, reverse=True)
    for path in files[keep:]:
        fileio.remove_file(path)


def settings_key(settings, length=24):
    """The name of a cache entry computed under `settings` (JSON data): the start of the sha256 of
    their canonical JSON, so equal settings give the same key whatever the order of their keys."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]


def decoding_settings():
    """What turns a file's bytes into the samples a model hears, for the keys of caches of results
    computed from audio files: the resampler's version (audio.RESAMPLER_VERSION) and libsndfile's
    (its decoders, e.g. MP3, may change between versions)."""
    import soundfile

    from . import audio
    return {'resampler': audio.RESAMPLER_VERSION, 'libsndfile': soundfile.__libsndfile_version__}


def content_cache(root, settings, paths):
    """A cache of one result per audio file: `<root>/<key>/<sha256 of the file>.npy`, the key
    hashing `settings` (everything the results depend on besides the file) with
    decoding_settings(), which every result computed from decoded audio depends on; both are
    written beside the results as settings.json for people reading the cache.

    Files are found by the sha256 of their bytes, hashed on every call: reading a file is cheap
    next to computing its result, and unlike size + mtime it cannot miss an edit, so an edited
    file never gets a stale result (and the same audio under two names is computed once).
    Returns (the result file of each path, the indices of the paths whose content has no result
    yet: the first path of each content, in order).
    """
    settings = {**settings, **decoding_settings()}  # the decoders of this process, whatever the caller said
    folder = os.path.join(root, settings_key(settings))
    if not os.path.isfile(os.path.join(folder, 'settings.json')):
        fileio.write_json(os.path.join(folder, 'settings.json'), settings)
    hashes = [file_digest(path, 'sha256') for path in progress_bar(paths, desc='Hashing audio files', unit='file',
                                                                    leave=False, show=len(paths) >= 500)]
    files = [os.path.join(folder, f'{digest}.npy') for digest in hashes]
    missing = {}
    for index, file in enumerate(files):
        if not os.path.isfile(file):
            missing.setdefault(file, index)
    return files, sorted(missing.values())
