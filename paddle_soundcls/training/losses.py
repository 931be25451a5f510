"""Training losses for sound classification (softmax) and audio tagging (sigmoid).

Every loss takes logits [B, C] and a target that is either
  - int class indices [B] (or [B, 1]), or
  - float targets [B, C]: soft labels (e.g. after mixup, each row sums to 1) or multi-hot tags,
and returns a scalar (0-D) tensor.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import validate
from ..errors import ArgumentError

LOSSES = ('ce', 'class_balanced', 'focal', 'class_balanced_focal', 'bce')
# Losses over a softmax of the classes: they do not fit independent sigmoid scores.
SOFTMAX_LOSSES = ('ce', 'class_balanced', 'focal', 'class_balanced_focal')


def class_balanced_weights(class_counts, beta=0.999):
    """Per-class weights from the effective number of samples (Cui et al., CVPR 2019).

    w_c = (1 - beta) / (1 - beta ** n_c), then scaled so that sum(w) = C.

    Args:
        class_counts: [C] number of training samples of each class (all > 0).
        beta (float): in [0, 1); 0 gives equal weights, values near 1 approach inverse frequency.
    Returns:
        np.ndarray [C] float32.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ArgumentError(f'class_counts must be a non-empty 1-D sequence, got shape {counts.shape}')
    for index, n in enumerate(counts):
        if not n > 0:
            raise ArgumentError(f'class {index} has {n:g} training samples; class-balanced weights need '
                             'at least one sample of every class (check the label list and the dataset)')
    if not 0.0 <= beta < 1.0:
        raise ArgumentError(f'beta must be in [0, 1), got {beta!r}')
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return (weights * counts.size / weights.sum()).astype(np.float32)


def _weights_tensor(class_weights):
    if class_weights is None:
        return None
    w = np.asarray(class_weights, dtype=np.float32)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ArgumentError('class_weights must be a 1-D sequence of finite, non-negative numbers '
                         f'(one per class), got {class_weights!r}')
    return paddle.to_tensor(w)


def _float_targets(logits, target):
    """Target as float [B, C] in the logits' dtype; class indices become one-hot rows."""
    if logits.ndim != 2:
        raise ArgumentError(f'logits must be [batch, classes], got shape {logits.shape}')
    batch, num_classes = logits.shape
    if target.dtype in (paddle.int32, paddle.int64):
        if target.ndim == 2 and target.shape[1] == 1:
            target = target.squeeze(1)
        if target.ndim != 1 or target.shape[0] != batch:
            raise ArgumentError(f'class-index targets must be [batch] = [{batch}], got shape {target.shape}')
        # Out-of-range indices would give a silently wrong one-hot row on some devices.
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise ArgumentError(f'class indices must be in [0, {num_classes}), got values from {low} to {high}')
        return F.one_hot(target.astype('int64'), num_classes).astype(logits.dtype)
    if list(target.shape) != [batch, num_classes]:
        raise ArgumentError(f'float targets must have the logits shape {[batch, num_classes]}, got {target.shape}')
    return target.astype(logits.dtype)


def _check_weights(weights, num_classes):
    if weights is not None and weights.shape[0] != num_classes:
        raise ArgumentError(f'class_weights has {weights.shape[0]} entries but the logits have {num_classes} classes')


class CrossEntropyLoss(nn.Layer):
    """Softmax cross-entropy with optional label smoothing and class weights.

    Label smoothing replaces the target t by (1 - eps) * t + eps / C.

    With class weights w [C], sample i gets the loss  sum_c w_c t~_ic (-log p_ic)  (t~ the smoothed
    target) and the weight  s_i = sum_c w_c t_ic  of its (unsmoothed) target, i.e. w_{y_i} for a
    class index. The batch loss is  sum_i loss_i / sum_i s_i.  This is PyTorch's weighted
    cross-entropy (also with label smoothing), extended to soft targets: the loss does not change
    scale with the mix of classes in a batch. Without class weights it is the plain batch mean.

    Args:
        label_smoothing (float): eps in [0, 1).
        class_weights: None or [C] non-negative numbers.
    Forward:
        logits [B, C], target int [B] or float [B, C] -> scalar loss.
    """

    def __init__(self, label_smoothing=0.0, class_weights=None):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ArgumentError(f'label_smoothing must be in [0, 1), got {label_smoothing!r}')
        self.label_smoothing = float(label_smoothing)
        weights = _weights_tensor(class_weights)
        # A buffer, so the weights follow the layer to the training device.
        self.register_buffer('class_weights', weights, persistable=False)

    def forward(self, logits, target):
        target = _float_targets(logits, target)
        num_classes = logits.shape[1]
        _check_weights(self.class_weights, num_classes)
        log_p = F.log_softmax(logits, axis=-1)
        smoothed = target
        if self.label_smoothing > 0:
            smoothed = (1.0 - self.label_smoothing) * target + self.label_smoothing / num_classes
        if self.class_weights is None:
            return -(smoothed * log_p).sum(axis=1).mean()
        w = self.class_weights.astype(logits.dtype)
        per_sample = -(w * smoothed * log_p).sum(axis=1)
        sample_weight = (w * target).sum(axis=1)
        return per_sample.sum() / sample_weight.sum()


class FocalLoss(nn.Layer):
    """Softmax focal loss (Lin et al. 2017), averaged over the batch.

    loss_i = -sum_c w_c t_ic (1 - p_ic) ** gamma log p_ic,  batch loss = mean_i loss_i.
    With gamma = 0 and no class weights it equals the cross-entropy. Unlike CrossEntropyLoss the
    class-weighted loss is divided by the batch size, not by the summed sample weights, as in the
    class-balanced loss of Cui et al. (whose weights sum to C, so the scale stays near 1).

    Args:
        gamma (float): focusing parameter >= 0.
        class_weights: None or [C] non-negative numbers.
    Forward:
        logits [B, C], target int [B] or float [B, C] -> scalar loss.
    """

    def __init__(self, gamma=2.0, class_weights=None):
        super().__init__()
        if not gamma >= 0:
            raise ArgumentError(f'gamma must be >= 0, got {gamma!r}')
        self.gamma = float(gamma)
        self.register_buffer('class_weights', _weights_tensor(class_weights), persistable=False)

    def forward(self, logits, target):
        target = _float_targets(logits, target)
        _check_weights(self.class_weights, logits.shape[1])
        log_p = F.log_softmax(logits, axis=-1)
        terms = -target * log_p
        if self.gamma > 0:
            terms = terms * paddle.pow(1.0 - paddle.exp(log_p), self.gamma)
        if self.class_weights is not None:
            terms = terms * self.class_weights.astype(logits.dtype)
        return terms.sum(axis=1).mean()


class BCEWithLogitsLoss(nn.Layer):
    """Multi-label binary cross-entropy on logits, averaged over batch and classes.

    loss = mean_{i,c} w_c [-t_ic log sigmoid(x_ic) - (1 - t_ic) log(1 - sigmoid(x_ic))].

    Args:
        class_weights: None or [C] non-negative numbers (a per-class factor on the loss).
    Forward:
        logits [B, C], target float multi-hot [B, C] (class indices [B] are one-hot encoded) -> scalar.
    """

    def __init__(self, class_weights=None):
        super().__init__()
        self.register_buffer('class_weights', _weights_tensor(class_weights), persistable=False)

    def forward(self, logits, target):
        target = _float_targets(logits, target)
        _check_weights(self.class_weights, logits.shape[1])
        # max(x, 0) - x t + log(1 + exp(-|x|)): the stable form of the two log-sigmoid terms.
        terms = F.relu(logits) - logits * target + F.softplus(-paddle.abs(logits))
        if self.class_weights is not None:
            terms = terms * self.class_weights.astype(logits.dtype)
        return terms.mean()


def build_loss(name, class_counts=None, label_smoothing=0.0, beta=0.999, gamma=2.0):
    """Loss layer by name.

    Args:
        name (str): 'ce', 'class_balanced' (CE weighted by class_balanced_weights), 'focal',
            'class_balanced_focal' or 'bce'.
        class_counts: [C] training samples per class; required by the class-balanced losses.
        label_smoothing (float): only for 'ce' and 'class_balanced'.
        beta (float): for class_balanced_weights.
        gamma (float): focal loss focusing parameter.
    Returns:
        paddle.nn.Layer computing loss(logits, target).
    """
    if name not in LOSSES:
        raise ArgumentError(f'unknown loss {name!r}; known: {", ".join(LOSSES)}')
    if label_smoothing and name not in ('ce', 'class_balanced'):
        raise ArgumentError(f"label_smoothing applies to 'ce' and 'class_balanced' only, not {name!r}")
    weights = None
    if name.startswith('class_balanced'):
        if class_counts is None:
            raise ArgumentError(f'loss {name!r} needs class_counts (training samples per class)')
        weights = class_balanced_weights(class_counts, beta)
    if name in ('ce', 'class_balanced'):
        return CrossEntropyLoss(label_smoothing, weights)
    if name in ('focal', 'class_balanced_focal'):
        return FocalLoss(gamma, weights)
    return BCEWithLogitsLoss()


def check_loss(loss, model):
    """Refuse, before any work, a loss name that is unknown or does not fit the model's scores."""
    if loss is None or not isinstance(loss, str):
        return
    if loss not in LOSSES:
        raise ArgumentError(f'unknown loss {loss!r}; known: {", ".join(LOSSES)}, or a Layer(logits, target)')
    if model.multi_label and loss in SOFTMAX_LOSSES:
        raise ArgumentError(f"loss={loss!r} is a loss over a softmax of the classes, but {model.name} is multi-label "
                            f"(independent sigmoid scores, also for event times): use loss='bce' (the default) or a "
                            f"Layer(logits, target) of your own")


def training_loss(loss, model, class_counts=None, label_smoothing=0.0):
    """The loss the Trainer trains `model` with: `loss` itself when it is a Layer, else the loss of
    that name (default 'ce', or 'bce' for multi-label models). The class-balanced losses weigh the
    classes by `class_counts` (the training set's), equally until a training set is known (an
    evaluate() before train())."""
    name = loss or ('bce' if model.multi_label else 'ce')
    if not isinstance(name, str):
        return name
    counts = None
    if 'balanced' in name:
        counts = class_counts if class_counts is not None else np.ones(model.num_class)
    return build_loss(name, class_counts=counts, label_smoothing=label_smoothing)


class DistillationLoss(nn.Layer):
    """Knowledge distillation: (1 - kd_lambda) * the task loss + kd_lambda * T^2 * the distance
    between the student's and the teacher's outputs at temperature T (Hinton et al., 2015).

    Single-label: KL(p || softmax(s / T)), p = softmax(t / T). Multi-label: binary cross-entropy
    of sigmoid(s / T) against p = sigmoid(t / T), class by class (EfficientAT's form). T^2 keeps
    the gradients of the soft part at the scale of the hard part's as T changes.

    With mixup the target distribution is the mix of the two clips' teacher distributions,
    lam * p_a + (1 - lam) * p_b, as EfficientAT's ex_audioset.py mixes its teacher predictions
    (sigmoid(t / T)), not the distribution of the mixed logits: mixing the logits of a confident
    teacher gives a target near one clip's label whatever lam is, which contradicts the mixed
    hard labels. So the Trainer turns the cached logits into teacher_probs() and mixes those.

    forward(logits, target, teacher_logits=None, teacher_probs=None): target as the task loss
    takes it; the teacher as logits, or as its distributions at T (exactly one of the two).
    """

    def __init__(self, task_loss, kd_lambda=0.5, temperature=2.0, multi_label=False):
        super().__init__()
        self.task_loss = task_loss
        self.kd_lambda = validate.probability('kd_lambda', kd_lambda)
        self.temperature = validate.positive_number('kd_temperature', temperature)
        self.multi_label = multi_label

    def teacher_probs(self, teacher_logits):
        """The teacher's distributions at temperature T [batch, classes]: softmax(t / T), or
        sigmoid(t / T) class by class for multi-label models."""
        scaled = teacher_logits.astype('float32') / self.temperature
        return F.sigmoid(scaled) if self.multi_label else F.softmax(scaled, axis=-1)

    def soft_loss(self, logits, teacher_probs):
        t = self.temperature
        # float32 whatever autocast made the logits: a confident teacher's small probabilities
        # are 0 in float16, and log(0) * 0 would make the loss NaN.
        logits, teacher = logits.astype('float32'), teacher_probs.astype('float32')
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits / t, teacher) * t * t
        log_ratio = paddle.log(paddle.clip(teacher, min=1e-12)) - F.log_softmax(logits / t, axis=-1)
        return (teacher * log_ratio).sum(axis=-1).mean() * t * t

    def forward(self, logits, target, teacher_logits=None, teacher_probs=None):
        if (teacher_logits is None) == (teacher_probs is None):
            raise ArgumentError('DistillationLoss needs the teacher as teacher_logits or as teacher_probs (one of them)')
        hard = self.task_loss(logits, target)
        if self.kd_lambda == 0:
            return hard
        probs = self.teacher_probs(teacher_logits) if teacher_probs is None else teacher_probs
        return (1 - self.kd_lambda) * hard + self.kd_lambda * self.soft_loss(logits, probs)


class SupConLoss(nn.Layer):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, L_out):

        L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a != i} exp(z_i . z_a / tau) )

    over the L2-normalised embeddings z of a batch (two views of each clip, concatenated), P(i)
    the other samples with i's label. Anchors without positives are left out.

    forward(embeddings [n, d], labels [n] class indices) -> scalar.
    """

    def __init__(self, temperature=0.1):
        super().__init__()
        self.temperature = validate.positive_number('supcon_temperature', temperature)

    def forward(self, embeddings, labels):
        z = F.normalize(embeddings.astype('float32'), axis=1)
        n = z.shape[0]
        similarity = paddle.matmul(z, z, transpose_y=True) / self.temperature
        self_mask = paddle.eye(n, dtype='float32')
        labels = labels.reshape([-1, 1]).astype('int64')
        positive = (labels == labels.T).astype('float32') - self_mask
        # log-softmax over every other sample; the diagonal is excluded by a large negative value.
        logits = similarity - self_mask * 1e9
        log_prob = logits - paddle.logsumexp(logits, axis=1, keepdim=True)
        counts = positive.sum(axis=1)
        has_positive = (counts > 0).astype('float32')
        mean_log_prob = (positive * log_prob).sum(axis=1) / paddle.clip(counts, min=1.0)
        return -(mean_log_prob * has_positive).sum() / paddle.clip(has_positive.sum(), min=1.0)
