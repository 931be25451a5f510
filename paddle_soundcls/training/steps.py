"""One training step per mode, each with one forward pass through the one Layer the Trainer wraps
once in paddle.DataParallel: TrainingNet (or the head alone, for a frozen backbone). A step that
called the model itself would skip the wrapper, and its gradients would not be averaged over the
processes of a data-parallel run.

    ClipStep     full fine-tuning, a frozen backbone's head, distillation: clip logits
    SupConStep   the task loss plus the contrastive loss of two augmented views: embeddings and logits
    StrongStep   event times (strong labels): frame logits against frame targets
    DomainStep   the task loss plus a device classifier's behind a gradient reversal (device labels)

A step is called with a loader batch (inputs, target[, teacher logits]) and the key of the
step's random draws, (seed, epoch, step, rank), and returns (clip logits, loss, target): the
logits and target give the running accuracy. Inputs turns the batch into what the network
takes, outside `autocast` (the front end stays float32); the forward pass and the loss run
inside it (modes.Precision.autocast: the listed low-precision ops only). Objective is the
loss of clip logits.
"""
import contextlib
import dataclasses

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..frames import for_frontend
from . import augment as augment_lib
from ..errors import ArgumentError

OUTPUTS = ('logits', 'frames', 'embeddings', 'devices')


class TrainingNet(nn.Layer):
    """A Module as the training loop runs it: forward(features, output) ->
        'logits':     clip logits [batch, classes] (Module.forward: the model's pooling)
        'frames':     frame logits [batch, frames', classes] (Module.frame_logits)
        'embeddings': (clip embeddings [batch, emb_size], their logits [batch, classes])
        'devices':    (clip logits, device logits [batch, devices]) of `device_head`
                      (models.domain.DeviceClassifier) on the clip embeddings
    Its parameters are the Module's, and the device head's when it has one (trained with it,
    never saved with the model: it exists for training only)."""

    def __init__(self, module, device_head=None):
        super().__init__()
        self.module = module
        self.device_head = device_head

    def forward(self, features, output='logits'):
        if output == 'logits':
            return self.module(features)
        if output == 'frames':
            return self.module.frame_logits(features)
        if output == 'embeddings':
            embeddings = self.module.forward_features(features)
            return embeddings, self.module.forward_head(embeddings)
        if output == 'devices' and self.device_head is not None:
            embeddings = self.module.forward_features(features)
            return self.module.forward_head(embeddings), self.device_head(embeddings)
        raise ArgumentError(f'output must be one of {OUTPUTS}, got {output!r}')


def network_targets(module, frame_targets, count, place=None):
    """Targets at the front end's frame rate [batch, frames, classes] (datasets.strong.frame_targets:
    frame i covers [i * hop, (i + 1) * hop)), a tensor or an array -> a tensor on `place` of the
    targets of the network's `count` frames [batch, count, classes]: each the maximum over the
    front-end frames of its span, placed by the family's frame geometry (frames.FrameGeometry)."""
    geometry = for_frontend(module.spec.frame_geometry, module.frontend_cfg)
    fine = frame_targets.numpy() if isinstance(frame_targets, paddle.Tensor) else np.asarray(frame_targets)
    return paddle.to_tensor(geometry.pool_targets(fine.astype(np.float32), count), place=place)


class Inputs:
    """A loader batch -> (network inputs, loss target, teacher distributions or None).

    Waveforms become augmented features (float32: the front end runs outside autocast); a frozen
    backbone's embeddings go in as they are. The target stays class indices, or becomes float
    [batch, classes] for multi-label data and mixup. The teacher's cached logits become its
    distributions at the distillation temperature, which mixup then mixes with the targets' own
    coefficients (not the logits: see losses.DistillationLoss)."""

    def __init__(self, module, augment, distill=None, frozen=False):
        self.module, self.augment, self.distill, self.frozen = module, augment, distill, frozen

    def __call__(self, batch, rng):
        inputs, target, *teacher = batch
        teacher = self.distill.teacher_probs(teacher[0]) if teacher else None
        if self.frozen:
            return inputs, target, teacher
        return self.features(inputs, target, rng, teacher)

    def features(self, waves, target, rng, teacher=None):
        augment, module = self.augment, self.module
        if augment.changes_audio:
            waves = augment_lib.apply(augment, waves, rng, module.frontend_cfg.sample_rate)
        feats = module.frontend(waves)
        if augment.mixup_alpha <= 0:
            feats, _ = augment_lib.apply_features(augment, feats, None, rng)
            return feats, target, teacher
        soft = target if module.multi_label else F.one_hot(target.astype('int64'), module.num_class)
        classes = soft.shape[1]
        joint = soft if teacher is None else paddle.concat([soft.astype('float32'), teacher.astype('float32')], axis=1)
        feats, joint = augment_lib.apply_features(augment, feats, joint, rng)
        return feats, joint[:, :classes], None if teacher is None else joint[:, classes:]

    def view(self, waves, rng):
        """One augmented view of a batch of clips for the contrastive loss: every augmentation but mixup."""
        config = dataclasses.replace(self.augment, mixup_alpha=0.0)
        if config.changes_audio:
            waves = augment_lib.apply(config, waves, rng, self.module.frontend_cfg.sample_rate)
        feats, _ = augment_lib.apply_features(config, self.module.frontend(waves), None, rng)
        return feats


class Objective:
    """The loss of clip logits: loss(logits, target), or with a teacher's distributions the
    distillation loss (losses.DistillationLoss)."""

    def __init__(self, loss, distill=None):
        self.loss, self.distill = loss, distill

    def __call__(self, logits, target, teacher=None):
        if teacher is None:
            return self.loss(logits, target)
        return self.distill(logits, target, teacher_probs=teacher)


class ClipStep:
    """Clip logits of the batch's inputs from one forward pass, and their loss."""

    def __init__(self, net, inputs, objective, autocast=contextlib.nullcontext):
        self.net, self.inputs, self.objective, self.autocast = net, inputs, objective, autocast

    def __call__(self, batch, key):
        inputs, target, teacher = self.inputs(batch, np.random.default_rng(key))
        with self.autocast():
            logits = self.net(inputs)
            return logits, self.objective(logits, target, teacher), target


class SupConStep(ClipStep):
    """The task loss plus weight * SupCon (losses.SupConLoss, Khosla et al. 2020) on the
    embeddings of two augmented views of every clip, from one forward pass."""

    def __init__(self, net, inputs, objective, supcon, weight, autocast=contextlib.nullcontext):
        super().__init__(net, inputs, objective, autocast)
        self.supcon, self.weight = supcon, weight

    def __call__(self, batch, key):
        waves, clip_target = batch[0], batch[1]
        task, target, teacher = self.inputs(batch, np.random.default_rng(key))
        views, labels = self.views(waves, clip_target, task, key)
        with self.autocast():
            logits, loss = self.forward(task, target, teacher, views, labels)
        return logits, loss, target

    def views(self, waves, clip_target, task, key):
        """(features of the two contrastive views [2 * batch, ...], their labels [2 * batch]).

        SupCon contrasts two random augmentations of each clip, each labelled with the clip's
        class: positives are views of clips of one class. Mixup's targets are soft, which this
        loss (hard-label positives) cannot take, and a clip mixed with another is no longer an
        augmentation of one clip, so both views leave mixup out and mixup trains the task loss
        only (the task view `task`). Without mixup the task view is the first view itself, as in
        the paper's training, where the cross-entropy runs on the same views.
        """
        labels = clip_target.astype('int64').reshape([-1])
        second = self.inputs.view(waves, np.random.default_rng((*key, 1)))
        first = task if self.inputs.augment.mixup_alpha <= 0 else self.inputs.view(
            waves, np.random.default_rng((*key, 2)))
        return paddle.concat([first, second]), paddle.concat([labels, labels])

    def forward(self, task, target, teacher, views, labels):
        """(task logits, loss): the task loss on the task view plus weight * SupCon on the two views'
        embeddings, from one forward pass of the wrapped network."""
        batch = task.shape[0]
        mixed = self.inputs.augment.mixup_alpha > 0  # the task view is then a third batch
        embeddings, logits = self.net(paddle.concat([task, views]) if mixed else views, 'embeddings')
        logits = logits[:batch]
        loss = self.objective(logits, target, teacher)
        return logits, loss + self.weight * self.supcon(embeddings[batch:] if mixed else embeddings, labels)


class StrongStep:
    """Event times: the loss of the frame logits against the batch's frame targets."""

    def __init__(self, net, inputs, loss, module, autocast=contextlib.nullcontext):
        self.net, self.inputs, self.loss, self.module, self.autocast = net, inputs, loss, module, autocast

    def __call__(self, batch, key):
        feats, frame_targets, _ = self.inputs(batch, np.random.default_rng(key))
        with self.autocast():
            logits, loss = self.forward(feats, frame_targets)
        return logits, loss, frame_targets

    def forward(self, feats, frame_targets):
        """Clip logits (the frames' maximum, for the progress figures) and the loss of the frame
        logits against event targets [batch, frames, classes], placed on the network's frames by the
        family's frame geometry (network_targets), both as [batch * frames', classes]."""
        frame_logits = self.net(feats, 'frames').astype('float32')        # [batch, frames', classes]
        _, count, classes = frame_logits.shape
        targets = network_targets(self.module, frame_targets, count, frame_logits.place)
        loss = self.loss(frame_logits.reshape([-1, classes]), targets.reshape([-1, classes]))
        return frame_logits.max(axis=1), loss


class DomainStep(ClipStep):
    """Domain-adversarial training (DANN, Ganin et al. 2016): the task loss plus the cross-entropy
    of the device head (models.domain.DeviceClassifier: a gradient reversal, then an MLP) on the
    clip embeddings, from one forward pass. The head learns to tell the recording devices apart;
    the reversed gradient, weighted by `weight` * dann_weight(progress, gamma), pushes the
    backbone towards embeddings in which they cannot be told apart. The batch ends with the
    clips' device indices (data.WithDevices)."""

    def __init__(self, net, inputs, objective, device_head, weight, gamma, autocast=contextlib.nullcontext):
        super().__init__(net, inputs, objective, autocast)
        self.device_head, self.weight, self.gamma = device_head, weight, gamma
        self.set_steps(1, 1)

    def set_steps(self, total_steps, steps_per_epoch):
        """The run's length, which the reversal weight's schedule follows."""
        self.total_steps, self.steps_per_epoch = max(1, total_steps), steps_per_epoch

    def progress(self, key):
        """The fraction of training done at the step of `key` = (seed, epoch, step, rank), both counted from 1."""
        _, epoch, step, _ = key
        return min(1.0, ((epoch - 1) * self.steps_per_epoch + step - 1) / self.total_steps)

    def __call__(self, batch, key):
        *batch, devices = batch
        inputs, target, teacher = self.inputs(batch, np.random.default_rng(key))
        self.device_head.set_progress(self.progress(key), self.gamma, self.weight)
        with self.autocast():
            logits, device_logits = self.net(inputs, 'devices')
            loss = self.objective(logits, target, teacher)
            device_loss = F.cross_entropy(device_logits.astype('float32'), devices.astype('int64').reshape([-1, 1]))
        return logits, loss + device_loss, target
