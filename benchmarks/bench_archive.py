"""Archives of many files: the similarity index over their embeddings (--index), and the
embedding and tagging throughput of whole folders (--throughput: one process with decoding
workers, and Ray actors). Prints figures (JSON with --json); asserts nothing.

    python benchmarks/bench_archive.py --index --vectors 100000 1000000 --dim 960 --json
    python benchmarks/bench_archive.py --index --vectors 20000 --libraries faiss_hnsw   # a quick check
    python benchmarks/bench_archive.py --throughput --files 200 --workers 0 1 --actors 1 2 --json

--index: per number of vectors and per index kind, the build seconds, the query latency (ms per
query, one query at a time and in batches of 100), recall@k against exact search (numpy brute
force) on held-out queries, and the index's size in bytes, at each query-time setting (efSearch
for HNSW, nprobe for IVF). Cosine similarity: the vectors are L2-normalised and compared by inner
product, as paddle_soundcls.search does.

The vectors are a Gaussian mixture, not uniform noise: audio embeddings sit in clusters (one
sound, one recording, one place) along a few dominant directions, and on uniform noise every
point is about as far from every other, which says nothing about an archive. Here: --clusters
centres (one per 100 vectors unless told: a bigger archive holds more sounds) of Zipf-like
sizes, each vector its centre plus noise along a shared 64-dimensional subspace with a
decaying spectrum, plus isotropic noise (cosine similarity of a vector to its nearest
neighbour about 0.75, to a random other one about 0); the queries are new draws of the same
mixture (not vectors of the index). Latencies are the best of 2 runs; other processes' load
only slows them.

Index kinds: `package`, the index paddle_soundcls.search builds (faiss.IndexIVFFlat with its
defaults: 4 sqrt(n) lists trained on a random sample); hnswlib (hnswlib.Index, 'ip' space) and
faiss_hnsw (faiss.IndexHNSWFlat), both M=32 and efConstruction=100; faiss_ivfpq
(faiss.IndexIVFPQ on the package's lists: 8-bit codes of 10 dimensions, a twentieth of the
memory, lossy; left out unless asked for).
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.search import index as search_index  # noqa: E402

LIBRARIES = ('package', 'hnswlib', 'faiss_hnsw', 'faiss_ivfpq')
CHUNK = 50000          # vectors generated, added and compared per step
VECTORS_PER_CLUSTER = 100
SUBSPACE = 64          # the shared directions along which the clusters spread
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_SEARCH = (16, 32, 64, 128)
IVF_NPROBE = (4, 8, 16, 32, 64)


# ----- data -----
class Mixture:
    """A Gaussian mixture of unit vectors (see the module's docstring); draw(n, seed) is the same
    for the same seed, so the index's vectors are made chunk by chunk without a second copy."""

    def __init__(self, dim, clusters, seed=0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32) / math.sqrt(dim)
        self.subspace = min(SUBSPACE, dim)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, self.subspace)))
        spectrum = 0.9 ** np.arange(self.subspace)      # a few directions carry most of the spread
        self.spread = (basis * spectrum).T.astype(np.float32) * 0.9 / math.sqrt((spectrum ** 2).sum())
        self.cluster_weights = rng.zipf(1.5, clusters).astype(np.float64)  # a few big clusters, many small
        self.cluster_weights = np.minimum(self.cluster_weights, 1000.0)
        self.cluster_weights /= self.cluster_weights.sum()

    def draw(self, n, seed):
        rng = np.random.default_rng(seed)
        which = rng.choice(len(self.centres), size=n, p=self.cluster_weights)
        x = self.centres[which]
        x += rng.standard_normal((n, self.subspace), dtype=np.float32) @ self.spread
        x += rng.standard_normal((n, self.dim), dtype=np.float32) * np.float32(0.5 / math.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def make_vectors(mixture, count, seed):
    vectors = np.empty((count, mixture.dim), np.float32)
    for number, start in enumerate(range(0, count, CHUNK)):
        stop = min(count, start + CHUNK)
        vectors[start:stop] = mixture.draw(stop - start, seed * 100003 + number)
    return vectors


def exact_neighbours(vectors, queries, k):
    """The ids of the k most similar vectors of each query, best first (numpy, chunked)."""
    best_ids = np.zeros((len(queries), 0), np.int64)
    best_sims = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(vectors), CHUNK):
        sims = queries @ vectors[start:start + CHUNK].T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        best_ids = np.concatenate([best_ids, top + start], axis=1)
        best_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, axis=1)], axis=1)
        keep = np.argsort(-best_sims, axis=1, kind='stable')[:, :k]
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
        best_sims = np.take_along_axis(best_sims, keep, axis=1)
    return best_ids


def recall(found, truth):
    """The share of the true k nearest neighbours among those found (recall@k)."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


# ----- the index kinds: build(vectors) -> (search(queries, k) -> ids, set(knob), size_bytes) -----
def _file_bytes(save):
    with tempfile.TemporaryDirectory(dir=os.environ.get('TMPDIR')) as tmp:
        path = os.path.join(tmp, 'index')
        save(path)
        return os.path.getsize(path)


def build_hnswlib(vectors, threads):
    import hnswlib
    index = hnswlib.Index(space='ip', dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=0)
    for start in range(0, len(vectors), CHUNK):
        index.add_items(vectors[start:start + CHUNK], np.arange(start, min(len(vectors), start + CHUNK)),
                        num_threads=threads)

    def search(queries, k):
        return index.knn_query(queries, k=k, num_threads=threads)[0].astype(np.int64)
    return search, index.set_ef, HNSW_EF_SEARCH, index.index_file_size()


def _faiss_search(index):
    def search(queries, k):
        return index.search(queries, k)[1]
    return search


def build_faiss_hnsw(vectors, threads):
    import faiss
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for start in range(0, len(vectors), CHUNK):
        index.add(vectors[start:start + CHUNK])

    def set_ef(ef):
        index.hnsw.efSearch = ef
    return _faiss_search(index), set_ef, HNSW_EF_SEARCH, _file_bytes(lambda p: faiss.write_index(index, p))


def _ivf(vectors, make, seed=0):
    """An IVF index made by make(quantizer, nlist), with the package's list count, trained on a
    random sample of the package's size, then filled."""
    import faiss
    nlist = search_index.default_nlist(len(vectors))
    index = make(faiss.IndexFlatIP(vectors.shape[1]), nlist)
    sample = np.random.default_rng(seed).choice(len(vectors), search_index.train_size(nlist, len(vectors)),
                                                replace=False)
    index.train(vectors[np.sort(sample)])
    for start in range(0, len(vectors), CHUNK):
        index.add(vectors[start:start + CHUNK])

    def set_nprobe(nprobe):
        index.nprobe = nprobe
    return _faiss_search(index), set_nprobe, IVF_NPROBE, _file_bytes(lambda p: faiss.write_index(index, p))


def build_package(vectors, threads):
    """The index paddle_soundcls.search builds (a faiss IVF-Flat), with its defaults: list count,
    training sample; from arrays instead of embedding folders."""
    return _ivf(vectors, lambda quantizer, nlist: search_index.new_index(vectors.shape[1], nlist))


def build_faiss_ivfpq(vectors, threads):
    import faiss
    dim = vectors.shape[1]
    codes = next(m for m in (dim // 10, 96, 64, 48, 32, 16, 8, 4, 2, 1) if m and dim % m == 0)  # ~10 dims a code
    return _ivf(vectors, lambda q, nlist: faiss.IndexIVFPQ(q, dim, nlist, codes, 8, faiss.METRIC_INNER_PRODUCT))


BUILDERS = {'package': build_package, 'hnswlib': build_hnswlib, 'faiss_hnsw': build_faiss_hnsw,
            'faiss_ivfpq': build_faiss_ivfpq}


def _ms_per_query(search, queries, k, batch, repeats=2):
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(queries), batch):
            search(queries[first:first + batch], k)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(queries)


def measure(library, vectors, queries, truth, k, threads):
    if library == 'hnswlib' and importlib.util.find_spec('hnswlib') is None:
        return {'skipped': 'hnswlib is not installed (pip install hnswlib; it builds from source)'}
    start = time.perf_counter()
    search, set_knob, values, size = BUILDERS[library](vectors, threads)
    result = {'build_s': round(time.perf_counter() - start, 2), 'index_bytes': int(size),
              'bytes_per_vector': round(size / len(vectors), 1), 'settings': []}
    for value in values:
        set_knob(value)
        result['settings'].append({
            'knob': value, f'recall_at_{k}': round(recall(search(queries, k), truth), 4),
            'ms_per_query_batch_1': round(_ms_per_query(search, queries[:100], k, 1), 3),
            'ms_per_query_batch_100': round(_ms_per_query(search, queries, k, 100), 3)})
    return result


def index_benchmark(sizes, dim, libraries, queries_count=200, k=10, clusters=None, threads=None, log=None):
    """clusters: mixture components (default: one per VECTORS_PER_CLUSTER vectors, as an archive
    holds more sounds the bigger it is)."""
    import faiss
    threads = threads or os.cpu_count()
    faiss.omp_set_num_threads(threads)
    report = {'dim': dim, 'k': k, 'queries': queries_count, 'threads': threads,
              'hnsw': {'M': HNSW_M, 'ef_construction': HNSW_EF_CONSTRUCTION},
              'package_defaults': search_index.describe_defaults(), 'versions': _versions(), 'sizes': {}}
    for count in sizes:
        components = clusters or max(1, count // VECTORS_PER_CLUSTER)
        mixture = Mixture(dim, components)
        queries = mixture.draw(queries_count, seed=7)
        vectors = make_vectors(mixture, count, seed=1)
        start = time.perf_counter()
        truth = exact_neighbours(vectors, queries, k)
        per_size = {'clusters': components,
                    'exact_numpy_ms_per_query_batch_200': round(1000 * (time.perf_counter() - start) / len(queries), 2)}
        for library in libraries:
            if log:
                log(f'{count} x {dim}: {library}')
            per_size[library] = measure(library, vectors, queries, truth, k, threads)
            if log:
                log(f'  {json.dumps(per_size[library])}')
        report['sizes'][str(count)] = per_size
        del vectors
    return report


def _versions():
    import faiss
    found = {'faiss': faiss.__version__, 'numpy': np.__version__}
    try:
        import hnswlib  # noqa: F401
        from importlib.metadata import version
        found['hnswlib'] = version('hnswlib')
    except ImportError:
        found['hnswlib'] = None
    return found


# ----- throughput: embed and tag of a folder of files -----
def make_files(folder, count, seconds, rate, channels):
    """`count` generated noise files (FLAC: decoding costs what an archive's does)."""
    import soundfile as sf
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f'clip{i:05d}.flac')
        if not os.path.exists(path):
            sf.write(path, (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32), rate)
        paths.append(path)
    return paths


def throughput_benchmark(model, count, seconds, rate, channels, workers, actors, threads, log=None):
    """files/s and audio-hours per hour of embed and tag over generated files, side by side: one
    process with each number of decoding workers, then run_job on a local Ray with each number of
    actors (one thread each; Ray started before the clock, its actors' start included)."""
    from paddle_soundcls import Module
    from paddle_soundcls.deploy import Predictor
    from paddle_soundcls.export import export_static
    root = tempfile.mkdtemp(prefix='bench_archive_')
    export = os.path.join(root, 'export')
    export_static(Module(model, task='tagging', pretrained=False), export, opset=13)
    paths = make_files(os.path.join(root, 'audio'), count, seconds, rate, channels)
    audio_seconds = seconds * len(paths)
    report = {'model': model, 'files': count, 'seconds_per_file': seconds, 'file_rate': rate, 'channels': channels,
              'runs': []}

    def record(run, elapsed):
        report['runs'].append({'run': run, 'seconds': round(elapsed, 2), 'files_per_s': round(len(paths) / elapsed, 1),
                               'audio_hours_per_hour': round(audio_seconds / elapsed)})
        if log:
            log(json.dumps(report['runs'][-1]))

    predictor = Predictor(export, num_threads=threads)
    predictor.embed(paths[:2])
    for n in workers:
        start = time.perf_counter()
        predictor.embed(paths, batch_size=8, workers=n)
        record(f'embed, one process, {n} decoding workers', time.perf_counter() - start)
        start = time.perf_counter()
        predictor.predict(paths, batch_size=8, top_k=10, workers=n)
        record(f'tag, one process, {n} decoding workers', time.perf_counter() - start)
    if actors:
        import ray
        from paddle_soundcls.archive.cluster import run_job
        ray.init(include_dashboard=False, logging_level='WARNING')
        try:
            for n in actors:
                for job, options in (('embed', {'batch_size': 8}), ('tag', {'batch_size': 8, 'top_k': 10})):
                    out = os.path.join(root, f'{job}-{n}' + ('.jsonl' if job == 'tag' else ''))
                    start = time.perf_counter()
                    run_job(job, export, paths, out, options=options, actors=n, threads_per_actor=1)
                    record(f'{job}, Ray, {n} actors x 1 thread', time.perf_counter() - start)
        finally:
            ray.shutdown()
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--index', action='store_true', help='measure the similarity index (the part there is for now)')
    p.add_argument('--vectors', type=int, nargs='+', default=[100000], help='index sizes (default 100000)')
    p.add_argument('--dim', type=int, default=960, help='embedding size (default 960: efficientat_mn10)')
    p.add_argument('--libraries', nargs='+', choices=LIBRARIES, default=list(LIBRARIES[:3]),
                   help='index kinds (default: all but faiss_ivfpq, whose recall is far lower)')
    p.add_argument('--queries', type=int, default=200, help='held-out queries for recall and latency (default 200)')
    p.add_argument('--k', type=int, default=10)
    p.add_argument('--clusters', type=int, default=None,
                   help=f'mixture components (default: one per {VECTORS_PER_CLUSTER} vectors)')
    p.add_argument('--threads', type=int, default=None, help='threads for building and batch search (default all)')
    p.add_argument('--throughput', action='store_true',
                   help='measure embed and tag of generated files: decoding workers, Ray actors')
    p.add_argument('--model', default='efficientat_mn04', help='--throughput: the model (random weights)')
    p.add_argument('--files', type=int, default=200, help='--throughput: files (default 200)')
    p.add_argument('--file-seconds', type=float, default=10.0, help='--throughput: seconds per file (default 10)')
    p.add_argument('--file-rate', type=int, default=44100, help='--throughput: their sample rate (default 44100)')
    p.add_argument('--file-channels', type=int, default=2, help='--throughput: their channels (default 2)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1], help='--throughput: decoding workers (0 1)')
    p.add_argument('--actors', type=int, nargs='*', default=[1, 2], help='--throughput: Ray actors (1 2; none: no Ray)')
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    if not (args.index or args.throughput):
        p.error('choose what to measure: --index and/or --throughput')
    log = lambda line: print(line, file=sys.stderr, flush=True)   # noqa: E731
    result = {}
    if args.index:
        result['index'] = index_benchmark(args.vectors, args.dim, args.libraries, args.queries, args.k, args.clusters,
                                          args.threads, log=log)
    if args.throughput:
        result['throughput'] = throughput_benchmark(args.model, args.files, args.file_seconds, args.file_rate,
                                                    args.file_channels, args.workers, args.actors, args.threads, log)
    print(json.dumps(result, indent=2 if args.json else None))
    return 0


if __name__ == '__main__':
    sys.exit(main())
