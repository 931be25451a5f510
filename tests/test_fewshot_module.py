"""centroid_classifier: a few labelled clips -> a Module whose top label is the nearest class centroid of
the backbone's embeddings (cosine), exported and run like any other classifier."""
import numpy as np
import pytest
import soundfile as sf

from helpers import small_module
from paddle_soundcls.deploy import Predictor
from paddle_soundcls.errors import ArgumentError
from paddle_soundcls.export import export_static
from paddle_soundcls.fewshot import centroid_classifier
from signals import noise, tone

SR = 32000


@pytest.fixture(scope='module')
def base():
    return small_module('panns_cnn6', task='tagging')


def sound(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == 'low':
        wave = tone(220 + 20 * rng.random(), 1.0, SR)
    elif kind == 'high':
        wave = tone(4000 + 300 * rng.random(), 1.0, SR)
    else:
        wave = noise(1.0, SR, seed=seed)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('few')
    for kind in ('high', 'low', 'noisy'):
        (root / kind).mkdir()
        for i in range(3):
            sf.write(root / kind / f'{i}.wav', sound(kind, i), SR)
    return root


def nearest_centroid(train, train_labels, queries):
    """The reference: cosine similarity, about the centre of the training embeddings, to the mean
    unit vector of each class, written out."""
    classes = sorted(set(train_labels))
    centre = train.mean(axis=0)
    unit = (train - centre) / np.linalg.norm(train - centre, axis=1, keepdims=True)
    centroids = np.stack([unit[[label == c for label in train_labels]].mean(axis=0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    offsets = queries - centre
    similarity = (offsets / np.linalg.norm(offsets, axis=1, keepdims=True)) @ centroids.T
    return [classes[j] for j in similarity.argmax(axis=1)], similarity, centre


def test_the_top_label_is_the_nearest_centroid_in_the_module_and_its_export(base, folder, tmp_path):
    classifier = centroid_classifier(base, folder)
    assert classifier.labels == ['high', 'low', 'noisy'] and classifier.task == 'sound-cls'
    train_paths = sorted(str(p) for p in folder.glob('*/*.wav'))
    train = np.concatenate([r['embeddings'] for r in base.embed(train_paths)])
    train_labels = [p.split('/')[-2] for p in train_paths]
    queries = [sound(kind, seed) for kind in ('high', 'low', 'noisy') for seed in (10, 11)]
    query_embeddings = np.concatenate([r['embeddings'] for r in base.embed(queries, sample_rate=SR)])
    expected, similarity, centre = nearest_centroid(train, train_labels, query_embeddings)
    got = [next(iter(r)) for r in classifier.predict(queries, sample_rate=SR)]
    assert got == expected
    # The backbone is the base's: the classifier's embeddings are the base's.
    np.testing.assert_allclose(classifier.embed(queries[0], sample_rate=SR)[0]['embeddings'], query_embeddings[:1],
                               rtol=1e-5, atol=1e-5)
    # Scores: a softmax over scale * |e - centre| / mean |e_train - centre| * cos(e - centre, centroid).
    distances = np.linalg.norm(query_embeddings - centre, axis=1, keepdims=True)
    logits = 10.0 * distances / np.linalg.norm(train - centre, axis=1).mean() * similarity
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    scores = [[r[label] for label in classifier.labels] for r in classifier.predict(queries, sample_rate=SR)]
    np.testing.assert_allclose(scores, softmax, atol=1e-4)

    export_static(classifier, tmp_path / 'export', opset=13)
    exported = Predictor(tmp_path / 'export').predict(queries, sample_rate=SR)
    assert [next(iter(r)) for r in exported] == expected
    classifier.save(tmp_path / 'ckpt')   # a checkpoint like any other: its labels come back with it
    from paddle_soundcls import load_module
    assert load_module(tmp_path / 'ckpt').labels == classifier.labels


def test_clips_and_labels_given_as_lists_and_refusals(base, folder):
    paths = sorted(str(p) for p in folder.glob('*/*.wav'))
    labels = [p.split('/')[-2] for p in paths]
    from_lists = centroid_classifier(base, paths, labels)
    from_folder = centroid_classifier(base, folder)
    np.testing.assert_allclose(from_lists.fc.weight.numpy(), from_folder.fc.weight.numpy(), rtol=1e-6)
    with pytest.raises(ArgumentError, match='one class name per clip'):
        centroid_classifier(base, paths, labels[:-1])
    with pytest.raises(ArgumentError, match='at least 2'):
        centroid_classifier(base, paths[:3], ['high'] * 3)
    with pytest.raises(ArgumentError, match='scale'):
        centroid_classifier(base, folder, scale=0)


def test_cli_fewshot_writes_a_checkpoint_of_the_same_classifier(base, folder, tmp_path, capsys):
    from paddle_soundcls import load_module
    from paddle_soundcls.cli import main
    base.save(tmp_path / 'base')
    assert main(['fewshot', str(tmp_path / 'base'), str(folder), '--output', str(tmp_path / 'few')]) == 0
    saved = load_module(tmp_path / 'few')
    np.testing.assert_allclose(saved.fc.weight.numpy(), centroid_classifier(base, folder).fc.weight.numpy(),
                               rtol=1e-6)
    assert main(['fewshot', 'no_such_model', str(folder), '--output', str(tmp_path / 'x')]) == 2
    assert 'neither a checkpoint directory nor a registered model name' in capsys.readouterr().err
