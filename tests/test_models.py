"""Every registered model through the backbone contract, generated from list_models(): forward,
both tasks, checkpoint round trip, static + ONNX export parity, the Paddle-free runtime.
Plus the PANNs family's official parameter names and shapes."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from helpers import BLOCK_PADDLE, WEIGHTS_ONLY_TWINS, calm
from paddle_soundcls import Module, list_models
from paddle_soundcls.errors import NoHeadError
from paddle_soundcls.export import export_static
from paddle_soundcls.models import registry
from paddle_soundcls.models.base import Backbone
from paddle_soundcls.models.panns import ARCHITECTURES
from signals import chirp, noise, tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Models whose export takes more than a few seconds on 2 cores: their export tests are slow-marked.
LARGE = 20_000_000
SIBLING = 2_000_000


def _params(name):
    return registry.get_spec(name).published.get('params') or 0


def export_cases():
    """Every model; by default the smallest of each family's network module and every other model
    below SIBLING (siblings above it are the same layers, wider or deeper: they run with -m slow,
    as do models above LARGE)."""
    smallest = {}
    for name in list_models():
        spec = registry.get_spec(name)
        key = (spec.family, getattr(spec.build, 'func', spec.build).__module__)
        size = _params(name) or float('inf')   # unpublished: after any published size
        if name not in WEIGHTS_ONLY_TWINS and (key not in smallest or size < smallest[key][0]):
            smallest[key] = (size, name)
    representatives = {name for _, name in smallest.values()}
    return [pytest.param(name, marks=pytest.mark.slow)
            if _params(name) > LARGE or (name not in representatives and _params(name) > SIBLING)
            else name for name in list_models()]


def random_module(name, task='sound-cls'):
    labels = ['a', 'b', 'c'] if task == 'sound-cls' else None
    module = Module(name, task=task, label_map=labels, pretrained=False, seed=0)
    return calm(module) if hasattr(module.backbone, 'bn0') else module


def clips(spec, seconds=1.5):
    sr = spec.sample_rate
    return [tone(440, seconds, sr=sr), noise(seconds, sr=sr, amp=0.2), chirp(300, 3000, seconds, sr=sr)]


def shape_cases():
    """(seconds, batch, name) for every model; the large models' 10-s batches of 3 (up to 47 s
    each on 2 cores) are slow-marked, their 10-s clip and 1-s batch of 3 stay."""
    return [pytest.param(seconds, batch, name, marks=pytest.mark.slow)
            if seconds == 10 and batch == 3 and _params(name) > LARGE else (seconds, batch, name)
            for seconds in (1, 10) for batch in (1, 3) for name in list_models()]


@pytest.mark.parametrize('seconds, batch, name', shape_cases())
def test_forward_shapes(name, batch, seconds):
    spec = registry.get_spec(name)
    model = spec.build(audioset_head=spec.audioset_head is not None)
    model.eval()
    frames = spec.frontend.num_frames(seconds * spec.sample_rate)
    x = paddle.to_tensor(np.random.default_rng(0).normal(-1, 1, (batch, frames, spec.frontend.n_mels))
                         .astype('float32'))
    with paddle.no_grad():
        emb = model.forward_features(x)
        assert list(emb.shape) == [batch, spec.emb_size]
        if spec.audioset_head is not None:
            logits = model.forward_head(emb)
            assert list(logits.shape) == [batch, 527]
            assert np.all(np.isfinite(logits.numpy()))
    if batch == 3:  # each clip is processed independently in eval mode
        with paddle.no_grad():
            single = model.forward_features(x[1:2])
        np.testing.assert_allclose(single.numpy()[0], emb.numpy()[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', export_cases())
def test_both_tasks_and_checkpoint_round_trip(tmp_path, name):
    spec = registry.get_spec(name)
    waves = clips(spec)
    tasks = ['sound-cls'] + (['tagging'] if spec.audioset_head is not None else [])
    for task in tasks:
        source = random_module(name, task)
        expected = source.predict(waves, spec.sample_rate)
        assert len(expected[0]) == (3 if task == 'sound-cls' else 527)
        source.save(str(tmp_path / task))
        loaded = Module(name, load_checkpoint=str(tmp_path / task))
        assert loaded.task == task and loaded.labels == source.labels
        for a, b in zip(expected, loaded.predict(waves, spec.sample_rate)):
            assert list(a) == list(b)
            np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-6)
    if spec.audioset_head is None:
        with pytest.raises(ValueError, match='no AudioSet tagging head'):
            Module(name, task='tagging', pretrained=False)


@pytest.mark.parametrize('name', export_cases())
def test_export_parity_and_paddle_free_runtime(tmp_path, name):
    spec = registry.get_spec(name)
    module = random_module(name)
    waves = clips(spec)
    paths = []
    for i, wave in enumerate(waves):
        import soundfile as sf
        path = tmp_path / f'clip{i}.wav'
        sf.write(path, wave, spec.sample_rate)
        paths.append(str(path))
    export_static(module, tmp_path / 'export', opset=13)
    expected = module.predict(paths, engine='dygraph')
    code = BLOCK_PADDLE + textwrap.dedent(f'''
        from paddle_soundcls.deploy import Predictor
        out = {{}}
        for engine in ('onnxruntime',):
            results = Predictor({str(tmp_path / 'export')!r}, engine=engine).predict({paths!r})
            out[engine] = [dict(r) for r in results]
        assert 'paddle' not in sys.modules
        print(json.dumps(out))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    got = json.loads(proc.stdout.strip().splitlines()[-1])['onnxruntime']
    for a, b in zip(expected, got):
        assert max(a, key=a.get) == max(b, key=b.get)
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-4)
    from paddle_soundcls.deploy import Predictor
    static = Predictor(tmp_path / 'export', engine='paddle').predict(paths)
    for a, b in zip(expected, static):
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], atol=1e-4)


@pytest.mark.parametrize('name', export_cases())
def test_backbone_contract_is_the_same_in_every_family(name):
    """forward is forward_head(forward_features) (logits) wherever there is an AudioSet head, and a
    backbone without one refuses forward_head and forward with the one error type (before: an
    AttributeError for PANNs, a RuntimeError elsewhere; ResNet's forward returned embeddings)."""
    spec = registry.get_spec(name)
    x = paddle.to_tensor(np.random.default_rng(1).normal(-1, 1, (2, spec.frontend.num_frames(spec.sample_rate),
                                                                 spec.frontend.n_mels)).astype('float32'))
    headless = spec.build(audioset_head=False)
    assert isinstance(headless, Backbone) and headless.emb_size == spec.emb_size and not headless.has_audioset_head
    headless.eval()
    with paddle.no_grad():
        embedding = headless.forward_features(x)
        assert list(headless.forward_frames(x).shape)[::2] == [2, spec.emb_size]
        for call in (lambda: headless.forward_head(embedding), lambda: headless(x)):
            with pytest.raises(NoHeadError, match="no AudioSet head.*task='sound-cls'"):
                call()
    if spec.audioset_head is not None:
        tagger = spec.build(audioset_head=True)
        tagger.eval()
        with paddle.no_grad():
            np.testing.assert_allclose(tagger(x).numpy(), tagger.forward_head(tagger.forward_features(x)).numpy(),
                                       rtol=1e-5, atol=1e-6)
        assert any(k.startswith(spec.audioset_head + '.') for k in tagger.state_dict())


@pytest.mark.parametrize('name', list_models())
def test_registry_entries_state_one_consistent_description(name):
    """Every model's published figures use the one vocabulary (macs_10s, not macs_1s), and every
    pretrained entry states what the builder needs: its format, size or checksum, front end, frame
    geometry, labels, classifier and licence, agreeing with the network it is registered for."""
    spec = registry.get_spec(name)
    assert set(spec.published) <= set(registry.PUBLISHED_KEYS), spec.published
    w = spec.weights
    if w is None:
        return
    assert w.file_format in registry.FILE_FORMATS and w.license
    assert w.size_range is not None or w.sha256 or w.md5
    assert w.frontend == spec.frontend and w.frame_geometry == spec.frame_geometry
    assert w.labels in registry.LABEL_SETS and w.classifier
    # The AudioSet classifier of a file is the backbone's AudioSet head; any other is dropped.
    assert (w.labels == 'audioset') == (w.classifier == spec.audioset_head)


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ValueError, match='panns_cnn10, panns_cnn14, panns_cnn6'):
        registry.get_spec('panns_cnn99')
    with pytest.raises(ValueError, match='panns_cnn14'):
        Module('no_such_model', num_class=2, pretrained=False)


def test_audioset_labels_shipped():
    labels = registry.audioset_labels()
    assert len(labels) == 527
    assert labels[0] == 'Speech' and labels[1] == 'Male speech, man speaking' and labels[-1] == 'Field recording'


# ----- the PANNs family: the official checkpoints' tensor names and shapes -----

def official_names(num_blocks, num_convs):
    """The tensor names of the official Paddle PANNs checkpoints (PaddleSpeech / PaddleHub)."""
    bn = ['weight', 'bias', '_mean', '_variance']
    names = [f'bn0.{p}' for p in bn]
    for i in range(1, num_blocks + 1):
        for j in range(1, num_convs + 1):
            names.append(f'conv_block{i}.conv{j}.weight')
            names += [f'conv_block{i}.bn{j}.{p}' for p in bn]
    return set(names + ['fc1.weight', 'fc1.bias', 'fc_audioset.weight', 'fc_audioset.bias'])


EXPECTED = {
    # arch: (blocks, convs per block, channels, kernel, embedding size)
    'cnn14': (6, 2, [64, 128, 256, 512, 1024, 2048], 3, 2048),
    'cnn10': (4, 2, [64, 128, 256, 512], 3, 512),
    'cnn6': (4, 1, [64, 128, 256, 512], 5, 512),
}


@pytest.mark.parametrize('arch', sorted(EXPECTED))
def test_official_names_and_shapes(arch):
    blocks, convs, channels, kernel, emb = EXPECTED[arch]
    with paddle.LazyGuard():
        state = ARCHITECTURES[arch]().state_dict()
    assert set(state) == official_names(blocks, convs)
    assert list(state['bn0._mean'].shape) == [64]
    assert list(state['conv_block1.conv1.weight'].shape) == [64, 1, kernel, kernel]
    last = f'conv_block{blocks}.conv{convs}.weight'
    assert list(state[last].shape) == [channels[-1], channels[-1] if convs == 2 else channels[-2], kernel, kernel]
    # Paddle Linear weights are [in, out].
    assert list(state['fc1.weight'].shape) == [channels[-1], emb]
    assert list(state['fc_audioset.weight'].shape) == [emb, 527]
    spec = registry.get_spec(f'panns_{arch}')
    assert spec.published['params'] == sum(int(np.prod(v.shape)) for v in state.values())
    assert spec.emb_size == emb


def test_the_weights_only_twins_the_generated_tests_leave_to_slow_runs_are_their_twins_network():
    """helpers.WEIGHTS_ONLY_TWINS: a model whose generated tests are slow must be its twin's network
    (family, front end, frames, embedding) with other weights, or those tests would hide a path."""
    from helpers import WEIGHTS_ONLY_TWINS
    for name, twin in WEIGHTS_ONLY_TWINS.items():
        a, b = registry.get_spec(name), registry.get_spec(twin)
        assert (a.family, a.frontend, a.frame_geometry, a.emb_size) == (b.family, b.frontend, b.frame_geometry,
                                                                        b.emb_size), name
        assert a.weights is not None and a.weights.url != b.weights.url, name
