"""A similarity index over embedding folders: which clips of an archive sound like this one.

    build_index(['archive_embeddings'], 'archive_index')        # paddle-soundcls index ... --output
    index = VectorIndex.load('archive_index')
    index.search(embedding, k=10)      # -> [{'file', 'start', 'end', 'distance', 'score'}, ...], best first

An index folder holds

    index.faiss     a faiss IndexIVFFlat over the L2-normalised embeddings (inner product =
                    cosine similarity; ids: row numbers of rows.parquet)
    rows.parquet    file (string), start, end (float64 seconds): what each vector is of
    index.json      {'format', 'library', 'library_version', 'index', 'metric', 'parameters',
                    'model', 'model_dir', 'embedding_size', 'count', 'sources'}

and is written whole (fileio.replace_dir): a failed or killed build leaves the old index.

Why faiss's IVF-Flat (benchmarks/bench_archive.py --index, figures in docs/search.md): on
clustered vectors of 960 values it builds three times faster than HNSW (hnswlib's or faiss's:
6 s against 20 s for 100 K vectors on two cores; 140 s for 1 M) and reaches a higher recall@10
(0.96 against 0.95), at a millisecond a query at 100 K and 6 ms at 1 M; it stores the vectors
themselves, so exact search and a rebuild need nothing else. faiss ships binary wheels for
Linux, macOS and Windows; hnswlib 0.8 is a source package that needs a C++ compiler to install.

IVF-Flat splits the vectors into `nlist` lists around k-means centres (trained on a random
sample of the rows) and a query scans the `nprobe` lists nearest to it: nprobe is the
query-time knob (more: slower, closer to exact). Exact search (exact=True) is numpy brute force
over the stored vectors, chunked.

Paddle-free: numpy, pyarrow and faiss only, imported when used.
"""
import json
import os

import numpy as np

from .. import fileio, validate
from ..archive import parquet
from ..errors import ArgumentError

FORMAT = 1
INDEX_FILE = 'index.faiss'
ROWS_FILE = 'rows.parquet'
META_FILE = 'index.json'
METRICS = ('cosine',)

# The list count follows the number of vectors: 4 sqrt(count) lists (faiss's rule of thumb; 4,000
# at 1 M), trained by k-means on TRAIN_PER_LIST random vectors a list (faiss warns below 39; more
# makes the training, quadratic in the lists, slower for little recall), so at most count / 40
# lists. DEFAULT_NPROBE: recall@10 0.95 at 1 M clustered vectors of 960 values, 0.96 at 100 K
# (benchmarks/bench_archive.py --index), about 5 ms a query at 1 M on two cores.
DEFAULT_NPROBE = 32
LISTS_PER_SQRT = 4
TRAIN_PER_LIST = 40
SAMPLE_SEED = 0
READ_BATCH = 16384     # rows read from Parquet and added per step: memory beyond the index stays small
EXACT_CHUNK = 65536    # stored vectors compared per step by exact search


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(f"similarity search needs faiss: pip install 'paddle_soundcls[archive]' ({exc})",
                          name='faiss') from None
    return faiss


def default_nlist(count):
    """The number of IVF lists for `count` vectors: 4 sqrt(count), at most count / TRAIN_PER_LIST."""
    return max(1, min(int(round(LISTS_PER_SQRT * count ** 0.5)), count // TRAIN_PER_LIST))


def describe_defaults():
    """The index kind and the parameters build_index uses unless told otherwise."""
    return {'library': 'faiss', 'index': 'IndexIVFFlat', 'metric': 'cosine', 'nlist': f'{LISTS_PER_SQRT} sqrt(count)',
            'nprobe': DEFAULT_NPROBE, 'train_per_list': TRAIN_PER_LIST}


def new_index(embedding_size, nlist, nprobe=DEFAULT_NPROBE):
    """An empty, untrained faiss IVF-Flat index of `nlist` lists for unit vectors compared by inner product."""
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(int(embedding_size))
    index = faiss.IndexIVFFlat(quantizer, int(embedding_size), int(nlist), faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(int(nprobe), int(nlist))
    return index


def train_size(nlist, count):
    return min(count, TRAIN_PER_LIST * nlist)


def unit_rows(vectors, where):
    """float32 [n, d] rows scaled to length 1 (a copy); rows that are not finite, or all zeros, are
    refused, naming `where` (cosine similarity has no meaning for them)."""
    vectors = np.array(vectors, dtype=np.float32, copy=True)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ArgumentError(f'{where}: row {int(np.flatnonzero(bad)[0])} holds NaN or infinite values')
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ArgumentError(f'{where}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros, which has no '
                            f'direction to compare by cosine similarity')
    vectors /= norms
    return vectors


# ----- building -----
def _as_folders(sources):
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    folders = [os.fspath(s) for s in sources]
    if not folders:
        raise ArgumentError('sources is empty: give one or more embedding folders (paddle-soundcls embed --output)')
    return folders


def _source_settings(folder):
    """(embeddings.json, Parquet parts, row count) of one embedding folder, checked."""
    import pyarrow.parquet as pq
    if not os.path.isdir(folder):
        raise ArgumentError(f'no such embedding folder: {folder}')
    settings = parquet.read_settings(folder)
    parts = parquet.parts(folder)
    rows = 0
    for part in parts:
        try:
            rows += pq.ParquetFile(part).metadata.num_rows
        except Exception as exc:   # pyarrow's own types for a file that is not Parquet
            raise ArgumentError(f'cannot read {part} ({str(exc).splitlines()[0][:200]}); move it out of {folder} '
                                f'or embed again') from None
    if rows == 0:
        raise ArgumentError(f'{folder} holds no embeddings (no rows in {parquet.PART_PATTERN}); embed audio into it '
                            f'first: paddle-soundcls embed MODEL_DIR AUDIO... --output {folder}')
    return settings, parts, rows


def _check_same_model(folders, settings):
    first = settings[0]
    for folder, other in zip(folders[1:], settings[1:]):
        for key in ('model', 'embedding_size'):
            if other.get(key) != first.get(key):
                raise ArgumentError(f'{folder} holds embeddings with {key} {other.get(key)!r}, but {folders[0]} has '
                                    f'{first.get(key)!r}: one index holds embeddings of one model; index them apart')


def replaceable_output(output, marker, sources=()):
    """`output` as a path that may be replaced whole (fileio.replace_dir): refused when it is one
    of the `sources`, or a folder holding files but no `marker` file (not one this package wrote)."""
    output = os.fspath(output)
    if not output:
        raise ArgumentError('output is an empty path: name the folder to write')
    for folder in sources:
        if os.path.realpath(output) == os.path.realpath(folder):
            raise ArgumentError(f'output {output} is the input folder {folder}: name another folder to write')
    if os.path.isdir(output) and os.listdir(output) and not os.path.isfile(os.path.join(output, marker)):
        raise ArgumentError(f'output {output} is a folder that holds files but no {marker}: it would be replaced '
                            f'whole, so name a new folder (or one written before, to write it again)')
    return output


def _read_batches(parts, embedding_size, columns=('file', 'start', 'end', 'embedding')):
    """(part, pyarrow RecordBatch of `columns`) of every part, READ_BATCH rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    for part in parts:
        try:
            reader = pq.ParquetFile(part)
            field = reader.schema_arrow.field('embedding')
        except KeyError:
            raise ArgumentError(f'{part} has no embedding column; it was not written by paddle-soundcls embed; '
                                f'move it out of the folder') from None
        if not pa.types.is_fixed_size_list(field.type) or field.type.list_size != embedding_size:
            raise ArgumentError(f'{part}: its embedding column is {field.type}, expected {embedding_size} float32 '
                                f'values a row (embeddings.json embedding_size); embed into a new folder')
        for batch in reader.iter_batches(batch_size=READ_BATCH, columns=list(columns)):
            yield part, batch


def _batch_vectors(batch, embedding_size, part):
    column = batch.column('embedding')
    if column.null_count:
        raise ArgumentError(f'{part}: {column.null_count} rows have no embedding; embed into a new folder')
    values = column.flatten().to_numpy(zero_copy_only=False)
    return unit_rows(values.reshape(-1, embedding_size), part)


def _training_sample(found, embedding_size, total, size):
    """`size` rows drawn at random from all the sources (a first pass over the Parquet parts):
    k-means on the first rows would only learn the first folders of an archive."""
    chosen = np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, size, replace=False))
    sample = np.empty((size, embedding_size), np.float32)
    offset = taken = 0
    for _, parts, _ in found:
        for part, batch in _read_batches(parts, embedding_size, columns=['embedding']):
            stop = offset + batch.num_rows
            picked = chosen[taken:np.searchsorted(chosen, stop)]
            if len(picked):
                sample[taken:taken + len(picked)] = _batch_vectors(batch, embedding_size, part)[picked - offset]
                taken += len(picked)
            offset = stop
    return sample


def build_index(sources, output, metric='cosine', nlist=None, nprobe=DEFAULT_NPROBE, progress=True):
    """Index the embeddings of one or more embedding folders (paddle-soundcls embed --output) into
    the folder `output`, replaced whole once complete. Returns index.json's contents.

    All folders must hold embeddings of one model (of one size). metric: 'cosine' (vectors are
    L2-normalised, compared by inner product). nlist: IVF lists (default: default_nlist(count),
    4 sqrt(count)); at most count / 40. nprobe: the lists a query scans unless
    VectorIndex.search is told otherwise, recorded in index.json. The lists are trained on a
    random sample of the rows (a first pass over the folders); then every row is read and added
    in batches, so memory is the index plus one batch.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ..progress import progress_bar
    faiss = _faiss()
    validate.one_of('metric', metric, METRICS)
    nprobe = validate.positive_int('nprobe', nprobe)
    folders = _as_folders(sources)
    output = replaceable_output(output, META_FILE, folders)
    found = [_source_settings(folder) for folder in folders]
    settings = [s for s, _, _ in found]
    _check_same_model(folders, settings)
    embedding_size = int(settings[0]['embedding_size'])
    total = sum(rows for _, _, rows in found)
    most = max(1, total // TRAIN_PER_LIST)
    nlist = validate.integer('nlist', nlist, 1, most, allow_none=True,
                             hint=f'training takes {TRAIN_PER_LIST} of the {total} vectors a list')
    nlist = default_nlist(total) if nlist is None else nlist

    index = new_index(embedding_size, nlist, nprobe)
    index.train(_training_sample(found, embedding_size, total, train_size(nlist, total)))
    tables = []
    offset = 0
    with progress_bar(total=total, unit='vector', desc='Indexing', show=progress) as bar:
        for _, parts, _ in found:
            for part, batch in _read_batches(parts, embedding_size):
                index.add_with_ids(_batch_vectors(batch, embedding_size, part),
                                   np.arange(offset, offset + batch.num_rows, dtype=np.int64))
                offset += batch.num_rows
                tables.append(pa.Table.from_batches([batch.select(['file', 'start', 'end'])]))
                bar.update(batch.num_rows)
    rows = pa.concat_tables(tables)
    model_dir = next((s.get('model_dir') for s in settings if s.get('model_dir')), None)
    meta = {'format': FORMAT, 'library': 'faiss', 'library_version': faiss.__version__, 'index': 'IndexIVFFlat',
            'metric': metric, 'parameters': {'nlist': nlist, 'nprobe': nprobe, 'train_size': train_size(nlist, total)},
            'model': settings[0]['model'], 'model_dir': model_dir, 'embedding_size': embedding_size,
            'count': int(index.ntotal),
            'sources': [{'path': os.path.abspath(folder), 'rows': count, 'window': s.get('window'), 'hop': s.get('hop')}
                        for folder, (s, _, count) in zip(folders, found)]}

    def write(tmp):
        faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
        pq.write_table(rows, os.path.join(tmp, ROWS_FILE))
        fileio.write_json(os.path.join(tmp, META_FILE), meta)
    fileio.replace_dir(write, output)
    return meta


# ----- searching -----
class VectorIndex:
    """An index folder, loaded: search(vectors, k) finds the most similar rows of the archive."""

    def __init__(self, path, meta, index, rows):
        self.path = path
        self.meta = meta
        self.model = meta['model']
        self.model_dir = meta.get('model_dir')
        self.embedding_size = int(meta['embedding_size'])
        self.nprobe = int(meta['parameters']['nprobe'])
        self.nlist = int(meta['parameters']['nlist'])
        self._index = index
        self._files = rows.column('file').to_pylist()
        self._starts = rows.column('start').to_numpy()
        self._ends = rows.column('end').to_numpy()

    def __len__(self):
        return int(self._index.ntotal)

    @classmethod
    def load(cls, path):
        """The index folder `path` (written by build_index); ArgumentError naming what is wrong otherwise."""
        import pyarrow.parquet as pq
        faiss = _faiss()
        path = os.fspath(path)
        rebuild = f'rebuild it: paddle-soundcls index EMB_DIR... --output {path}'
        if not os.path.isdir(path):
            raise ArgumentError(f'no such index folder: {path} (make one with paddle-soundcls index EMB_DIR... '
                                f'--output {path})')
        meta_path = os.path.join(path, META_FILE)
        if not os.path.isfile(meta_path):
            raise ArgumentError(f'{path} is not an index folder (it has no {META_FILE}); {rebuild}')
        try:
            with open(meta_path, encoding='utf-8') as f:
                meta = json.load(f)
        except ValueError as exc:
            raise ArgumentError(f'{meta_path} is not valid JSON ({exc}); {rebuild}') from None
        if not isinstance(meta, dict) or meta.get('format') != FORMAT or meta.get('library') != 'faiss':
            found = meta.get('format') if isinstance(meta, dict) else None
            raise ArgumentError(f'{meta_path} is an index of format {found!r}, not faiss format {FORMAT} that this '
                                f'version reads; {rebuild}')
        for name in (INDEX_FILE, ROWS_FILE):
            if not os.path.isfile(os.path.join(path, name)):
                raise ArgumentError(f'{path} is damaged: {name} is missing; {rebuild}')
        try:
            index = faiss.read_index(os.path.join(path, INDEX_FILE))
            rows = pq.read_table(os.path.join(path, ROWS_FILE), columns=['file', 'start', 'end'])
        except Exception as exc:   # faiss's and pyarrow's own types for a damaged file
            raise ArgumentError(f'{path} is damaged ({str(exc).strip().splitlines()[-1][:200]}); {rebuild}') from None
        if not (index.ntotal == rows.num_rows == meta.get('count')) or index.d != meta.get('embedding_size'):
            raise ArgumentError(f'{path} is damaged: {INDEX_FILE} holds {index.ntotal} vectors of {index.d} values, '
                                f'{ROWS_FILE} {rows.num_rows} rows, {META_FILE} says {meta.get("count")} of '
                                f'{meta.get("embedding_size")}; {rebuild}')
        return cls(path, meta, index, rows)

    def _queries(self, vectors):
        vectors = np.asarray(vectors)
        if vectors.ndim not in (1, 2) or vectors.shape[-1] != self.embedding_size or not vectors.size:
            raise ArgumentError(f'vectors has shape {list(vectors.shape)}; {self.path} holds embeddings of '
                                f'{self.embedding_size} values ({self.model}): give [queries, {self.embedding_size}] '
                                f'or [{self.embedding_size}]')
        if not np.issubdtype(vectors.dtype, np.number) or np.issubdtype(vectors.dtype, np.complexfloating):
            raise ArgumentError(f'vectors must be real numbers, got dtype {vectors.dtype}')
        return unit_rows(vectors.reshape(-1, self.embedding_size), 'vectors')

    def search(self, vectors, k=10, exact=False, nprobe=None):
        """The k rows most similar to each query, best first: one list of {'file', 'start', 'end',
        'distance' (cosine distance, 1 - similarity), 'score' (cosine similarity)} per row of
        vectors [queries, embedding_size], or one list for a single vector [embedding_size].

        k >= len(self) gives every row, ranked exactly. An approximate search may give fewer than
        k when the lists it scans hold fewer rows. exact: numpy brute force over every stored
        vector (the true neighbours; slow for big indexes). nprobe: the IVF lists each query scans (default:
        index.json's; more is slower and closer to exact; nlist scans them all).
        """
        k = validate.positive_int('k', k)
        exact = validate.flag('exact', exact)
        nprobe = validate.positive_int('nprobe', nprobe, allow_none=True)
        single = np.ndim(vectors) == 1
        queries = self._queries(vectors)
        if k >= len(self):   # every row: only a scan of them all gives them all
            k, exact = len(self), True
        if exact:
            scores, ids = self._exact(queries, k)
        else:
            faiss = _faiss()
            params = faiss.SearchParametersIVF()
            params.nprobe = min(self.nlist, nprobe or self.nprobe)
            scores, ids = self._index.search(queries, k, params=params)
        results = [self._records(s, i) for s, i in zip(scores, ids)]
        return results[0] if single else results

    def _exact(self, queries, k):
        """(scores, ids) [queries, k] of the true nearest neighbours, best first (ties: lower id first)."""
        if self._index.direct_map.type == _faiss().DirectMap.NoMap:
            self._index.make_direct_map()    # row number -> place in the lists: 8 bytes a vector
        best_ids = np.zeros((len(queries), 0), np.int64)
        best_scores = np.zeros((len(queries), 0), np.float32)
        for start in range(0, len(self), EXACT_CHUNK):
            chunk = self._index.reconstruct_n(start, min(EXACT_CHUNK, len(self) - start))
            scores = queries @ chunk.T
            top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
            best_ids = np.concatenate([best_ids, top + start], axis=1)
            best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
            keep = np.argsort(-best_scores, axis=1, kind='stable')[:, :k]
            best_ids = np.take_along_axis(best_ids, keep, axis=1)
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
        return best_scores, best_ids

    def _records(self, scores, ids):
        return [{'file': self._files[i], 'start': float(self._starts[i]), 'end': float(self._ends[i]),
                 'distance': float(1.0 - s), 'score': float(s)}
                for s, i in zip(scores, ids) if i >= 0]   # faiss pads with -1 when it finds fewer than k

    def __repr__(self):
        return (f'VectorIndex({self.path!r}, model={self.model}, count={len(self)}, '
                f'embedding_size={self.embedding_size})')
