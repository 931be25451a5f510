"""Metrics against scikit-learn on fixed random predictions."""
import csv
import os

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score,
                             precision_score, recall_score, roc_auc_score, top_k_accuracy_score)

from paddle_soundcls.training.metrics import classification_metrics, multilabel_metrics, save_confusion_matrix


def single_label_case(num_classes=7, n=120, seed=0):
    """Scores that are right about half the time; class 6 is never predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    scores = rng.random((n, num_classes))
    scores[np.arange(n), labels] += rng.random(n) * 0.8
    scores[:, num_classes - 1] -= 2.0
    return labels, scores


def test_classification_metrics_match_sklearn():
    labels, scores = single_label_case()
    num_classes = scores.shape[1]
    predicted = scores.argmax(axis=1)
    assert num_classes - 1 not in predicted and num_classes - 1 in labels
    result = classification_metrics(labels, scores)
    every = list(range(num_classes))
    assert result['acc'] == pytest.approx(accuracy_score(labels, predicted))
    assert result['top5'] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=every))
    assert result['macro_f1'] == pytest.approx(f1_score(labels, predicted, average='macro'))
    np.testing.assert_allclose(result['precision'],
                               precision_score(labels, predicted, average=None, labels=every, zero_division=0))
    np.testing.assert_allclose(result['recall'],
                               recall_score(labels, predicted, average=None, labels=every, zero_division=0))
    np.testing.assert_allclose(result['f1'], f1_score(labels, predicted, average=None, labels=every, zero_division=0))
    np.testing.assert_array_equal(result['confusion'], confusion_matrix(labels, predicted, labels=every))
    assert result['precision'][num_classes - 1] == 0.0
    assert all(isinstance(v, int) for row in result['confusion'] for v in row)


def test_class_without_samples():
    # Class 4 has no samples but is sometimes predicted; class 5 neither occurs nor is predicted.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=60)
    scores = rng.random((60, 6))
    scores[:, 5] = -1.0
    predicted = scores.argmax(axis=1)
    assert 4 in predicted
    result = classification_metrics(labels, scores, k=3)
    np.testing.assert_allclose(result['recall'],
                               recall_score(labels, predicted, average=None, labels=range(6), zero_division=0))
    assert result['macro_f1'] == pytest.approx(f1_score(labels, predicted, average='macro', zero_division=0))
    assert result['top5'] == pytest.approx(top_k_accuracy_score(labels, scores, k=3, labels=range(6)))


def test_top_k_capped_at_class_count():
    labels, scores = single_label_case(num_classes=3, seed=5)
    assert classification_metrics(labels, scores)['top5'] == 1.0
    assert classification_metrics(labels, scores, k=2)['top5'] == pytest.approx(
        top_k_accuracy_score(labels, scores, k=2))


def test_classification_rejects_bad_labels():
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        classification_metrics([0, 3], np.zeros((2, 3)))
    with pytest.raises(ValueError, match='shape'):
        classification_metrics([0, 1, 2], np.zeros((2, 3)))


def multilabel_case(n=80, num_classes=6, seed=1):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, num_classes)) < 0.3).astype(int)
    scores = np.clip(0.35 * targets + rng.random((n, num_classes)) * 0.7, 0, 1)
    scores = np.round(scores, 1)   # many ties, to check they are handled like sklearn
    targets[:, 4] = 0              # no positives: left out of mAP and AUC
    targets[:, 5] = 1              # no negatives: in mAP, left out of AUC
    return targets, scores


def test_multilabel_metrics_match_sklearn():
    targets, scores = multilabel_case()
    result = multilabel_metrics(targets, scores)
    ap = [average_precision_score(targets[:, c], scores[:, c]) for c in [0, 1, 2, 3, 5]]
    auc = [roc_auc_score(targets[:, c], scores[:, c]) for c in [0, 1, 2, 3]]
    assert result['mAP'] == pytest.approx(np.mean(ap), rel=1e-12)
    assert result['AUC'] == pytest.approx(np.mean(auc), rel=1e-12)
    assert result['f1_micro'] == pytest.approx(f1_score(targets, (scores >= 0.5).astype(int), average='micro'))


def test_multilabel_continuous_scores_match_sklearn():
    rng = np.random.default_rng(7)
    targets = (rng.random((50, 4)) < 0.5).astype(int)
    scores = rng.random((50, 4))
    result = multilabel_metrics(targets, scores)
    assert result['mAP'] == pytest.approx(average_precision_score(targets, scores, average='macro'))
    assert result['AUC'] == pytest.approx(roc_auc_score(targets, scores, average='macro'))


def test_confusion_matrix_files(tmp_path):
    labels, scores = single_label_case()
    confusion = classification_metrics(labels, scores)['confusion']
    names = [f'class {i}' for i in range(len(confusion))]
    directory = tmp_path / 'best_model'
    csv_path, png_path = save_confusion_matrix(confusion, names, str(directory))
    assert os.path.basename(csv_path) == 'confusion_matrix.csv'
    assert os.path.basename(png_path) == 'confusion_matrix.png'
    with open(png_path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(csv_path, newline='', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == names
    assert [row[0] for row in rows[1:]] == names
    np.testing.assert_array_equal(np.array([row[1:] for row in rows[1:]], dtype=int), confusion)
    assert sorted(os.listdir(directory)) == ['confusion_matrix.csv', 'confusion_matrix.png']   # no temp files left


def test_confusion_matrix_png_for_50_classes(tmp_path):
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 5, size=(50, 50)) + np.diag(np.full(50, 30))
    _, png_path = save_confusion_matrix(confusion, [f'sound_{i}' for i in range(50)], str(tmp_path), name='cm')
    assert os.path.getsize(png_path) > 10000
    with pytest.raises(ValueError, match='class names'):
        save_confusion_matrix(confusion, ['a', 'b'], str(tmp_path))
