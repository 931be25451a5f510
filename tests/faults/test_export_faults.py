"""Export killed part-way, and export directories left half-written: the earlier export at the
same path survives byte for byte (checked against its export.json sha256 records), and a
damaged directory is refused with an error naming the file."""
import os

import numpy as np
import paddle
import pytest
import soundfile as sf

from faultkit import HERE, kill_at_marker, tree
from helpers import small_module
from paddle_soundcls import cli
from paddle_soundcls.deploy import ExportError, Predictor, exportdir
from paddle_soundcls.export import export_onnx, export_static
from signals import noise, tone

CHILD = os.path.join(HERE, 'export_child.py')
SR = 32000


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Two checkpoints of one 3-class CNN6 (before and after more training: other weights) and a few clips."""
    base = tmp_path_factory.mktemp('export_faults')
    modules = {}
    for seed, name in ((1, 'old'), (2, 'new')):
        paddle.seed(seed)
        modules[name] = small_module(label_map=['bell', 'hum', 'rain'])
        modules[name].save(str(base / name))
    clips = []
    for i, wave in enumerate((tone(440, 1.5), noise(1.0, seed=3), tone(90, 0.7) + noise(0.7, amp=0.02))):
        clips.append(str(base / f'clip{i}.wav'))
        sf.write(clips[-1], wave, SR)
    return base, modules, clips


def scores(model_dir, clips, engine='onnxruntime'):
    results = Predictor(model_dir, engine=engine).predict(clips)
    return np.array([[r[label] for label in sorted(r)] for r in results])


def assert_complete(model_dir):
    """Every file export.json records is there with its recorded size and sha256."""
    meta = exportdir.read_export(model_dir)
    assert set(meta['files']) >= {exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS, exportdir.ONNX_FILE}
    for name in meta['files']:
        exportdir.require_file(str(model_dir), meta, name, verify=True)


@pytest.fixture
def good_export(setup, tmp_path):
    base, modules, clips = setup
    out = tmp_path / 'export'
    export_static(modules['old'], out, opset=13)
    return out, tree(out), scores(out, clips)


KILL_POINTS = [
    pytest.param('static', 'onnx-half', id='export-onnx-half-written'),
    pytest.param('static', 'swapped:export', id='export-swapped-old-not-removed'),
    pytest.param('onnx', 'onnx-half', id='reconvert-onnx-half-written'),
    pytest.param('static', 'jit-saved', id='export-static-model-written', marks=pytest.mark.slow),
    pytest.param('static', 'built:export', id='export-built-not-swapped', marks=pytest.mark.slow),
    pytest.param('static', 'write:export/export.json', id='export-before-export-json', marks=pytest.mark.slow),
    pytest.param('onnx', 'built:export', id='reconvert-built-not-swapped', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('mode, point', KILL_POINTS)
def test_killed_export_leaves_a_complete_export(setup, good_export, mode, point):
    base, modules, clips = setup
    out, before, before_scores = good_export
    args = [CHILD, 'static', str(base / 'new'), str(out)] if mode == 'static' else [CHILD, 'onnx', str(out)]
    kill_at_marker(args, {'at': point, 'action': 'kill'}, timeout=300)

    assert_complete(out)
    if point.startswith('swapped:') and mode == 'static':
        # The new export was already in place: complete, and it is the new model.
        assert tree(out) != before
        new_scores = np.array([[r[k] for k in sorted(r)] for r in modules['new'].predict(clips, engine='dygraph')])
        np.testing.assert_allclose(scores(out, clips), new_scores, atol=1e-4)
    else:
        assert tree(out) == before  # byte for byte
        np.testing.assert_array_equal(scores(out, clips), before_scores)

    # The next export goes through and clears what the killed process left beside it.
    if mode == 'static':
        export_static(modules['new'], out, opset=13)
    else:
        export_onnx(out)
    assert_complete(out)
    assert sorted(os.listdir(out.parent)) == ['export']


# ----- reading half-written or damaged export directories -----

def truncate(path, keep=0.5):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


DAMAGE = [
    pytest.param('model.onnx', 'half', 'onnxruntime', id='onnx-half'),
    pytest.param('model.onnx', 'empty', 'onnxruntime', id='onnx-empty'),
    pytest.param('inference.pdiparams', 'half', 'paddle', id='params-half'),
    pytest.param('inference.json', 'half', 'paddle', id='static-graph-half'),
    pytest.param('export.json', 'half', 'onnxruntime', id='export-json-half'),
    pytest.param('export.json', 'empty', 'onnxruntime', id='export-json-empty'),
    pytest.param('export.json', 'missing', 'onnxruntime', id='export-json-missing'),
]


@pytest.mark.parametrize('name, damage, engine', DAMAGE)
def test_damaged_export_is_refused_naming_the_file(good_export, name, damage, engine, setup):
    out, _, _ = good_export
    path = out / name
    if damage == 'missing':
        os.remove(path)
    else:
        truncate(path, 0.5 if damage == 'half' else 0)
    expected = str(out) if damage == 'missing' else str(path)
    with pytest.raises(ExportError) as info:
        Predictor(out, engine=engine)
    assert expected in str(info.value)
    assert 'export' in str(info.value).split(expected, 1)[1]  # says to export again


def test_cli_predict_on_a_damaged_export_is_one_line_naming_the_file(good_export, setup, capsys):
    out, _, _ = good_export
    _, _, clips = setup
    truncate(out / 'model.onnx')
    assert cli.main(['predict', str(out), clips[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / 'model.onnx') in err


def test_unverified_damaged_params_are_named(good_export):
    out, _, _ = good_export
    truncate(out / 'inference.pdiparams')
    with pytest.raises(ExportError, match=str(out / 'inference.pdiparams')):
        Predictor(out, engine='paddle', verify=False)


def test_exporting_again_repairs_a_half_deleted_export(good_export, setup):
    base, modules, clips = setup
    out, _, before_scores = good_export
    os.remove(out / 'model.onnx')
    with pytest.raises(ExportError, match='model.onnx is missing'):
        Predictor(out)
    export_static(modules['old'], out, opset=13)
    assert_complete(out)
    np.testing.assert_array_equal(scores(out, clips), before_scores)
