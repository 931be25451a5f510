"""Embeddings: Module.embed, Predictor.embed (the export's embeddings graph) and `paddle-soundcls embed`
(a resumable Parquet folder) against forward_features of the segments predict scores."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import BLOCK_PADDLE, small_module
from paddle_soundcls.cli import main as cli_main
from paddle_soundcls.deploy import ExportError, Predictor, exportdir
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.export import export_onnx, export_static

pq = pytest.importorskip('pyarrow.parquet')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000
CLIP = 2.0


@pytest.fixture(scope='module')
def module():
    return small_module('panns_cnn6', task='sound-cls', label_map=['a', 'b', 'c'], clip_seconds=CLIP)


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory, module):
    out = tmp_path_factory.mktemp('embed') / 'export'
    export_static(module, out, opset=13)
    return str(out)


@pytest.fixture(scope='module')
def waves():
    rng = np.random.default_rng(0)
    # shorter than the clip (padded), longer (consecutive clips, the last one ending at the end)
    return [rng.normal(0, 0.1, int(SR * seconds)).astype(np.float32) for seconds in (1.3, 5.1, 2.0)]


@pytest.fixture(scope='module')
def files(tmp_path_factory, waves):
    folder = tmp_path_factory.mktemp('audio')
    paths = []
    for i, wave in enumerate(waves):
        path = str(folder / f'clip{i}.wav')
        sf.write(path, wave, SR, subtype='FLOAT')   # float: the file holds exactly the array
        paths.append(path)
    return paths


def forward_features(module, segments):
    with paddle.no_grad():
        return module.forward_features(module.frontend(paddle.to_tensor(np.stack(segments)))).numpy()


def reference_clip(module, wave):
    """The mean of forward_features over the segments predict scores, cut here by hand."""
    n = int(CLIP * SR)
    if len(wave) <= n:
        segments = [np.pad(wave, (0, n - len(wave)))]
    else:
        starts = list(range(0, len(wave) - n, n)) + [len(wave) - n]
        segments = [wave[s:s + n] for s in starts]
    return forward_features(module, segments).mean(axis=0)


def reference_windows(module, wave, window, hop):
    w, h = int(window * SR), int(hop * SR)
    starts = list(range(0, len(wave) - w, h)) + [len(wave) - w]
    return [s / SR for s in starts], [(s + w) / SR for s in starts], forward_features(module, [wave[s:s + w]
                                                                                             for s in starts])


def check_clip_results(module, waves, results):
    assert len(results) == len(waves)
    for wave, result in zip(waves, results):
        expected = reference_clip(module, wave)
        assert result['embeddings'].shape == (1, module.embedding_size) and result['embeddings'].dtype == np.float32
        np.testing.assert_allclose(result['embeddings'][0], expected, atol=1e-4 * max(1, np.abs(expected).max()))
        assert list(result['start']) == [0.0] and result['end'][0] == pytest.approx(len(wave) / SR)


@pytest.mark.parametrize('engine', ['dygraph', 'onnxruntime'])
def test_module_embed_is_forward_features_of_the_segments_predict_scores(module, waves, engine):
    check_clip_results(module, waves, module.embed(waves, sample_rate=SR, engine=engine, batch_size=2))


@pytest.mark.parametrize('engine', ['onnxruntime', 'onnxruntime_int8', 'paddle'])
def test_predictor_embed_from_the_export_agrees_with_forward_features(module, export_dir, waves, engine):
    if engine == 'onnxruntime_int8':   # int8 clip scores; embeddings stay float: the float graph is run
        with pytest.raises(ExportError, match='model.int8.onnx is missing'):
            Predictor(export_dir, engine=engine)
        return
    predictor = Predictor(export_dir, engine=engine)
    assert predictor.embedding_size == module.embedding_size == 512
    check_clip_results(module, waves, predictor.embed(waves, sample_rate=SR))


def test_windowed_embeddings_are_one_row_per_window(module, export_dir, waves):
    [result] = Predictor(export_dir).embed(waves[1], sample_rate=SR, window=1.0, hop=0.5, batch_size=3)
    starts, ends, expected = reference_windows(module, waves[1], 1.0, 0.5)
    np.testing.assert_allclose(result['start'], starts)
    np.testing.assert_allclose(result['end'], ends)
    np.testing.assert_allclose(result['embeddings'], expected, atol=1e-4 * np.abs(expected).max())
    [dygraph] = module.embed(waves[1], sample_rate=SR, window=1.0, hop=0.5, engine='dygraph')
    np.testing.assert_allclose(dygraph['embeddings'], expected, atol=1e-4 * np.abs(expected).max())


def test_decoding_workers_give_the_same_embeddings_and_scores(export_dir, files, waves):
    predictor = Predictor(export_dir)
    here, there = predictor.embed(files), predictor.embed(files + [waves[0]], sample_rate=SR, workers=2)
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a['embeddings'], b['embeddings'])
    np.testing.assert_array_equal(there[3]['embeddings'], here[0]['embeddings'])   # the array is the first file
    assert predictor.predict(files, workers=1) == predictor.predict(files)
    with pytest.raises(ArgumentError, match='workers'):
        predictor.embed(files, workers=-1)


def test_a_file_that_cannot_be_decoded_is_named_from_a_worker(export_dir, files, tmp_path):
    bad = tmp_path / 'bad.wav'
    sf.write(bad, np.zeros(SR, np.float32), SR)
    with open(bad, 'r+b') as f:   # a valid header, then a data chunk longer than the file
        f.truncate(60)
    with pytest.raises(Exception, match='bad.wav'):
        Predictor(export_dir).embed([files[0], str(bad)], workers=1)


def test_exports_without_an_embeddings_graph_and_ensembles_are_refused(export_dir, tmp_path, module):
    old = tmp_path / 'old'
    old.mkdir()
    for name in os.listdir(export_dir):
        os.link(os.path.join(export_dir, name), old / name)
    meta = json.loads((old / exportdir.EXPORT_FILE).read_text())
    del meta['embedding_size']          # as an export of an earlier version writes it
    (old / exportdir.EXPORT_FILE).unlink()
    (old / exportdir.EXPORT_FILE).write_text(json.dumps(meta))
    predictor = Predictor(old)
    predictor.predict(np.zeros(SR, np.float32), sample_rate=SR)   # the rest of the export still runs
    with pytest.raises(ExportError, match='records no embedding_size.*export the model again'):
        predictor.embed(np.zeros(SR, np.float32), sample_rate=SR)
    os.unlink(old / exportdir.EMBED_FILE)
    meta['embedding_size'] = 512
    (old / exportdir.EXPORT_FILE).unlink()
    (old / exportdir.EXPORT_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match='model.embed.onnx is missing'):
        Predictor(old).embed(np.zeros(SR, np.float32), sample_rate=SR)

    from paddle_soundcls.ensemble import Ensemble
    ensemble = Ensemble([module, module])
    with pytest.raises(ArgumentError, match='no embeddings of its own'):
        ensemble.embed(np.zeros(SR, np.float32), sample_rate=SR)
    export_static(ensemble, tmp_path / 'ensemble', opset=13)
    with pytest.raises(ExportError, match='ensemble export.*embed with one member'):
        Predictor(tmp_path / 'ensemble').embed(np.zeros(SR, np.float32), sample_rate=SR)


def test_converting_to_onnx_again_remakes_the_embeddings_graph(export_dir, tmp_path, waves):
    copy = tmp_path / 'copy'
    copy.mkdir()
    for name in os.listdir(export_dir):
        os.link(os.path.join(export_dir, name), copy / name)
    before = Predictor(copy).embed(waves[0], sample_rate=SR)
    os.unlink(copy / exportdir.EMBED_FILE)   # lost: remade from its static graph
    meta = export_onnx(copy)
    assert meta['embed'] == {'file': exportdir.EMBED_FILE, 'opset': 13}
    np.testing.assert_array_equal(Predictor(copy).embed(waves[0], sample_rate=SR)[0]['embeddings'],
                                  before[0]['embeddings'])


def read_folder(folder):
    table = pq.read_table(str(folder))
    rows = {}
    for row in table.to_pylist():
        rows.setdefault(row['file'], []).append(row)
    return table, rows


def test_cli_embed_writes_the_predictor_embeddings_as_a_parquet_folder_and_resumes(export_dir, files, tmp_path,
                                                                                capsys):
    out = tmp_path / 'emb'
    assert cli_main(['embed', export_dir, files[0], files[1], '--output', str(out)]) == 0
    assert sorted(os.listdir(out)) == ['_embeddings.json', '_embeddings.lock', 'part-00000.parquet']
    settings = json.loads((out / '_embeddings.json').read_text())
    assert settings == {'format': 1, 'model': 'panns_cnn6', 'model_dir': os.path.abspath(export_dir),
                        'weights': 'sha256:' + exportdir.read_export(export_dir)['files'][
                            exportdir.EMBED_STATIC_PARAMS]['sha256'],
                        'embedding_size': 512, 'window': None, 'hop': None}
    assert cli_main(['embed', export_dir, *files, '--output', str(out)]) == 0   # resumes: the third file only
    assert '2 of 3 inputs already in' in capsys.readouterr().err
    # The same files again, by other paths and twice: nothing new.
    again = [os.path.join(os.path.dirname(files[0]), '.', os.path.basename(f)) for f in files] + files
    assert cli_main(['embed', export_dir, *again, '--output', str(out)]) == 0
    assert '6 of 6 inputs already in' in capsys.readouterr().err and len(os.listdir(out)) == 4
    assert sorted(os.listdir(out))[-1] == 'part-00001.parquet'
    table, rows = read_folder(out)
    assert table.schema.field('embedding').type.list_size == 512 and table.num_rows == 3
    expected = Predictor(export_dir).embed(files)
    for path, result in zip(files, expected):
        [row] = rows[path]
        assert row['model'] == 'panns_cnn6' and row['start'] == 0.0 and row['end'] == pytest.approx(result['end'][0])
        np.testing.assert_array_equal(np.array(row['embedding'], np.float32), result['embeddings'][0])
    assert cli_main(['embed', export_dir, *files, '--output', str(out)]) == 0   # nothing left to do
    assert sorted(os.listdir(out)) == ['_embeddings.json', '_embeddings.lock', 'part-00000.parquet',
                                       'part-00001.parquet']


def test_cli_embed_windows_and_refusals(export_dir, files, tmp_path, capsys):
    out = tmp_path / 'win'
    assert cli_main(['embed', export_dir, files[1], '--output', str(out), '--window', '1', '--hop', '0.5',
                     '--workers', '1']) == 0
    _, rows = read_folder(out)
    [expected] = Predictor(export_dir).embed(files[1], window=1.0, hop=0.5)
    assert [r['start'] for r in rows[files[1]]] == list(expected['start'])
    # Another window into the same folder would mix rows of two settings.
    assert cli_main(['embed', export_dir, files[0], '--output', str(out), '--window', '2']) == 2
    assert 'other settings (window 1.0 there, 2.0 now' in capsys.readouterr().err
    (out / 'part-00007.parquet').write_bytes(b'not parquet')
    assert cli_main(['embed', export_dir, files[0], '--output', str(out), '--window', '1', '--hop', '0.5']) == 2
    assert 'part-00007.parquet' in capsys.readouterr().err
    (tmp_path / 'file').write_text('')
    assert cli_main(['embed', export_dir, files[0], '--output', str(tmp_path / 'file')]) == 2
    assert 'is a file' in capsys.readouterr().err
    assert cli_main(['embed', export_dir, files[0], '--output', str(tmp_path / 'x'), '--hop', '1']) == 2
    assert '--hop needs --window' in capsys.readouterr().err


def test_cli_embed_runs_without_paddle(export_dir, files, tmp_path):
    out = tmp_path / 'free'
    code = BLOCK_PADDLE + textwrap.dedent(f'''
        from paddle_soundcls.cli import main
        status = main(['embed', {export_dir!r}, {files[0]!r}, '--output', {str(out)!r}])
        assert not any(m == 'paddle' or m.startswith('paddle.') for m in sys.modules), 'paddle was imported'
        print(json.dumps({{'status': status}}))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {'status': 0}
    _, rows = read_folder(out)
    # Another process: onnxruntime and numpy may round in another order (seen: 1e-6).
    np.testing.assert_allclose(np.array(rows[files[0]][0]['embedding'], np.float32),
                               Predictor(export_dir).embed(files[0])[0]['embeddings'][0], rtol=1e-5, atol=1e-5)


def test_a_folder_refuses_other_weights_a_second_writer_and_keeps_no_mistyped_settings(export_dir, files, tmp_path,
                                                                                      capsys):
    from paddle_soundcls.archive import parquet
    out = tmp_path / 'emb'
    assert cli_main(['embed', export_dir, files[0], '--output', str(out)]) == 0
    other = tmp_path / 'other'   # the same model name, other weights
    export_static(small_module('panns_cnn6', task='sound-cls', label_map=['a', 'b', 'c'], clip_seconds=CLIP,
                               seed=1), other, opset=13)
    assert cli_main(['embed', str(other), files[1], '--output', str(out)]) == 2
    assert 'other settings (weights' in capsys.readouterr().err
    with parquet.writer_lock(str(out)):   # as a run in progress holds it
        assert cli_main(['embed', export_dir, files[1], '--output', str(out)]) == 2
        assert 'another process is writing embeddings into' in capsys.readouterr().err
    assert cli_main(['embed', export_dir, files[1], '--output', str(out)]) == 0   # released: it goes on
    typo = tmp_path / 'typo'
    assert cli_main(['embed', export_dir, files[0], '--output', str(typo), '--window', '0']) == 2
    assert 'window' in capsys.readouterr().err and not typo.exists()
    assert cli_main(['embed', export_dir, files[0], '--output', str(typo), '--window', '1']) == 0
