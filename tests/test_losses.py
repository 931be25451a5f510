"""Losses against numpy formulas written out here, on fixed small inputs."""
import numpy as np
import paddle
import pytest

from paddle_soundcls.training.losses import (BCEWithLogitsLoss, CrossEntropyLoss, FocalLoss, build_loss,
                                             class_balanced_weights)

RNG = np.random.default_rng(1234)
LOGITS = RNG.normal(scale=2.0, size=(6, 4)).astype('float32')
LABELS = np.array([0, 3, 1, 1, 2, 0])
WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0], dtype='float32')
SOFT = RNG.dirichlet(np.ones(4), size=6).astype('float32')


def log_softmax(x):
    x = x.astype(np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def onehot(labels, num_classes=4):
    return np.eye(num_classes)[labels]


def run(loss, logits, target):
    return float(loss(paddle.to_tensor(logits), paddle.to_tensor(target)))


def test_ce_matches_formula():
    expected = -np.mean(log_softmax(LOGITS)[np.arange(6), LABELS])
    assert run(CrossEntropyLoss(), LOGITS, LABELS) == pytest.approx(expected, rel=1e-5)
    # Agrees with Paddle's own cross-entropy too.
    reference = paddle.nn.functional.cross_entropy(paddle.to_tensor(LOGITS), paddle.to_tensor(LABELS))
    assert run(CrossEntropyLoss(), LOGITS, LABELS) == pytest.approx(float(reference), rel=1e-5)


def test_ce_label_smoothing_matches_formula():
    eps = 0.1
    target = (1 - eps) * onehot(LABELS) + eps / 4
    expected = -np.mean((target * log_softmax(LOGITS)).sum(axis=1))
    assert run(CrossEntropyLoss(label_smoothing=eps), LOGITS, LABELS) == pytest.approx(expected, rel=1e-5)


def test_ce_class_weights_normalised_by_sample_weights():
    log_p = log_softmax(LOGITS)
    w = WEIGHTS[LABELS]
    expected = np.sum(w * -log_p[np.arange(6), LABELS]) / np.sum(w)
    assert run(CrossEntropyLoss(class_weights=WEIGHTS), LOGITS, LABELS) == pytest.approx(expected, rel=1e-5)


def test_ce_class_weights_with_label_smoothing():
    # PyTorch's definition: (1-eps) w_y (-log p_y) + eps/C sum_c w_c (-log p_c), over sum_i w_{y_i}.
    eps = 0.2
    log_p = log_softmax(LOGITS)
    per_sample = ((1 - eps) * WEIGHTS[LABELS] * -log_p[np.arange(6), LABELS]
                  + eps / 4 * (WEIGHTS * -log_p).sum(axis=1))
    expected = per_sample.sum() / WEIGHTS[LABELS].sum()
    loss = CrossEntropyLoss(label_smoothing=eps, class_weights=WEIGHTS)
    assert run(loss, LOGITS, LABELS) == pytest.approx(expected, rel=1e-5)


def test_ce_soft_targets():
    log_p = log_softmax(LOGITS)
    expected = -np.mean((SOFT * log_p).sum(axis=1))
    assert run(CrossEntropyLoss(), LOGITS, SOFT) == pytest.approx(expected, rel=1e-5)
    weighted = np.sum((WEIGHTS * SOFT * -log_p).sum(axis=1)) / np.sum((WEIGHTS * SOFT).sum(axis=1))
    assert run(CrossEntropyLoss(class_weights=WEIGHTS), LOGITS, SOFT) == pytest.approx(weighted, rel=1e-5)
    # A one-hot float target gives the same loss as the class index.
    assert run(CrossEntropyLoss(0.1, WEIGHTS), LOGITS, onehot(LABELS).astype('float32')) == pytest.approx(
        run(CrossEntropyLoss(0.1, WEIGHTS), LOGITS, LABELS), rel=1e-6)


def test_ce_accepts_column_labels_and_rejects_bad_ones():
    assert run(CrossEntropyLoss(), LOGITS, LABELS[:, None]) == pytest.approx(run(CrossEntropyLoss(), LOGITS, LABELS))
    with pytest.raises(ValueError, match='class indices'):
        run(CrossEntropyLoss(), LOGITS, np.array([0, 1, 2, 3, 4, 0]))
    with pytest.raises(ValueError, match='4 classes'):
        run(CrossEntropyLoss(class_weights=[1.0, 2.0]), LOGITS, LABELS)
    with pytest.raises(ValueError, match='label_smoothing'):
        CrossEntropyLoss(label_smoothing=1.0)


def test_focal_matches_formula():
    gamma = 2.0
    log_p = log_softmax(LOGITS)
    p = np.exp(log_p)
    target = onehot(LABELS)
    expected = np.mean(-(WEIGHTS * target * (1 - p) ** gamma * log_p).sum(axis=1))
    assert run(FocalLoss(gamma, WEIGHTS), LOGITS, LABELS) == pytest.approx(expected, rel=1e-5)
    expected_soft = np.mean(-(SOFT * (1 - p) ** 1.5 * log_p).sum(axis=1))
    assert run(FocalLoss(1.5), LOGITS, SOFT) == pytest.approx(expected_soft, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy():
    assert run(FocalLoss(gamma=0.0), LOGITS, LABELS) == pytest.approx(run(CrossEntropyLoss(), LOGITS, LABELS),
                                                                      rel=1e-6)
    assert run(FocalLoss(gamma=0.0), LOGITS, SOFT) == pytest.approx(run(CrossEntropyLoss(), LOGITS, SOFT), rel=1e-6)


def test_bce_matches_formula():
    targets = (RNG.random((6, 4)) < 0.4).astype('float32')
    x = LOGITS.astype(np.float64)
    sig = 1 / (1 + np.exp(-x))
    terms = -(targets * np.log(sig) + (1 - targets) * np.log(1 - sig))
    assert run(BCEWithLogitsLoss(), LOGITS, targets) == pytest.approx(terms.mean(), rel=1e-5)
    assert run(BCEWithLogitsLoss(WEIGHTS), LOGITS, targets) == pytest.approx((WEIGHTS * terms).mean(), rel=1e-5)


def test_bce_is_stable_for_large_logits():
    logits = np.array([[100.0, -100.0]], dtype='float32')
    target = np.array([[0.0, 1.0]], dtype='float32')
    assert run(BCEWithLogitsLoss(), logits, target) == pytest.approx(100.0, rel=1e-5)


def test_class_balanced_weights_formula():
    counts = np.array([10, 100, 1000, 3])
    beta = 0.99
    raw = (1 - beta) / (1 - beta ** counts.astype(np.float64))
    expected = raw / raw.sum() * len(counts)
    weights = class_balanced_weights(counts, beta)
    assert weights.dtype == np.float32 and weights.shape == (4,)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights.sum() == pytest.approx(4.0, rel=1e-6)
    assert weights[3] > weights[0] > weights[1] > weights[2]   # rarer classes weigh more
    np.testing.assert_allclose(class_balanced_weights(counts, 0.0), np.ones(4))


def test_class_balanced_weights_zero_count_names_class():
    with pytest.raises(ValueError, match='class 2'):
        class_balanced_weights([5, 3, 0, 1])
    with pytest.raises(ValueError, match='beta'):
        class_balanced_weights([5, 3], beta=1.0)


def test_build_loss():
    counts = [10, 20, 5, 40]
    weights = class_balanced_weights(counts, 0.999)
    cases = {
        'ce': CrossEntropyLoss(0.1),
        'class_balanced': CrossEntropyLoss(0.1, weights),
    }
    for name, reference in cases.items():
        loss = build_loss(name, class_counts=counts, label_smoothing=0.1)
        assert run(loss, LOGITS, LABELS) == pytest.approx(run(reference, LOGITS, LABELS), rel=1e-6)
    loss = build_loss('class_balanced_focal', class_counts=counts, gamma=1.0)
    assert run(loss, LOGITS, LABELS) == pytest.approx(run(FocalLoss(1.0, weights), LOGITS, LABELS), rel=1e-6)
    assert isinstance(build_loss('focal'), FocalLoss)
    assert isinstance(build_loss('bce'), BCEWithLogitsLoss)
    with pytest.raises(ValueError, match="'ce', 'class_balanced'|ce, class_balanced"):
        build_loss('hinge')
    with pytest.raises(ValueError, match='class_counts'):
        build_loss('class_balanced')
    with pytest.raises(ValueError, match='label_smoothing'):
        build_loss('focal', label_smoothing=0.1)


def test_gradient_flows():
    logits = paddle.to_tensor(LOGITS, stop_gradient=False)
    build_loss('class_balanced_focal', class_counts=[1, 2, 3, 4])(logits, paddle.to_tensor(LABELS)).backward()
    assert logits.grad is not None and np.all(np.isfinite(logits.grad.numpy()))
