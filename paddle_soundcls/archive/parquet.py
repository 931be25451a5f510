"""Embedding folders: what `paddle-soundcls embed` writes, `index` reads, and a rerun resumes.

A folder of Parquet files, readable as one table by pyarrow, pandas, DuckDB or Spark:

    OUT/_embeddings.json     {'format', 'model', 'model_dir', 'weights', 'embedding_size', 'window',
                             'hop'}: what every row below was made with
    OUT/part-00000.parquet   rows: file (string: the input as given), start, end (float64
    OUT/part-00001.parquet   seconds), model (string: the registry name), embedding
    ...                      (fixed_size_list<float32>[embedding_size]); one row per whole
                             input, or one per window

Each part is written whole (a temporary file renamed), after a chunk of inputs, so a killed
run loses at most the chunk it was embedding; a rerun reads the `file` column of the parts and
embeds only the inputs not in them (a file is the same file by any path to it). A folder made
with other settings (another model or weights, window or hop) is refused rather than mixed, and
one process writes into a folder at a time (_embeddings.lock).
"""
import contextlib
import glob
import json
import os

from .. import fileio
from ..errors import ArgumentError

FORMAT = 1
SETTINGS_FILE = '_embeddings.json'   # '_': readers of Parquet folders skip it
LOCK_FILE = '_embeddings.lock'
PART_PATTERN = 'part-*.parquet'


def schema(embedding_size):
    import pyarrow as pa
    return pa.schema([('file', pa.string()), ('start', pa.float64()), ('end', pa.float64()), ('model', pa.string()),
                      ('embedding', pa.list_(pa.float32(), embedding_size))])


def folder_settings(embedder, model_dir, window=None, hop=None):
    """_embeddings.json of a folder of `embedder`'s embeddings (a Predictor or a Module; model_dir:
    its export or checkpoint). `weights` fingerprints the network (embedding_digest), so a
    folder never mixes rows of two sets of weights of one model."""
    return {'format': FORMAT, 'model': embedder.name,
            'model_dir': None if model_dir is None else os.path.abspath(model_dir),
            'weights': embedder.embedding_digest, 'embedding_size': int(embedder.embedding_size), 'window': window,
            'hop': window if hop is None else hop}


def read_settings(folder):
    """embeddings.json of an embedding folder, checked; ArgumentError naming the folder otherwise."""
    path = os.path.join(folder, SETTINGS_FILE)
    if not os.path.isfile(path):
        raise ArgumentError(f'{folder} is not an embedding folder (it has no {SETTINGS_FILE}); make one with '
                            f'`paddle-soundcls embed MODEL_DIR AUDIO... --output {folder}`')
    try:
        with open(path, encoding='utf-8') as f:
            settings = json.load(f)
    except ValueError as exc:
        raise ArgumentError(f'{path} is not valid JSON ({exc}); embed into a new folder') from None
    if not isinstance(settings, dict) or settings.get('format') != FORMAT:
        raise ArgumentError(f'{path} is not an embedding folder of format {FORMAT}; embed into a new folder')
    return settings


def parts(folder):
    return sorted(glob.glob(os.path.join(glob.escape(folder), PART_PATTERN)))


def recorded_files(folder):
    """The inputs already in the folder's parts."""
    import pyarrow.parquet as pq
    done = set()
    for part in parts(folder):
        try:
            done.update(pq.read_table(part, columns=['file']).column('file').to_pylist())
        except Exception as exc:   # pyarrow's own types for a file that is not Parquet
            raise ArgumentError(f'cannot read {part} ({str(exc).splitlines()[0][:200]}); it was not written by '
                                f'`paddle-soundcls embed`: move it out of {folder}') from None
    return done


def open_folder(folder, settings):
    """Create `folder` for embeddings made with `settings`, or check that an existing one was made
    with the same; returns the inputs it already holds."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ArgumentError(f'--output {folder} is a file; give a folder for the embeddings')
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(os.path.join(folder, SETTINGS_FILE)):
        if parts(folder):
            raise ArgumentError(f'{folder} holds Parquet parts but no {SETTINGS_FILE}; embed into a new folder')
        fileio.write_json(os.path.join(folder, SETTINGS_FILE), settings)
        return set()
    recorded = read_settings(folder)
    changed = [key for key in ('model', 'weights', 'embedding_size', 'window', 'hop')
               if recorded.get(key) != settings[key]]
    if changed:
        differences = ', '.join(f'{key} {recorded.get(key)!r} there, {settings[key]!r} now' for key in changed)
        raise ArgumentError(f'{folder} holds embeddings made with other settings ({differences}); embed into a '
                            f'new folder, or with the model and settings it was made with')
    return recorded_files(folder)


def pending(paths, done):
    """The inputs of `paths` not in `done` (the folder's `file` values), each once: a file named
    twice, or by another path (./a.wav, a link), is the same file."""
    seen = {os.path.realpath(path) for path in done}
    todo = []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            todo.append(path)
    return todo


@contextlib.contextmanager
def writer_lock(folder):
    """Held while one process writes into `folder`: a second writer would embed the same inputs
    again. The system releases it when its process ends, however it ends."""
    import fcntl
    with open(os.path.join(folder, LOCK_FILE), 'a') as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArgumentError(f'another process is writing embeddings into {folder}; wait for it to finish, or '
                                f'embed into another folder') from None
        yield


def rows_table(paths, results, model, embedding_size):
    """embed results of `paths` -> a pyarrow Table of the folder's rows."""
    import numpy as np
    import pyarrow as pa
    files, starts, ends, vectors = [], [], [], []
    for path, result in zip(paths, results):
        count = len(result['start'])
        files += [path] * count
        starts.append(result['start'])
        ends.append(result['end'])
        vectors.append(result['embeddings'])
    flat = np.concatenate(vectors).astype(np.float32, copy=False).reshape(-1) if vectors else np.zeros(0, np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), embedding_size)
    return pa.Table.from_arrays(
        [pa.array(files, pa.string()), pa.array(np.concatenate(starts) if starts else [], pa.float64()),
         pa.array(np.concatenate(ends) if ends else [], pa.float64()), pa.array([model] * len(files), pa.string()),
         embedding], schema=schema(embedding_size))


def write_part(folder, table):
    """`table` as the folder's next part, written whole. Returns its path."""
    import pyarrow.parquet as pq
    existing = parts(folder)
    number = 1 + max((int(os.path.basename(p)[5:-8]) for p in existing if os.path.basename(p)[5:-8].isdigit()),
                     default=-1)
    path = os.path.join(folder, f'part-{number:05d}.parquet')
    fileio.atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def write_chunks(todo, folder, settings, embed_chunk, chunk):
    """Embed the inputs `todo` in chunks of `chunk` (embed_chunk(paths) -> embed results), writing a
    part per chunk into `folder` (opened with open_folder(folder, settings)), with a progress bar."""
    from ..progress import progress_bar
    with progress_bar(total=len(todo), unit='file', desc='Embedding', show=len(todo) >= 2) as bar:
        for start in range(0, len(todo), chunk):
            some = todo[start:start + chunk]
            write_part(folder, rows_table(some, embed_chunk(some), settings['model'], settings['embedding_size']))
            bar.update(len(some))
