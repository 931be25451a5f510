"""Module: building by name, checkpoint layouts, predict() against an independent pipeline."""
import json
import os
import subprocess
import sys
from collections import OrderedDict

import librosa
import numpy as np
import paddle
import pytest
import soundfile as sf

from helpers import small_module
from paddle_soundcls import Module
from paddle_soundcls.audio import AudioError
from paddle_soundcls.checkpoints import schema
from paddle_soundcls.errors import CheckpointError, ExportError
from paddle_soundcls.models import registry
from signals import chirp, noise, tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_scores(module, wave, sr, task):
    """Scores from librosa features and the bare Layer: an independent path to compare predict() with."""
    wave = np.asarray(wave, 'float64')
    if sr != 32000:
        wave = librosa.resample(wave, orig_sr=sr, target_sr=32000, res_type='soxr_vhq')
    spec = librosa.feature.melspectrogram(y=wave, sr=32000, n_fft=1024, hop_length=320,
                                          n_mels=64, fmin=50, fmax=14000, htk=False, norm='slaney',
                                          center=True, pad_mode='reflect')
    feats = librosa.power_to_db(spec, ref=1.0, amin=1e-10, top_db=None).T[None].astype('float32')
    with paddle.no_grad():
        logits = module(paddle.to_tensor(feats)).numpy()[0].astype('float64')
    if task is None:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_classifier_predict_sorted_with_labels_and_matches_reference():
    labels = ['dog', 'rain', 'siren']
    model = small_module(label_map=labels)
    waves = [tone(440), noise(1.0), chirp(200, 6000)]
    results = model.predict(waves, sample_rate=32000, batch_size=2)
    assert len(results) == 3
    for wave, result in zip(waves, results):
        assert isinstance(result, OrderedDict)
        assert sorted(result) == sorted(labels)
        scores = list(result.values())
        assert scores == sorted(scores, reverse=True)
        ref = reference_scores(model, wave, 32000, 'sound-cls')
        for label, score in result.items():
            assert abs(score - ref[labels.index(label)]) < 1e-3
        assert abs(sum(scores) - 1) < 1e-5


def test_tagger_predict_uses_audioset_labels_and_sigmoid():
    model = small_module(task=None)
    wave = chirp(300, 9000, 2.0) + noise(2.0, amp=0.01)
    (result,) = model.predict([wave], sample_rate=32000)
    assert len(result) == 527
    assert set(result) == set(registry.audioset_labels())
    ref = reference_scores(model, wave, 32000, None)
    labels = registry.audioset_labels()
    best = next(iter(result))
    assert best == labels[int(np.argmax(ref))]
    assert max(abs(result[label] - ref[i]) for i, label in enumerate(labels)) < 1e-3
    assert list(model.predict([wave], sample_rate=32000, top_k=5)[0]) == list(result)[:5]


def test_files_use_their_own_rate_and_channels(tmp_path):
    model = small_module(num_class=3)
    wave = tone(1000, 1.5, sr=44100) + noise(1.5, sr=44100, amp=0.02)
    path = tmp_path / 'stereo.flac'
    sf.write(path, np.stack([wave, wave], axis=1), 44100)
    from_file = model.predict([str(path)], sample_rate=None)[0]
    from_array = model.predict([np.stack([wave, wave])], sample_rate=44100)[0]
    for label in from_file:
        assert abs(from_file[label] - from_array[label]) < 1e-4
    ref = reference_scores(model, wave, 44100, 'sound-cls')
    for label, score in from_file.items():
        assert abs(score - ref[int(label)]) < 2e-3


def test_short_clip_is_padded_not_an_error():
    model = small_module(num_class=2)
    (result,) = model.predict([tone(500, 0.05)], sample_rate=32000)
    assert len(result) == 2


def official_state(module):
    """The backbone's tensors under the official names (no prefix), as in panns_cnn6.pdparams."""
    return {k[len('backbone.'):]: v for k, v in module.state_dict().items() if k.startswith('backbone.')}


def test_official_checkpoint_round_trip(tmp_path):
    source = small_module(task=None)
    path = str(tmp_path / 'panns_cnn6.pdparams')
    paddle.save(official_state(source), path)
    loaded = Module('panns_cnn6', task=None, load_checkpoint=path)
    wave = noise(1.0, seed=7) + tone(700)
    a = source.predict([wave], sample_rate=32000)[0]
    b = loaded.predict([wave], sample_rate=32000)[0]
    assert list(a) == list(b)
    np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-6)
    # The same file starts a classifier: backbone loaded, head new, no AudioSet head.
    clf = Module('panns_cnn6', task='sound-cls', num_class=4, load_checkpoint=path)
    assert not any('fc_audioset' in key for key in clf.state_dict())
    for key, value in official_state(source).items():
        if not key.startswith('fc_audioset.'):
            np.testing.assert_array_equal(clf.backbone.state_dict()[key].numpy(), value.numpy())


@pytest.mark.parametrize('layout', ['ours', 'paddlespeech', 'paddlehub'])
def test_fine_tuned_layouts_load(tmp_path, layout):
    source = small_module(num_class=5)
    state = source.state_dict()
    if layout == 'paddlehub':
        state = {('cnn6.' + k[len('backbone.'):] if k.startswith('backbone.') else k): v for k, v in state.items()}
    path = str(tmp_path / 'model.pdparams')
    paddle.save(state, path)
    loaded = Module('panns_cnn6', num_class=5, load_checkpoint=path)
    wave = chirp(100, 3000)
    assert source.predict([wave], 32000)[0] == pytest.approx(loaded.predict([wave], 32000)[0])


def test_saved_module_restores_labels(tmp_path):
    source = small_module(label_map={0: 'engine', 1: 'bird'})
    source.save(str(tmp_path / 'best_model'))
    loaded = Module('panns_cnn6', load_checkpoint=str(tmp_path / 'best_model'))
    assert loaded.labels == ['engine', 'bird']
    wave = tone(2000)
    got, expected = loaded.predict([wave], 32000)[0], source.predict([wave], 32000)[0]
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-6)
    with pytest.raises(CheckpointError, match='panns_cnn6'):
        Module('panns_cnn10', load_checkpoint=str(tmp_path / 'best_model'))
    # PaddleHub-style num_class is accepted; other class names or counts are not.
    assert Module('panns_cnn6', num_class=2, load_checkpoint=str(tmp_path / 'best_model')).labels == ['engine', 'bird']
    with pytest.raises(CheckpointError, match='differs from the labels saved'):
        Module('panns_cnn6', label_map=['car', 'bird'], load_checkpoint=str(tmp_path / 'best_model'))
    with pytest.raises(CheckpointError, match='has 2 classes, but 3 were asked for'):
        Module('panns_cnn6', num_class=3, load_checkpoint=str(tmp_path / 'best_model'))


def test_checkpoint_for_another_model_is_refused(tmp_path):
    other = Module('panns_cnn10', task=None, pretrained=False)
    path = str(tmp_path / 'cnn10.pdparams')
    paddle.save(official_state(other), path)
    with pytest.raises(CheckpointError, match=r'cnn10.pdparams.*does not fit panns_cnn6'):
        Module('panns_cnn6', task=None, load_checkpoint=path)
    small = small_module(num_class=3)
    paddle.save(small.state_dict(), str(tmp_path / 'three.pdparams'))
    with pytest.raises(CheckpointError, match=r'fc.weight: checkpoint \[512, 3\] vs model \[512, 7\]'):
        Module('panns_cnn6', num_class=7, load_checkpoint=str(tmp_path / 'three.pdparams'))


def test_classifier_checkpoint_cannot_tag(tmp_path):
    state = {k: v for k, v in small_module(num_class=3).state_dict().items() if 'fc_audioset' not in k}
    paddle.save(state, str(tmp_path / 'clf.pdparams'))
    with pytest.raises(CheckpointError, match='fc_audioset'):
        Module('panns_cnn6', task=None, load_checkpoint=str(tmp_path / 'clf.pdparams'))


def test_unknown_keys_and_damaged_files(tmp_path):
    paddle.save({'encoder.weight': paddle.zeros([2])}, str(tmp_path / 'odd.pdparams'))
    with pytest.raises(CheckpointError, match='encoder.weight'):
        Module('panns_cnn6', task=None, load_checkpoint=str(tmp_path / 'odd.pdparams'))
    (tmp_path / 'broken.pdparams').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='broken.pdparams'):
        Module('panns_cnn6', task=None, load_checkpoint=str(tmp_path / 'broken.pdparams'))
    with pytest.raises(CheckpointError, match='missing.pdparams'):
        Module('panns_cnn6', task=None, load_checkpoint=str(tmp_path / 'missing.pdparams'))


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match='registered models: .*panns_cnn10, panns_cnn14, panns_cnn6'):
        Module('resnet50', pretrained=False)
    with pytest.raises(ValueError, match='num_class=3 disagrees with label_map'):
        Module('panns_cnn6', num_class=3, label_map=['a', 'b'], pretrained=False)
    with pytest.raises(ValueError, match='task'):
        Module('panns_cnn6', task='detection', pretrained=False)
    with pytest.raises(ValueError, match='num_class or label_map'):
        Module('panns_cnn6', task='sound-cls', pretrained=False)


def test_bad_audio_inputs(tmp_path):
    model = small_module(num_class=2)
    text = tmp_path / 'notes.wav'
    text.write_text('this is not audio')
    with pytest.raises(AudioError, match='notes.wav'):
        model.predict([str(text)])
    with pytest.raises(AudioError, match='not found'):
        model.predict([str(tmp_path / 'nowhere.wav')])
    with pytest.raises(AudioError, match=r'data\[0\] has no samples'):
        model.predict([np.zeros(0, 'float32')], sample_rate=32000)
    bad = tone(440)
    bad[100] = np.nan
    with pytest.raises(AudioError, match=r'data\[1\] contains NaN'):
        model.predict([tone(440), bad], sample_rate=32000)
    with pytest.raises(AudioError, match='sample_rate must be a positive int'):
        model.predict([tone(440)], sample_rate='32k')
    with pytest.raises(AudioError, match='sample_rate is required'):
        model.predict([tone(440)])
    with pytest.raises(ValueError, match='feat_type'):
        model.predict([tone(440)], sample_rate=32000, feat_type='mfcc')


def test_use_gpu_on_cpu_build_is_a_clear_error():
    if paddle.is_compiled_with_cuda():
        pytest.skip('this Paddle build has CUDA')
    model = small_module(num_class=2)
    with pytest.raises(RuntimeError, match='no CUDA support'):
        model.predict([tone(440)], sample_rate=32000, use_gpu=True)


def test_pretrained_file_in_cache_is_used_without_network(tmp_path):
    spec = registry.get_spec('panns_cnn6')
    source = small_module(task=None)
    path = os.path.join(os.environ['PADDLE_SOUNDCLS_HOME'], spec.weights.filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    paddle.save(official_state(source), path)
    tagger = Module('panns_cnn6', task=None)  # the URL is unreachable here: only the cache can serve it
    wave = tone(880)
    assert tagger.predict([wave], 32000)[0] == pytest.approx(source.predict([wave], 32000)[0])


# ----- what checkpoints and exports record: one schema, its migrations, the deprecated import path -----

def test_meta_json_and_export_json_record_the_same_settings():
    for module in (small_module(label_map=['engine', 'bird'], clip_seconds=2.0), small_module(task=None)):
        meta, settings = module.meta(), module.export_settings()
        assert meta['format'] == schema.META_FORMAT
        assert set(settings) - set(meta) == {'min_seconds', 'frame_geometry', 'embedding_size'}
        assert set(meta) - set(settings) == {'format'}
        for key in set(meta) & set(settings):
            if key == 'labels' and module.task == 'tagging':   # meta.json leaves the AudioSet labels out
                assert meta[key] is None and settings[key] == registry.audioset_labels()
            else:
                assert meta[key] == settings[key], key
        # CNN6: 2**4 frames, centred; each sees 54 front-end frames on either side
        assert settings['frame_geometry'] == {'stride': 16, 'offset': 7.5, 'context': 54}
        assert settings['min_seconds'] == registry.get_spec('panns_cnn6').min_seconds
        assert settings['embedding_size'] == 512   # CNN6's fc1


def test_checkpoints_of_the_first_version_still_load(tmp_path):
    """meta.json of the first version: the tagger's task null, and none of multi_label, clip_seconds,
    events, pooling; reading fills them as those checkpoints were used."""
    source = small_module(task=None)
    source.save(str(tmp_path / 'old'))
    meta_path = tmp_path / 'old' / schema.META_FILE
    old = {k: v for k, v in json.loads(meta_path.read_text()).items()
           if k not in ('multi_label', 'clip_seconds', 'events', 'pooling')}
    meta_path.write_text(json.dumps(dict(old, task=None)))
    meta = schema.read_meta(str(tmp_path / 'old'))
    assert (meta['task'], meta['multi_label'], meta['clip_seconds'], meta['events'], meta['pooling']) == \
        ('tagging', True, None, None, 'embedding')
    loaded = Module('panns_cnn6', load_checkpoint=str(tmp_path / 'old'))
    assert loaded.task == 'tagging' and loaded.multi_label and loaded.clip_seconds is None
    meta_path.write_text(json.dumps(dict(old, task='regression')))
    with pytest.raises(CheckpointError, match=r"meta\.json: unknown task 'regression'"):
        schema.read_meta(str(tmp_path / 'old'))


def test_exports_of_earlier_versions_are_read_with_their_defaults(tmp_path):
    path = tmp_path / 'export.json'
    first = {'format': schema.EXPORT_FORMAT, 'model': 'panns_cnn6', 'task': 'sound-cls', 'labels': ['a', 'b'],
             'frontend': small_module(num_class=2).frontend_cfg.to_dict(), 'min_seconds': 1.0, 'files': {},
             'input': {}, 'output': {'activation': 'sigmoid'}}
    path.write_text(json.dumps(first))
    meta = schema.read_export_json(str(path), str(tmp_path))
    assert (meta['multi_label'], meta['clip_seconds'], meta['events'], meta['pooling'], meta['frame_geometry']) == \
        (True, None, None, 'embedding', None)
    path.write_text(json.dumps({k: v for k, v in first.items() if k != 'files'}))
    with pytest.raises(ExportError, match=r"export\.json lacks \['files'\]\. Export the model again"):
        schema.read_export_json(str(path), str(tmp_path))


def test_hub_is_a_deprecated_name_of_the_module_module():
    code = ('import warnings\nwarnings.simplefilter("error", DeprecationWarning)\n'
            'from paddle_soundcls import Module, load_module\nimport paddle_soundcls.module as m\n'
            'import paddle_soundcls.ensemble as e\n'
            # the package's load_module also opens saved ensembles; module's opens checkpoints only
            'assert Module is m.Module and load_module is e.load_module\n'
            'try:\n    import paddle_soundcls.hub\nexcept DeprecationWarning as exc:\n    print("warned:", exc)\n'
            'warnings.simplefilter("ignore", DeprecationWarning)\nimport paddle_soundcls.hub as hub\n'
            'assert hub is m and hub.Module is m.Module\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'warned: paddle_soundcls.hub is deprecated' in proc.stdout
