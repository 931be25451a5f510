"""The similarity index (paddle_soundcls.search.index) and `paddle-soundcls index` / `search`,
against exact nearest neighbours computed here with numpy on clustered vectors."""
import argparse
import json
import os

import numpy as np
import pytest

from paddle_soundcls.archive import parquet
from paddle_soundcls.cli import index as index_cli
from paddle_soundcls.cli import search as search_cli
from paddle_soundcls.cli.common import run_guarded
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.search import index as search_index
from paddle_soundcls.search.index import VectorIndex, build_index

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')
pytest.importorskip('faiss')

DIM = 64
MODEL = 'efficientat_mn10'
RECALL_AT_10 = 0.95   # what docs/search.md states for the default nprobe
ARCHIVE_CLUSTERS = 400


def clustered(count, seed, clusters=30, dim=DIM):
    """Vectors around `clusters` centres (a Gaussian mixture, as embeddings are), at random
    lengths: the index must compare directions only."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1000).standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim))
    return (x * rng.uniform(0.5, 3.0, (count, 1))).astype(np.float32)


def write_folder(folder, vectors, name='clip', model=MODEL, parts=2, size=None):
    """An embedding folder as `paddle-soundcls embed` writes it (archive/parquet.py): its settings
    file and Parquet parts of rows (file, start, end, model, embedding), written here with
    pyarrow; row i is window i % 4 of file i // 4."""
    size = vectors.shape[1] if size is None else size
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, parquet.SETTINGS_FILE), 'w') as f:
        json.dump({'format': parquet.FORMAT, 'model': model, 'model_dir': None, 'embedding_size': size, 'window': 2.5,
                   'hop': 2.5}, f)
    rows = np.arange(len(vectors))
    for number, chunk in enumerate(np.array_split(rows, parts)):
        table = pa.table({
            'file': pa.array([f'{name}{i // 4}.wav' for i in chunk], pa.string()),
            'start': pa.array(2.5 * (chunk % 4), pa.float64()), 'end': pa.array(2.5 * (chunk % 4) + 2.5, pa.float64()),
            'model': pa.array([model] * len(chunk), pa.string()),
            'embedding': pa.FixedSizeListArray.from_arrays(pa.array(vectors[chunk].reshape(-1), pa.float32()), size)})
        pq.write_table(table, os.path.join(folder, f'part-{number:05d}.parquet'))
    return str(folder)


def row_keys(name, count):
    return [(f'{name}{i // 4}.wav', 2.5 * (i % 4)) for i in range(count)]


def exact_top(vectors, queries, k):
    """(ids, cosine similarities) of the k most similar rows, best first: the reference."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ unit.T.astype(np.float64)
    ids = np.argsort(-sims, axis=1, kind='stable')[:, :k]
    return ids, np.take_along_axis(sims, ids, axis=1)


@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    """Two embedding folders (3,000 + 1,000 rows) indexed together; 10 rows a cluster, so that
    the neighbours of a row spread over several clusters (and IVF lists)."""
    root = tmp_path_factory.mktemp('search')
    first = clustered(3000, seed=1, clusters=ARCHIVE_CLUSTERS)
    second = clustered(1000, seed=2, clusters=ARCHIVE_CLUSTERS)
    sources = [write_folder(root / 'a', first, 'a'), write_folder(root / 'b', second, 'b', parts=1)]
    meta = build_index(sources, str(root / 'index'), progress=False)
    keys = row_keys('a', 3000) + row_keys('b', 1000)
    return {'root': root, 'sources': sources, 'path': str(root / 'index'), 'meta': meta,
            'vectors': np.concatenate([first, second]), 'keys': keys}


def keys_of(results):
    return [(r['file'], r['start']) for r in results]


def test_index_folder_records_what_it_holds(archive):
    meta = json.load(open(os.path.join(archive['path'], 'index.json')))
    assert meta == archive['meta']
    assert meta['format'] == 1 and meta['library'] == 'faiss' and meta['metric'] == 'cosine'
    assert meta['count'] == 4000 and meta['embedding_size'] == DIM and meta['model'] == MODEL
    assert [s['path'] for s in meta['sources']] == [os.path.abspath(s) for s in archive['sources']]
    assert [s['rows'] for s in meta['sources']] == [3000, 1000]
    assert meta['parameters']['nlist'] == search_index.default_nlist(4000) > 1
    rows = pq.read_table(os.path.join(archive['path'], 'rows.parquet'))
    assert rows.column_names == ['file', 'start', 'end'] and rows.num_rows == 4000
    assert os.path.isfile(os.path.join(archive['path'], 'index.faiss'))


def test_search_finds_the_exact_neighbours(archive):
    index = VectorIndex.load(archive['path'])
    assert len(index) == 4000
    queries = clustered(200, seed=3, clusters=ARCHIVE_CLUSTERS)
    ids, sims = exact_top(archive['vectors'], queries, 10)
    results = index.search(queries, k=10)
    found = [set(keys_of(r)) & {archive['keys'][i] for i in row} for r, row in zip(results, ids)]
    assert np.mean([len(f) / 10 for f in found]) >= RECALL_AT_10
    for result in results:
        scores = [r['score'] for r in result]
        assert scores == sorted(scores, reverse=True) and len(result) == 10
        assert all(r['distance'] == pytest.approx(1 - r['score']) for r in result)
        assert all(r['end'] == r['start'] + 2.5 for r in result)


def test_exact_search_and_scanning_every_list_are_the_reference(archive):
    index = VectorIndex.load(archive['path'])
    queries = clustered(20, seed=4, clusters=ARCHIVE_CLUSTERS)
    ids, sims = exact_top(archive['vectors'], queries, 10)
    for results in (index.search(queries, k=10, exact=True), index.search(queries, k=10, nprobe=index.nlist)):
        for result, row, sim in zip(results, ids, sims):
            np.testing.assert_allclose([r['score'] for r in result], sim, atol=1e-5)
            assert keys_of(result)[:3] == [archive['keys'][i] for i in row[:3]]   # the first ones: no near-ties


def test_fewer_lists_scanned_find_fewer_neighbours(archive):
    index = VectorIndex.load(archive['path'])
    queries = clustered(100, seed=5, clusters=ARCHIVE_CLUSTERS)
    ids, _ = exact_top(archive['vectors'], queries, 10)

    def recall(nprobe):
        results = index.search(queries, k=10, nprobe=nprobe)
        return np.mean([len(set(keys_of(r)) & {archive['keys'][i] for i in row}) for r, row in zip(results, ids)])
    assert recall(1) < recall(index.nlist)


def test_one_vector_k_beyond_the_count_and_refused_queries(tmp_path):
    vectors = clustered(50, seed=6)
    build_index(write_folder(tmp_path / 'emb', vectors), str(tmp_path / 'index'), progress=False)
    index = VectorIndex.load(str(tmp_path / 'index'))
    result = index.search(vectors[7], k=100)       # one vector: one list; k > count: every row
    ids, _ = exact_top(vectors, vectors[7:8], 50)
    assert len(result) == 50 and keys_of(result)[0] == row_keys('clip', 50)[7]
    assert sorted(keys_of(result)) == sorted(row_keys('clip', 50))
    assert result[0]['score'] == pytest.approx(1.0, abs=1e-5)
    build_index(write_folder(tmp_path / 'more', clustered(400, seed=6)), str(tmp_path / 'lists'), nprobe=1,
                progress=False)
    lists = VectorIndex.load(str(tmp_path / 'lists'))
    assert lists.nlist == 10 and lists.nprobe == 1                   # one list scanned of ten ...
    assert sorted(keys_of(lists.search(vectors[0], k=1000))) == sorted(row_keys('clip', 400))   # ... but k > count
    for k in (0, -1, 1.5, True, '3'):
        with pytest.raises(ArgumentError, match='k must be'):
            index.search(vectors[:2], k=k)
    with pytest.raises(ArgumentError, match=f'{DIM} values'):
        index.search(np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ArgumentError, match=f'{DIM} values'):
        index.search(np.zeros((2, 3, DIM), np.float32))
    bad = vectors[:3].copy()
    bad[1, 5] = np.nan
    with pytest.raises(ArgumentError, match='row 1 holds NaN'):
        index.search(bad)
    with pytest.raises(ArgumentError, match='all zeros'):
        index.search(np.zeros(DIM))
    with pytest.raises(ArgumentError, match='nprobe'):
        index.search(vectors[:1], nprobe=0)


def test_folders_that_cannot_be_indexed_are_refused_by_name(tmp_path):
    good = write_folder(tmp_path / 'good', clustered(100, seed=7))
    out = str(tmp_path / 'index')
    with pytest.raises(ArgumentError, match='no such embedding folder: .*missing'):
        build_index([good, str(tmp_path / 'missing')], out)
    plain = tmp_path / 'plain'
    plain.mkdir()
    with pytest.raises(ArgumentError, match=f'{plain} is not an embedding folder.*embeddings.json'):
        build_index(str(plain), out)
    empty = write_folder(tmp_path / 'empty', np.zeros((0, DIM), np.float32), parts=1)
    with pytest.raises(ArgumentError, match=f'{empty} holds no embeddings'):
        build_index([good, empty], out)
    for part in os.listdir(empty):
        if part.endswith('.parquet'):
            os.remove(os.path.join(empty, part))
    with pytest.raises(ArgumentError, match=f'{empty} holds no embeddings'):
        build_index(empty, out)
    other_model = write_folder(tmp_path / 'other', clustered(100, seed=8), model='panns_cnn14')
    with pytest.raises(ArgumentError, match=f"{other_model} holds embeddings with model 'panns_cnn14'"):
        build_index([good, other_model], out)
    other_size = write_folder(tmp_path / 'size', clustered(100, seed=8, dim=DIM * 2))
    with pytest.raises(ArgumentError, match=f'{other_size} holds embeddings with embedding_size {2 * DIM}'):
        build_index([good, other_size], out)
    with pytest.raises(ArgumentError, match='sources is empty'):
        build_index([], out)
    assert not os.path.exists(out)


def test_rows_the_cosine_cannot_compare_are_refused_naming_the_part(tmp_path):
    vectors = clustered(100, seed=9)
    vectors[60] = 0
    folder = write_folder(tmp_path / 'zeros', vectors)
    with pytest.raises(ArgumentError, match=r'part-00001\.parquet: row 10 is all zeros'):
        build_index(folder, str(tmp_path / 'index'))


def test_a_failed_build_leaves_the_old_index(tmp_path, monkeypatch):
    out = str(tmp_path / 'index')
    build_index(write_folder(tmp_path / 'old', clustered(200, seed=10)), out, progress=False)
    bad = clustered(300, seed=11)
    bad[250, 3] = np.inf
    with pytest.raises(ArgumentError, match='NaN or infinite'):
        build_index(write_folder(tmp_path / 'bad', bad), out, progress=False)
    new = write_folder(tmp_path / 'new', clustered(300, seed=12))

    def fail(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(search_index.fileio, 'write_json', fail)
    with pytest.raises(OSError, match='disk full'):
        build_index(new, out, progress=False)
    monkeypatch.undo()
    assert len(VectorIndex.load(out)) == 200
    assert sorted(os.listdir(tmp_path)) == ['bad', 'index', 'new', 'old']   # no temporary folder left
    build_index(new, out, progress=False)
    assert len(VectorIndex.load(out)) == 300


def test_outputs_that_would_replace_other_folders_are_refused(tmp_path):
    source = write_folder(tmp_path / 'emb', clustered(100, seed=13))
    with pytest.raises(ArgumentError, match='is the input folder'):
        build_index(source, source)
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep')
    with pytest.raises(ArgumentError, match='holds files but no index.json'):
        build_index(source, str(mine))
    assert (mine / 'notes.txt').read_text() == 'keep'
    with pytest.raises(ArgumentError, match='nlist must be an int from 1 to 2'):
        build_index(source, str(tmp_path / 'index'), nlist=10)


def test_missing_damaged_or_foreign_index_folders_are_refused(tmp_path):
    path = str(tmp_path / 'index')
    with pytest.raises(ArgumentError, match='no such index folder'):
        VectorIndex.load(path)
    build_index(write_folder(tmp_path / 'emb', clustered(100, seed=14)), path, progress=False)
    meta_path = os.path.join(path, 'index.json')
    meta = json.load(open(meta_path))
    with open(meta_path, 'w') as f:
        json.dump(dict(meta, format=2), f)
    with pytest.raises(ArgumentError, match='format 2'):
        VectorIndex.load(path)
    with open(meta_path, 'w') as f:
        f.write('{not json')
    with pytest.raises(ArgumentError, match='not valid JSON'):
        VectorIndex.load(path)
    with open(meta_path, 'w') as f:
        json.dump(meta, f)
    with open(os.path.join(path, 'index.faiss'), 'wb') as f:
        f.write(b'not an index at all')
    with pytest.raises(ArgumentError, match='damaged'):
        VectorIndex.load(path)
    os.remove(os.path.join(path, 'index.faiss'))
    with pytest.raises(ArgumentError, match='index.faiss is missing'):
        VectorIndex.load(path)
    os.remove(meta_path)
    with pytest.raises(ArgumentError, match='not an index folder'):
        VectorIndex.load(path)


# ----- the command lines -----
def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers(dest='command'))
    return parser.parse_args(argv)


def test_cli_index_builds_the_folder_and_reports_errors_in_one_line(tmp_path, capsys):
    source = write_folder(tmp_path / 'emb', clustered(400, seed=15))
    out = str(tmp_path / 'index')
    assert run_guarded(index_cli.run, parse(index_cli, ['index', source, '--output', out, '--nprobe', '4'])) == 0
    index = VectorIndex.load(out)
    assert len(index) == 400 and index.nprobe == 4
    assert 'indexed 400 embeddings of efficientat_mn10' in capsys.readouterr().err
    missing = str(tmp_path / 'nothing')
    assert run_guarded(index_cli.run, parse(index_cli, ['index', missing, '--output', out])) == 2
    assert f'no such embedding folder: {missing}' in capsys.readouterr().err


class FakeEmbedder:
    """Stands for an export: embeds each query file as the vector the test wrote for it."""

    def __init__(self, name, vectors_by_path):
        self.name, self.vectors_by_path, self.engine_name = name, vectors_by_path, 'onnxruntime'

    def embed(self, paths, batch_size=8):
        return [{'start': np.zeros(1), 'end': np.ones(1), 'embeddings': self.vectors_by_path[p][None]} for p in paths]


def test_cli_search_embeds_the_queries_with_the_index_model(archive, tmp_path, monkeypatch, capsys):
    queries = clustered(3, seed=16, clusters=ARCHIVE_CLUSTERS)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f'q{i}.wav'))
        open(paths[-1], 'wb').close()
    loaded = []

    def load_model(model_dir, engine, threads):
        loaded.append(model_dir)
        return None, FakeEmbedder(loaded_name[0], dict(zip(paths, queries)))
    loaded_name = [MODEL]
    monkeypatch.setattr(search_cli, 'load_model', load_model)
    model_dir = str(tmp_path)
    args = parse(search_cli, ['search', archive['path'], *paths, '--k', '5', '--model-dir', model_dir])
    assert run_guarded(search_cli.run, args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = VectorIndex.load(archive['path']).search(queries, k=5)
    assert [line['query'] for line in lines] == paths and [line['results'] for line in lines] == expected
    assert loaded == [model_dir]

    args = parse(search_cli, ['search', archive['path'], paths[0], '--k', '2', '--exact', '--format', 'table',
                              '--model-dir', model_dir])
    assert run_guarded(search_cli.run, args) == 0
    table = capsys.readouterr().out.splitlines()
    best = VectorIndex.load(archive['path']).search(queries[0], k=2, exact=True)
    assert table[0] == paths[0] and len(table) == 3
    assert table[1].split()[0] == f'{best[0]["score"]:.4f}' and table[1].split()[-1] == best[0]['file']

    loaded_name[0] = 'panns_cnn14'
    assert run_guarded(search_cli.run, parse(search_cli, ['search', archive['path'], paths[0], '--model-dir',
                                                          model_dir])) == 2
    assert 'is panns_cnn14, but' in capsys.readouterr().err
    # the index's embedding folders name no model directory: --model-dir is needed
    assert run_guarded(search_cli.run, parse(search_cli, ['search', archive['path'], paths[0]])) == 2
    assert 'give --model-dir' in capsys.readouterr().err
    assert run_guarded(search_cli.run, parse(search_cli, ['search', archive['path'], paths[0], '--k', '0'])) == 2
    assert '--k must be a positive int' in capsys.readouterr().err


def test_cli_search_finds_an_indexed_clip_from_its_audio(tmp_path, capsys):
    """End to end: an export's embeddings of real files, indexed; searching with one of the files
    finds its own row first, by the model_dir the index recorded."""
    import soundfile as sf
    from helpers import small_module
    from paddle_soundcls.deploy import Predictor
    from paddle_soundcls.export import export_static
    export = str(tmp_path / 'export')
    export_static(small_module('panns_cnn6', task='sound-cls', label_map=['a', 'b'], clip_seconds=1.0), export,
                  opset=13)
    rng = np.random.default_rng(17)
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f'clip{i}.wav'))
        t = np.arange(32000) / 32000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(paths[-1], wave.astype(np.float32), 32000, subtype='FLOAT')
    predictor = Predictor(export)
    embeddings = np.concatenate([r['embeddings'] for r in predictor.embed(paths)])
    folder = tmp_path / 'emb'
    write_folder(folder, embeddings, parts=1, model=predictor.name)
    settings = json.load(open(folder / parquet.SETTINGS_FILE))
    settings['model_dir'] = os.path.abspath(export)
    json.dump(settings, open(folder / parquet.SETTINGS_FILE, 'w'))
    build_index(str(folder), str(tmp_path / 'index'), progress=False)
    args = parse(search_cli, ['search', str(tmp_path / 'index'), paths[4], '--k', '3'])
    assert run_guarded(search_cli.run, args) == 0
    best = json.loads(capsys.readouterr().out)['results'][0]
    assert (best['file'], best['start']) == row_keys('clip', 6)[4] and best['score'] == pytest.approx(1.0, abs=1e-4)
