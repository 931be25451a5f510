"""archive.cluster.run_job on a local Ray cluster against the one-machine commands: the lines and
rows it writes for a set of files are those `paddle-soundcls tag/predict/events --jsonl` and
`paddle-soundcls embed` write for the same files, it resumes the same outputs, and a driver
killed mid-run leaves an output that a rerun completes without duplicates."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import small_module
from paddle_soundcls.cli import main as cli_main
from paddle_soundcls.errors import ArgumentError, AudioError
from paddle_soundcls.export import export_static
from signals import chirp, noise, tone

ray = pytest.importorskip('ray')
pq = pytest.importorskip('pyarrow.parquet')
from paddle_soundcls.archive.cluster import run_job  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG_OPTIONS = {'top_k': 10, 'batch_size': 8}   # what `paddle-soundcls tag` passes by default


@pytest.fixture(scope='module')
def cluster():
    """One local Ray for the module (2 CPUs, no dashboard); run_job uses it. Yields its address."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level='WARNING')
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
    paddle.seed(0)
    out = str(tmp_path_factory.mktemp('ray') / 'export')
    export_static(small_module('panns_cnn6', task='tagging'), out, opset=13)
    return out


def write_files(folder, waves_and_rates):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, (wave, rate) in enumerate(waves_and_rates):
        path = os.path.join(folder, f'clip{i:02d}.wav')
        sf.write(path, wave, rate)
        paths.append(path)
    return paths


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Files at other rates than the model's (resampled on the way), stereo, shorter and longer
    than a window."""
    stereo = np.stack([tone(440, 2.0), noise(2.0, seed=3)], axis=1)
    return write_files(str(tmp_path_factory.mktemp('audio')), [
        (tone(880, 1.5, sr=16000), 16000), (noise(3.2, sr=44100, seed=1), 44100), (chirp(200, 4000, 2.5), 32000),
        (stereo, 32000), (noise(0.6, seed=2), 32000), (tone(300, 4.0, sr=22050), 22050)])


def one_machine(*argv):
    """Run a `paddle-soundcls` command here, in this process, as the reference."""
    assert cli_main([str(a) for a in argv]) == 0


def read_jsonl(path):
    """{input: record} of a JSON-lines output, which must hold every input once."""
    with open(path, encoding='utf-8') as f:
        records = [json.loads(line) for line in f]
    inputs = [r['input'] for r in records]
    assert len(inputs) == len(set(inputs)), 'an input written twice'
    return {r['input']: r for r in records}


def assert_same(a, b, path='record'):
    """The same structure, keys and strings; floats equal to float32 rounding (the engine's last
    bit depends on how many clips share a call, which differs between runs)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for key in a:
            assert_same(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{path}[{i}]')
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), path
    else:
        assert a == b, path


def assert_same_jsonl(got, expected):
    assert set(got) == set(expected)
    for name in expected:
        assert_same(got[name], expected[name], name)


def read_rows(folder):
    """{(file, start, end): embedding} of an embedding folder; no row twice."""
    table = pq.read_table(folder)
    keys = list(zip(table.column('file').to_pylist(), table.column('start').to_pylist(),
                    table.column('end').to_pylist()))
    assert len(keys) == len(set(keys)), 'a row written twice'
    return dict(zip(keys, np.array(table.column('embedding').to_pylist(), np.float32)))


def line_count(path):
    with open(path, encoding='utf-8') as f:
        return sum(1 for line in f if line.endswith('\n'))


def test_tag_writes_the_lines_of_tag_jsonl_and_resumes(cluster, export_dir, files, tmp_path):
    expected_path = str(tmp_path / 'expected.jsonl')
    one_machine('tag', '--model-dir', export_dir, *files, '--jsonl', expected_path)
    out = str(tmp_path / 'tags.jsonl')
    first = run_job('tag', export_dir, files[:2], out, options=TAG_OPTIONS, files_per_batch=1)
    assert first == {'inputs': 2, 'skipped': 0, 'written': 2} and line_count(out) == 2
    second = run_job('tag', export_dir, files, out, options=TAG_OPTIONS, files_per_batch=2)
    assert second == {'inputs': len(files), 'skipped': 2, 'written': len(files) - 2}
    assert line_count(out) == len(files)
    assert_same_jsonl(read_jsonl(out), read_jsonl(expected_path))


def test_windowed_predict_writes_the_timeline_of_predict_jsonl(cluster, export_dir, files, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(files[0]))
    files = [os.path.basename(f) for f in files]   # relative to here: the actors' working folder is another
    expected_path = str(tmp_path / 'expected.jsonl')
    one_machine('predict', export_dir, *files, '--window', 1.0, '--hop', 0.5, '--top-k', 3, '--reduce', 'max',
                '--jsonl', expected_path)
    out = str(tmp_path / 'windows.jsonl')
    run_job('predict', export_dir, files, out, options={'window': 1.0, 'hop': 0.5, 'top_k': 3, 'reduce': 'max',
                                                        'batch_size': 8})
    got, expected = read_jsonl(out), read_jsonl(expected_path)
    assert sum(len(r['timeline']) for r in expected.values()) > len(files)   # several windows per input
    assert_same_jsonl(got, expected)


def test_events_write_the_lines_of_events_jsonl(cluster, export_dir, files, tmp_path):
    expected_path = str(tmp_path / 'expected.jsonl')
    one_machine('events', export_dir, *files, '--onset-threshold', 0.6, '--offset-threshold', 0.4,
                '--jsonl', expected_path)
    out = str(tmp_path / 'events.jsonl')
    config = {'onset_threshold': 0.6, 'offset_threshold': 0.4}
    run_job('events', export_dir, files, out, options={'config': config}, files_per_batch=4)
    expected = read_jsonl(expected_path)
    assert sum(len(r['events']) for r in expected.values()) > 0   # something to compare
    assert_same_jsonl(read_jsonl(out), expected)


def test_the_commands_run_on_ray_with_the_ray_option(cluster, export_dir, files, tmp_path, capsys):
    """--ray on tag and embed: the lines and rows of the same commands without it."""
    expected_path, out = str(tmp_path / 'expected.jsonl'), str(tmp_path / 'tags.jsonl')
    one_machine('tag', '--model-dir', export_dir, *files, '--jsonl', expected_path)
    assert cli_main(['tag', '--model-dir', export_dir, *files, '--jsonl', out, '--ray']) == 0
    assert_same_jsonl(read_jsonl(out), read_jsonl(expected_path))
    assert f'0 of {len(files)} inputs already in' in capsys.readouterr().err
    expected_folder, folder = str(tmp_path / 'expected'), str(tmp_path / 'embeddings')
    one_machine('embed', export_dir, *files, '--output', expected_folder)
    assert cli_main(['embed', export_dir, *files, '--output', folder, '--ray', '--actors', '1']) == 0
    expected, got = read_rows(expected_folder), read_rows(folder)
    assert set(got) == set(expected)
    for key, embedding in expected.items():
        np.testing.assert_allclose(got[key], embedding, rtol=0, atol=1e-6 * max(1.0, np.abs(embedding).max()))
    assert cli_main(['tag', *files, '--ray']) == 2   # a registered tagger, no --jsonl
    assert '--ray runs an export directory' in capsys.readouterr().err


def test_embed_writes_the_rows_of_the_embed_command_and_resumes(cluster, export_dir, files, tmp_path):
    expected_folder = str(tmp_path / 'expected')
    one_machine('embed', export_dir, *files, '--window', 1.0, '--hop', 0.5, '--output', expected_folder)
    expected = read_rows(expected_folder)
    out = str(tmp_path / 'embeddings')
    options = {'window': 1.0, 'hop': 0.5, 'batch_size': 8}
    run_job('embed', export_dir, files[:3], out, options=options)
    rows_before = len(read_rows(out))
    summary = run_job('embed', export_dir, files, out, options=options, files_per_batch=2)
    assert summary == {'inputs': len(files), 'skipped': 3, 'written': len(files) - 3}
    got = read_rows(out)
    assert len(got) - rows_before == sum(1 for file, _, _ in expected if file in files[3:])
    assert set(got) == set(expected)
    for key, embedding in expected.items():   # to float32 rounding of the row's scale (see assert_same)
        np.testing.assert_allclose(got[key], embedding, rtol=0, atol=1e-6 * max(1.0, np.abs(embedding).max()))
    with open(os.path.join(out, '_embeddings.json')) as f:
        with open(os.path.join(expected_folder, '_embeddings.json')) as g:
            assert json.load(f) == json.load(g)   # a folder the one-machine command resumes, and the reverse


KILLED_DRIVER = '''
import json, sys
from paddle_soundcls.archive.cluster import run_job
export_dir, paths, out, address = json.loads(sys.argv[1])
run_job('tag', export_dir, paths, out, address=address, options={options!r}, actors=1, files_per_batch=1)
'''


def test_a_driver_killed_mid_run_is_resumed_without_duplicates(cluster, export_dir, tmp_path):
    paths = write_files(str(tmp_path / 'many'), [(noise(1.0, seed=seed), 32000) for seed in range(24)])
    expected_path = str(tmp_path / 'expected.jsonl')
    one_machine('tag', '--model-dir', export_dir, *paths, '--jsonl', expected_path)
    out = str(tmp_path / 'tags.jsonl')
    script = KILLED_DRIVER.format(options=TAG_OPTIONS)
    driver = subprocess.Popen([sys.executable, '-c', script, json.dumps([export_dir, paths, out, cluster])],
                              env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (os.path.exists(out) and line_count(out) >= 1):   # its first batch written
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.monotonic() < deadline, 'no line written within 120 s'
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=30)
        driver.stderr.close()
    written = line_count(out)
    assert 1 <= written < len(paths)
    summary = run_job('tag', export_dir, paths, out, options=TAG_OPTIONS)
    assert summary['skipped'] == written and summary['written'] == len(paths) - written
    assert_same_jsonl(read_jsonl(out), read_jsonl(expected_path))


def test_an_undecodable_file_stops_the_job_naming_it(cluster, export_dir, files, tmp_path):
    bad = str(tmp_path / 'damaged.wav')
    with open(bad, 'wb') as f:
        f.write(b'RIFF' + os.urandom(200))
    out = str(tmp_path / 'tags.jsonl')
    with pytest.raises(AudioError, match='damaged.wav'):
        run_job('tag', export_dir, files[:3] + [bad], out, options=TAG_OPTIONS, files_per_batch=1)
    assert bad not in read_jsonl(out)
    summary = run_job('tag', export_dir, files[:3], out, options=TAG_OPTIONS)   # without it: goes on
    assert summary['skipped'] + summary['written'] == 3 and set(read_jsonl(out)) == set(files[:3])


def test_a_checkpoint_directory_is_refused_with_the_export_command(tmp_path):
    checkpoint = str(tmp_path / 'ckpt')
    small_module('panns_cnn6', task='tagging').save(checkpoint)
    with pytest.raises(ArgumentError, match=r'checkpoint directory.*paddle-soundcls export --checkpoint'):
        run_job('tag', checkpoint, ['a.wav'], str(tmp_path / 'out.jsonl'))


def test_options_of_another_job_are_refused(export_dir, tmp_path):
    with pytest.raises(ArgumentError, match=r"\['top_k'\] do not apply to job 'embed'"):
        run_job('embed', export_dir, ['a.wav'], str(tmp_path / 'out'), options={'top_k': 3})
    with pytest.raises(ArgumentError, match='batch_size'):
        run_job('tag', export_dir, ['a.wav'], str(tmp_path / 'out.jsonl'), options={'batch_size': 0})


@pytest.mark.slow
def test_without_an_address_a_local_ray_is_started_and_stopped(export_dir, files, tmp_path):
    """In a fresh process: run_job starts Ray on the machine, and leaves no Ray process behind."""
    out = str(tmp_path / 'tags.jsonl')
    script = textwrap.dedent(f'''
        import ray
        from paddle_soundcls.archive.cluster import run_job
        print(run_job('tag', {export_dir!r}, {files!r}, {out!r}, options={TAG_OPTIONS!r}))
        assert not ray.is_initialized()
    ''')
    proc = subprocess.run([sys.executable, '-c', script], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(out)) == len(files)
