"""The training loop: waveforms in, features on the device, loss, metrics, checkpoints.

With `freeze_backbone=True` the loop takes the backbone's embeddings instead of waveforms:
they are computed once per clip and cached on disk (see training/embeddings.py), and only
the head (dropout + fc) trains on them, in seconds per epoch even for CNN14 on a CPU.

Evaluation scores each clip as `predict` does (deploy.pipeline.clip_segments: padded to the
training clip length, or the mean over consecutive windows of it), so the accuracy the
Trainer reports is the accuracy predict, the exports and the command line give. A dev set
with event times (strong labels) is also scored as `detect` scores it: event- and
segment-based F1 of the events Module.detect finds with the model's event config.

Every training step, whatever the mode, runs its forward through one Layer (steps.TrainingNet,
or the head alone with a frozen backbone), wrapped once in paddle.DataParallel in a
data-parallel run, so every mode's gradients are averaged over the processes.

Layout of `checkpoint_dir`:
    epoch_N/       model.pdparams, model.pdopt, meta.json, trainer.json   (the last `keep_last`)
    best_model/    model.pdparams, meta.json, metrics.json, confusion_matrix.{csv,png}
    visualization/ VisualDL scalars
Re-running with the same `checkpoint_dir` resumes after the last complete epoch. Randomness
is drawn from (seed, epoch[, step]) rather than carried state, so a resumed run continues
exactly as an uninterrupted one would.
"""
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil

import numpy as np
import paddle
import paddle.nn.functional as F
import paddle.distributed as dist
from paddle.io import DataLoader, DistributedBatchSampler

from .. import checkpoint, fileio
from ..device import set_device
from ..progress import progress_bar
from .loss_scale import DynamicLossScaler
from . import augment as augment_lib
from . import embeddings, losses, metrics, steps
from .schedules import steps_per_epoch
from .teacher import Teacher, teacher_logits

logger = logging.getLogger(__name__)


TRAINER_STATE = 'trainer.json'
OPT_FILE = 'model.pdopt'
_EPOCH_DIR = re.compile(r'^epoch_(\d+)$')
SINGLE_LABEL_METRICS = ('acc', 'top5', 'macro_f1')
MULTI_LABEL_METRICS = ('mAP', 'AUC', 'f1_micro')
# Measured on a dev set with event times (strong labels), from the events of Module.detect:
# micro F1 (all classes pooled) and the class average ('_macro'), event-based (200 ms collars)
# and segment-based (1-s segments), as deploy.event_metrics (sed_eval's definitions) counts them.
STRONG_LABEL_METRICS = ('event_f1', 'segment_f1', 'event_f1_macro', 'segment_f1_macro')
# Losses over a softmax of the classes: they do not fit independent sigmoid scores.
SOFTMAX_LOSSES = ('ce', 'class_balanced', 'focal', 'class_balanced_focal')


class Trainer:
    """Fine-tunes a `Module` (PaddleHub-compatible signature).

    Args:
        model: a paddle_soundcls Module (a Layer with `frontend`, `meta()`, `labels`).
        optimizer: a paddle optimizer over model.parameters(); its LR scheduler (if any)
            is stepped once per batch and saved with the checkpoints.
        use_gpu: train on the GPU (a CPU-only Paddle build raises a clear error).
        num_threads: threads of Paddle's CPU kernels; None: the count set earlier in this
            process, else every CPU it may use (shared among the processes of a data-parallel
            launch). See device.set_device and device.cpu_threads.
        use_vdl: write VisualDL scalars under checkpoint_dir/visualization.
        checkpoint_dir: where epochs, best_model and logs go (default 'ckpt').
        compare_metrics: the eval metric that picks best_model ('acc', 'macro_f1', 'top5',
            'mAP', 'AUC', 'f1_micro'; on a dev set with event times also 'event_f1', 'segment_f1',
            'event_f1_macro', 'segment_f1_macro'; or 'loss', which is minimised). Default: 'acc',
            'mAP' for multi-label models, 'event_f1' when the dev set has event times.
        loss: a loss name ('ce', 'class_balanced', 'focal', 'class_balanced_focal', 'bce') or
            a Layer(logits, target). Default: 'ce', or 'bce' for multi-label models; the softmax
            losses (all but 'bce') are refused for multi-label models. Class weights come from
            the training set's class counts. On event times (strong labels) the loss takes the
            frame logits and targets of a batch as [batch * frames, classes].
        label_smoothing: for the cross-entropy losses.
        augment: an `AugmentConfig` (everything off by default); applied in training only.
        seed: seeds shuffling, crops, dropout and augmentation.
        keep_last: how many epoch_N directories to keep (a positive int; None keeps all).
        skip_bad_files: drop unreadable files with a warning instead of stopping.
        freeze_backbone: train only the head (dropout + fc), on backbone embeddings computed once
            per clip (backbone in eval mode, centre crops, training and evaluation data alike)
            and cached by file content under `embedding_cache` (see training/embeddings.py).
            Augmentation is refused in this mode: it would change the audio or features the
            cached embeddings were computed from. The checkpoints hold the whole model as usual,
            and the mode is recorded: a run continued with the other mode keeps the weights and
            the learning-rate schedule and starts the optimizer's moments afresh.
        embedding_cache: the embedding cache folder (default `<cache_dir()>/embeddings`).
        teacher: knowledge distillation from a Module, a checkpoint directory, an export
            directory, or a list of them (an ensemble: the mean of their logits). The teacher
            scores every training clip whole, once (cached under `teacher_cache`, default
            `<cache_dir()>/teachers`, keyed by file content and teacher weights); the student
            learns from (1 - kd_lambda) * its loss + kd_lambda * kd_temperature^2 * the distance
            to the teacher's distribution at that temperature (losses.DistillationLoss). With mixup
            the teacher's distributions (not its logits) are mixed with the same coefficient, as
            EfficientAT does. Its labels must be the data's.
        max_params, max_macs_per_second: a complexity budget (e.g. DCASE task 1: 128 kB of
            parameters, 30 M MACs per second of audio): a model over it is refused before the
            first step, naming the figures (export.complexity.check_budget).
        amp: mixed precision for the network's forward pass: None (float32), 'bf16' (GPUs where
            paddle.amp.is_bfloat16_supported()) or 'fp16' (CUDA GPUs, with dynamic loss scaling:
            loss_scale.DynamicLossScaler). paddle.amp.auto_cast level O1: convolutions and matrix
            products run in the low precision; the front end, BatchNorm, the loss and the
            weights (so the checkpoints) stay float32. Resumes exactly as float32 runs do. A
            precision the device cannot run is refused, bf16 on CPUs included: Paddle's dygraph
            has no bfloat16 convolution on the CPU, and its auto_cast computes float32 there.
        supcon_weight: > 0 adds the supervised contrastive loss (losses.SupConLoss, Khosla et al.
            2020) on the embeddings of two augmented views of every clip, times this weight, to
            the loss of the first view (single-label data, full fine-tuning, augmentation on).
            Both views are augmentations of the same clips labelled with their own class; mixup,
            whose targets are soft, trains the task loss only (see _supcon_step).

    Data with event times (datasets.StrongLabelDataset) trains the frame logits against the
    events' frame targets placed on the network's frames by the family's frame geometry; the
    model must be multi-label with decision-level pooling ('max' or 'linear_softmax'), so its
    clip scores are its pooled frame scores.
    """

    def __init__(self, model, optimizer, use_gpu=False, use_vdl=True, checkpoint_dir=None, compare_metrics=None,
                 loss=None, label_smoothing=0.0, augment=None, seed=0, keep_last=3, skip_bad_files=False,
                 freeze_backbone=False, embedding_cache=None, teacher=None, kd_lambda=0.5, kd_temperature=2.0,
                 teacher_cache=None, supcon_weight=0.0, supcon_temperature=0.1, max_params=None,
                 max_macs_per_second=None, amp=None, num_threads=None):
        set_device(use_gpu, num_threads)  # the run's device: every tensor of the loop is made there
        self.use_gpu = bool(use_gpu)
        self.amp = _check_amp(amp, use_gpu)
        losses.DistillationLoss(None, kd_lambda, kd_temperature)  # checks the two settings before any work
        known_metrics = ('loss',) + SINGLE_LABEL_METRICS + MULTI_LABEL_METRICS + STRONG_LABEL_METRICS
        if compare_metrics is not None and compare_metrics not in known_metrics:
            raise ValueError(f'compare_metrics must be one of {list(known_metrics)}, got {compare_metrics!r}')
        _check_loss(loss, model)
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f'keep_last must be a positive int (epoch_N directories kept for resuming) or None '
                             f'(keep all), got {keep_last!r}')
        if max_params is not None or max_macs_per_second is not None:
            from ..export.complexity import check_budget, complexity
            report = check_budget(complexity(model, seconds=(1,)), max_params, max_macs_per_second)
            logger.info('%s: %d parameters (%.1f kB at fp16), %d MACs per second of audio: within the budget',
                        model.name, report['params']['total'], report['param_memory']['fp16']['kB'],
                        report['macs_per_second'])
        self.model = model
        self.optimizer = optimizer
        self.use_vdl = use_vdl
        self.checkpoint_dir = checkpoint_dir or 'ckpt'
        self.compare_metrics = compare_metrics
        self.loss_spec = loss
        self.label_smoothing = label_smoothing
        self.augment = augment or augment_lib.AugmentConfig()
        self.seed = seed
        self.keep_last = keep_last
        self.skip_bad_files = skip_bad_files
        self.freeze_backbone = freeze_backbone
        self.embedding_cache = embedding_cache
        self.teacher = None if teacher is None else Teacher(teacher, use_gpu=use_gpu)
        if not (isinstance(supcon_weight, (int, float)) and supcon_weight >= 0) or isinstance(supcon_weight, bool):
            raise ValueError(f'supcon_weight must be a number >= 0, got {supcon_weight!r}')
        if supcon_weight > 0 and getattr(model, 'pooling', 'embedding') != 'embedding':
            raise ValueError("supcon_weight > 0 contrasts clip embeddings: it goes with pooling='embedding'")
        if supcon_weight > 0 and (freeze_backbone or not self.augment.enabled):
            raise ValueError('supcon_weight > 0 contrasts two augmented views of each clip: it needs augmentation '
                             '(augment=AugmentConfig(...)) and the whole network training (freeze_backbone=False)')
        self.supcon_weight = supcon_weight
        self.supcon = losses.SupConLoss(supcon_temperature) if supcon_weight > 0 else None
        self.scaler = None  # fp16's loss scaler, made at train() with the scale a resumed run saved
        self.kd_lambda, self.kd_temperature, self.teacher_cache = kd_lambda, kd_temperature, teacher_cache
        if self.augment.impulse_responses is not None:  # a folder without audio fails here, before any work
            augment_lib.load_impulse_responses(self.augment.impulse_responses, model.frontend_cfg.sample_rate)
        if freeze_backbone:
            _check_frozen(model, self.augment)
            model.backbone.eval()
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.loss_fn = None
        self._vdl = None
        self._checked = set()
        # What every training step goes through: the whole model on features (steps.TrainingNet
        # gives each mode its outputs), or with a frozen backbone the head alone on cached
        # embeddings (the backbone never runs in the loop). Wrapped once for data parallelism.
        self._head = model.part('head') if freeze_backbone else None
        self._net = self._head if freeze_backbone else steps.TrainingNet(model)
        self._train_counts = None
        if self.world_size > 1:
            dist.init_parallel_env()
            self._net = paddle.DataParallel(self._net)

    # ----------------------------------------------------------------- set-up
    def _prepare(self, dataset, role):
        """Check a dataset against the model once: rate, label names and order, multi-label, files."""
        model = self.model
        model_sr = model.frontend_cfg.sample_rate
        ds_sr = getattr(dataset, 'sample_rate', None)
        if ds_sr is not None and ds_sr != model_sr:
            raise ValueError(f'{role} dataset is resampled to {ds_sr} Hz but {model.name} expects {model_sr} Hz; '
                             f'create the dataset with sample_rate={model_sr} (training and prediction must use '
                             f'the same rate)')
        labels = getattr(dataset, 'labels', None)
        if labels is not None and list(labels) != list(model.labels):
            raise ValueError(
                f'the {role} dataset\'s labels differ from the model\'s, in names or in order, so predictions would '
                f'carry the wrong names.\n  dataset: {_shorten(labels)}\n  model:   {_shorten(model.labels)}\n'
                f'Build the Module with label_map=dataset.labels.')
        multi_label = bool(getattr(dataset, 'multi_label', False))
        if multi_label != model.multi_label:
            fix = ('Module(..., multi_label=True) for data with several labels per clip' if multi_label else
                   'a multi-label dataset, or a Module with multi_label=False')
            raise ValueError(f'the {role} dataset is {"multi" if multi_label else "single"}-label but {model.name} '
                             f'was built with multi_label={model.multi_label}: scores would be '
                             f'{"a softmax" if multi_label else "independent sigmoids"}. Use {fix}.')
        if getattr(dataset, 'strong', False):
            if not model.multi_label:
                raise ValueError(f'the {role} dataset has event times (strong labels): train a multi-label model on '
                                 f'it (Module(..., multi_label=True)), whose frame scores are independent sigmoids')
            if role == 'train' and (self.augment.mixup_alpha > 0 or self.freeze_backbone or self.teacher is not None
                                    or self.supcon is not None):
                raise ValueError('training on event times (strong labels) trains frame by frame: mixup, a frozen '
                                 'backbone, a teacher and supcon_weight do not apply; turn them off')
            if role == 'train' and model.pooling == 'embedding':
                # Training the frame logits would leave the head on the pooled embedding, which
                # predict and the clip metrics use, untrained for it: clip and frame scores disagree.
                raise ValueError(f"training on event times (strong labels) trains the frame scores; build the Module "
                                 f"with decision-level pooling (pooling='max' or 'linear_softmax'), so that its clip "
                                 f"scores are its pooled frame scores (it has pooling={model.pooling!r})")
            hop = model.frontend_cfg.hop_length / model.frontend_cfg.sample_rate
            if abs(dataset.frame_hop_seconds - hop) > 1e-9:
                raise ValueError(f'the {role} dataset has frame targets every {dataset.frame_hop_seconds} s but '
                                 f'{model.name} makes frames every {hop} s; create it with frame_hop_seconds={hop}')
        if role == 'train' and self.supcon is not None and multi_label:
            raise ValueError('supcon_weight > 0 needs single-label data (SupCon contrasts clips by their class)')
        if id(dataset) not in self._checked and hasattr(dataset, 'check_files'):
            dataset.check_files(skip_bad=self.skip_bad_files)
            self._checked.add(id(dataset))
        if len(dataset) == 0:
            raise ValueError(f'{role} dataset is empty')
        if role == 'train' and hasattr(dataset, 'class_counts'):
            self._train_counts = dataset.class_counts()
        if self.loss_fn is None or role == 'train':
            self.loss_fn = self._build_loss()
            self._distill = None if self.teacher is None else losses.DistillationLoss(
                self.loss_fn, self.kd_lambda, self.kd_temperature, model.multi_label)
        if self.compare_metrics is None:
            self.compare_metrics = _default_metric(dataset)
        strong = bool(getattr(dataset, 'strong', False))
        # The event metrics are measured on the dev set: any training set may go with them.
        allowed = (('loss',) + (MULTI_LABEL_METRICS if multi_label else SINGLE_LABEL_METRICS)
                   + (STRONG_LABEL_METRICS if strong or role == 'train' else ()))
        if self.compare_metrics in STRONG_LABEL_METRICS and self.compare_metrics not in allowed:
            raise ValueError(f'compare_metrics={self.compare_metrics!r} is measured on a dev set with event times '
                             f'(datasets.StrongLabelDataset), not on this {role} dataset; choose one of '
                             f'{list(allowed)}')
        if self.compare_metrics not in allowed:
            raise ValueError(f'compare_metrics={self.compare_metrics!r} is not measured on '
                             f'{"multi" if multi_label else "single"}-label data; choose one of {list(allowed)}')
        return multi_label

    def _build_loss(self):
        """The loss; class-balanced weights from the training set's counts (equal weights until
        a training set is known, e.g. for an evaluate() before train())."""
        spec = self.loss_spec or ('bce' if self.model.multi_label else 'ce')
        if not isinstance(spec, str):
            return spec
        counts = None
        if 'balanced' in spec:
            counts = self._train_counts if self._train_counts is not None else np.ones(self.model.num_class)
        return losses.build_loss(spec, class_counts=counts, label_smoothing=self.label_smoothing)

    def _loader(self, dataset, batch_size, num_workers, shuffle, epoch=0):
        sampler = DistributedBatchSampler(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False)
        # The shuffle order depends on (seed, epoch) only, identical for 1 or N processes.
        sampler.set_epoch(self.seed * 100003 + epoch)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, return_list=True)

    def _writer(self):
        if self._vdl is None and self.use_vdl and self.is_main:
            from visualdl import LogWriter
            self._vdl = LogWriter(logdir=os.path.join(self.checkpoint_dir, 'visualization'))
        return self._vdl

    def _scalar(self, tag, value, step):
        writer = self._writer()
        if writer is not None:
            writer.add_scalar(tag=tag, value=float(value), step=step)

    # ------------------------------------------------------------------ train
    def train(self, train_dataset, epochs=1, batch_size=1, num_workers=0, eval_dataset=None, log_interval=10,
              save_interval=1):
        """Train for `epochs` epochs (counting epochs already done in checkpoint_dir).

        Evaluates on `eval_dataset` and saves epoch_N every `save_interval` epochs and after
        the last one; best_model follows `compare_metrics`.
        """
        for arg, value in (('epochs', epochs), ('batch_size', batch_size), ('log_interval', log_interval),
                           ('save_interval', save_interval)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{arg} must be a positive int, got {value!r}')
        if self.compare_metrics is None:  # chosen by what the dev set can measure
            self.compare_metrics = _default_metric(train_dataset if eval_dataset is None else eval_dataset)
        multi_label = self._prepare(train_dataset, 'train')
        if self.supcon is not None and self.world_size > 1:
            raise ValueError('supcon_weight > 0 runs in one process; drop it for data-parallel training')
        if eval_dataset is not None:
            self._prepare(eval_dataset, 'eval')
        duration = getattr(train_dataset, 'duration', None)
        if duration is not None:  # predict treats clips as the training clips were (see Module clip_seconds)
            self.model.clip_seconds = float(duration)
        state = self._resume()
        if self.amp == 'fp16':
            self.scaler = DynamicLossScaler()
            if state.get('loss_scaler'):
                self.scaler.load_state_dict(state['loss_scaler'])
        if self.is_main:
            self._prune()  # finish a removal that a killed run left half done
        start = state['epoch'] + 1
        if start > epochs:
            logger.info('%s already holds %d epochs; nothing to train', self.checkpoint_dir, state['epoch'])
            return state
        num_steps = steps_per_epoch(len(train_dataset), batch_size, self.world_size)
        train_data, eval_data = train_dataset, eval_dataset
        if self.freeze_backbone:  # after the resume, which may have loaded other backbone weights
            train_data = self._embed(train_dataset, 'center')
            eval_data = None if eval_dataset is None else self._embed(eval_dataset, 'segments')
        if self.teacher is not None:
            train_data = WithTeacher(train_data, teacher_logits(self.teacher, train_dataset, self.teacher_cache,
                                                                progress=self.is_main))
        for epoch in range(start, epochs + 1):
            train_stats = self._train_epoch(train_data, epoch, batch_size, num_workers, log_interval,
                                            num_steps, multi_label, epochs)
            if epoch % save_interval and epoch != epochs:
                continue
            result = None
            if eval_data is not None:
                result = self._evaluate(eval_data, multi_label, batch_size)
                for name, value in [('loss', result['loss'])] + list(_scalars(result['metrics'])):
                    self._scalar(f'eval/{name}', value, epoch)
            state = self._save_epoch(epoch, state, train_stats, result)
        return state

    def _train_epoch(self, dataset, epoch, batch_size, num_workers, log_interval, num_steps, multi_label,
                     epochs):
        # Dropout and other Paddle randomness restart from (seed, epoch): exact resume.
        paddle.seed(self.seed * 100003 + epoch)
        if hasattr(dataset, 'set_epoch'):
            dataset.set_epoch(epoch)
        self._net.train()
        total_loss, total_correct, total_seen = 0.0, 0, 0
        bar = progress_bar(self._loader(dataset, batch_size, num_workers, shuffle=True, epoch=epoch), total=num_steps,
                   desc=f'epoch {epoch}/{epochs}', show=self.is_main, leave=False, dynamic_ncols=True)
        strong = getattr(dataset, 'strong', False)
        for step, (inputs, target, *teacher) in enumerate(bar, start=1):
            rng = np.random.default_rng((self.seed, epoch, step, self.rank))
            waves, clip_target = inputs, target
            inputs, target, teacher = self._batch(inputs, target, teacher[0] if teacher else None, multi_label, rng)
            views = None if self.supcon is None else self._supcon_views(waves, clip_target, inputs, epoch, step)
            with self._autocast():  # the listed low-precision ops only; losses and BatchNorm stay float32
                if strong:
                    logits, loss = self._strong_step(inputs, target)
                elif views is None:
                    logits = self._net(inputs)
                    loss = self._task_loss(logits, target, teacher)
                else:
                    logits, loss = self._supcon_step(inputs, target, teacher, *views)
            loss_value = float(loss)
            if not math.isfinite(loss_value) and self.scaler is None:
                raise FloatingPointError(
                    f'the training loss became {loss_value} at epoch {epoch}, step {step}. Training stopped; the '
                    f'last good checkpoint in {self.checkpoint_dir} is kept. Lower the learning rate, or check the '
                    f'data for silent or corrupt clips, then run again to resume from it.')
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:  # fp16: gradients of the scaled loss; a step with inf/NaN gradients is skipped
                self.scaler.scale_loss(loss).backward()
                self.scaler.step(self.optimizer, self._net.parameters())
            self.optimizer.clear_grad()
            scheduler = self.optimizer._learning_rate
            if isinstance(scheduler, paddle.optimizer.lr.LRScheduler):
                scheduler.step()
            n = inputs.shape[0]
            total_loss += loss_value * n
            total_seen += n
            if not multi_label:
                reference = target.argmax(axis=-1) if target.ndim == 2 else target  # mixup: soft targets
                total_correct += int((logits.argmax(axis=-1) == reference.astype('int64')).astype('int64').sum())
            global_step = (epoch - 1) * num_steps + step
            lr = self.optimizer.get_lr()
            postfix = {'loss': f'{total_loss / total_seen:.4f}', 'lr': f'{lr:.2e}'}
            if not multi_label:
                postfix['acc'] = f'{total_correct / total_seen:.4f}'
            bar.set_postfix(postfix)
            if step % log_interval == 0 and self.is_main:
                self._scalar('train/loss', loss_value, global_step)
                self._scalar('train/lr', lr, global_step)
                logger.info('epoch %d step %d/%d: %s', epoch, step, num_steps,
                            ', '.join(f'{k}={v}' for k, v in postfix.items()))
        bar.close()
        stats = {'loss': total_loss / max(total_seen, 1)}
        if not multi_label:
            stats['acc'] = total_correct / max(total_seen, 1)
        for name, value in stats.items():
            self._scalar(f'train/epoch_{name}', value, epoch)
        return stats

    def _batch(self, inputs, target, teacher_logits, multi_label, rng):
        """A training batch as the steps take it: (inputs, loss target, teacher). Waveforms become
        augmented features (float32); a frozen backbone's embeddings go in as they are. The
        teacher's cached logits become its distributions at the distillation temperature, which
        mixup then mixes like the targets (not the logits: see losses.DistillationLoss)."""
        teacher = None if teacher_logits is None else self._distill.teacher_probs(teacher_logits)
        if self.freeze_backbone:
            return inputs, target, teacher
        return self._features(inputs, target, multi_label, rng, teacher)

    def _features(self, waves, target, multi_label, rng, teacher=None):
        """A training batch of waveforms -> (augmented features, loss target, teacher): the target
        as class indices, or float [batch, classes] for multi-label data and mixup; the teacher's
        distributions [batch, classes] (or None) mixed with the same mixup coefficients as the
        targets."""
        if self.augment.changes_audio:
            waves = augment_lib.apply(self.augment, waves, rng, self.model.frontend_cfg.sample_rate)
        feats = self.model.frontend(waves)
        if self.augment.mixup_alpha <= 0:
            feats, _ = augment_lib.apply_features(self.augment, feats, None, rng)
            return feats, target, teacher
        soft = target if multi_label else F.one_hot(target.astype('int64'), self.model.num_class)
        classes = soft.shape[1]
        joint = soft if teacher is None else paddle.concat([soft.astype('float32'), teacher.astype('float32')], axis=1)
        feats, joint = augment_lib.apply_features(self.augment, feats, joint, rng)
        return feats, joint[:, :classes], None if teacher is None else joint[:, classes:]

    def _task_loss(self, logits, target, teacher):
        """The loss against the targets, or with a teacher the distillation loss (teacher: its
        distributions at the temperature, mixed as the targets are)."""
        if teacher is None:
            return self.loss_fn(logits, target)
        return self._distill(logits, target, teacher_probs=teacher)

    def _view(self, waves, rng):
        """One augmented view of a batch of clips for the contrastive loss: every augmentation but mixup."""
        config = dataclasses.replace(self.augment, mixup_alpha=0.0)
        if config.changes_audio:
            waves = augment_lib.apply(config, waves, rng, self.model.frontend_cfg.sample_rate)
        feats, _ = augment_lib.apply_features(config, self.model.frontend(waves), None, rng)
        return feats

    def _supcon_views(self, waves, clip_target, feats, epoch, step):
        """(features of the two contrastive views [2 * batch, ...], their labels [2 * batch]).

        SupCon (Khosla et al. 2020) contrasts two random augmentations of each clip, each labelled
        with the clip's class: positives are views of clips of one class. Mixup's targets are soft,
        which this loss (hard-label positives) cannot take, and a clip mixed with another is no
        longer an augmentation of one clip, so both views leave mixup out and mixup trains the task
        loss only (the task view `feats`). Without mixup the task view is the first view itself,
        as in the paper's training, where the cross-entropy runs on the same views.
        """
        labels = clip_target.astype('int64').reshape([-1])
        second = self._view(waves, np.random.default_rng((self.seed, epoch, step, self.rank, 1)))
        first = (feats if self.augment.mixup_alpha <= 0 else
                 self._view(waves, np.random.default_rng((self.seed, epoch, step, self.rank, 2))))
        return paddle.concat([first, second]), paddle.concat([labels, labels])

    def _supcon_step(self, feats, target, teacher, views, labels):
        """The task loss on the task view plus supcon_weight * SupCon on the two views' embeddings,
        from one forward pass of the wrapped network."""
        batch = feats.shape[0]
        mixed = self.augment.mixup_alpha > 0  # the task view is then a third batch
        embeddings, logits = self._net(paddle.concat([feats, views]) if mixed else views, 'embeddings')
        logits = logits[:batch]
        loss = self._task_loss(logits, target, teacher)
        loss = loss + self.supcon_weight * self.supcon(embeddings[batch:] if mixed else embeddings, labels)
        return logits, loss

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(dtype='bfloat16' if self.amp == 'bf16' else 'float16', level='O1')

    def _strong_step(self, feats, frame_targets):
        """Clip logits (for the progress figures) and the loss of the frame logits against event
        targets [batch, frames, classes], placed on the network's frames by the family's frame
        geometry (steps.network_targets), both as [batch * frames', classes]."""
        frame_logits = self._net(feats, 'frames').astype('float32')        # [batch, frames', classes]
        _, count, classes = frame_logits.shape
        targets = steps.network_targets(self.model, frame_targets, count, frame_logits.place)
        loss = self.loss_fn(frame_logits.reshape([-1, classes]), targets.reshape([-1, classes]))
        return frame_logits.max(axis=1), loss

    def _embed(self, dataset, cut):
        """The cached backbone embeddings of `dataset` (computed where missing)."""
        return embeddings.embed_dataset(self.model, dataset, cut=cut, clip_samples=self._clip_samples(dataset),
                                        root=self.embedding_cache, rank=self.rank, world_size=self.world_size)

    def _clip_samples(self, dataset):
        """The clip length evaluation cuts clips to: the model's training clip length, else the dataset's."""
        if self.model.clip_seconds is not None:
            return int(round(self.model.clip_seconds * dataset.sample_rate))
        return getattr(dataset, 'num_samples', None)

    # --------------------------------------------------------------- evaluate
    @paddle.no_grad()
    def evaluate(self, eval_dataset, batch_size=1, num_workers=0):
        """Loss and metrics over the whole dataset: {'loss': float, 'metrics': {...}}.

        Single-label: acc, top5, macro_f1, per-class precision/recall/f1, confusion.
        Multi-label: mAP, AUC, f1_micro. In a data-parallel run every process
        evaluates the whole set (the same figures everywhere, so all agree on best_model); only rank 0 writes.
        Each clip is scored as predict scores it (see the module docstring): its scores are the
        mean over its segments' scores, its loss that of the mean of their logits, over the
        whole set at once (so neither depends on batch_size). With freeze_backbone=True the head
        runs on the cached embeddings of the segments. num_workers is accepted for PaddleHub's
        signature; clips are read in this process.

        Data with event times (a StrongLabelDataset) is also scored frame by frame: 'loss' is
        the training loss of the frame logits on its clips (the crops it gives); every whole
        recording goes through Module.detect with the model's event config, and its events
        give event_f1 / segment_f1 (micro) and event_f1_macro / segment_f1_macro (class
        average) with their precision and recall (see _event_metrics).
        """
        multi_label = self._prepare(eval_dataset, 'eval')
        data = self._embed(eval_dataset, 'segments') if self.freeze_backbone else eval_dataset
        return self._evaluate(data, multi_label, batch_size)

    def _segments(self, data):
        """(clip index, input) for every segment of every clip: embeddings of a frozen backbone,
        waveform segments of an AudioDataset (cut as predict cuts them), or what another
        dataset gives."""
        for index in range(len(data)):
            if isinstance(data, embeddings.EmbeddingDataset):
                rows = data.embeddings[index]
            elif hasattr(data, 'waveform'):
                rows = embeddings.clip_inputs(self.model, data, index, 'segments', self._clip_samples(data))
            else:
                rows = [np.asarray(data[index][0], dtype=np.float32)]
            for row in rows:
                yield index, row

    @paddle.no_grad()
    def _evaluate(self, data, multi_label, batch_size):
        """evaluate() on an audio dataset, or on an EmbeddingDataset with a frozen backbone."""
        self._net.eval()
        model = self.model
        net = self._head if self.freeze_backbone else (lambda waves: model(model.frontend(waves)))
        clips, logits, scores, batch = [], [], [], []

        def flush():
            out = net(paddle.to_tensor(np.stack([row for _, row in batch])))
            logits.append(out.numpy())
            scores.append(model.scores(out).numpy())
            clips.extend(index for index, _ in batch)
            batch.clear()

        for item in progress_bar(self._segments(data), desc='evaluate', show=self.is_main, leave=False):
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        clips, logits, scores = np.asarray(clips), np.concatenate(logits), np.concatenate(scores)
        count = np.bincount(clips, minlength=len(data))[:, None]
        clip_logits = np.zeros((len(data), logits.shape[1]), np.float64)
        clip_scores = np.zeros_like(clip_logits)
        np.add.at(clip_logits, clips, logits)
        np.add.at(clip_scores, clips, scores)
        clip_logits, clip_scores = clip_logits / count, (clip_scores / count).astype(np.float32)
        targets = np.stack([np.asarray(_target(data, i)) for i in range(len(data))])
        loss = float(self.loss_fn(paddle.to_tensor(clip_logits.astype(np.float32)), paddle.to_tensor(targets)))
        if multi_label:
            result = metrics.multilabel_metrics(targets, clip_scores)
        else:
            result = metrics.classification_metrics(targets.astype('int64'), clip_scores)
        if getattr(data, 'strong', False):
            loss = self._frame_loss(data, batch_size)
            result.update(self._event_metrics(data))
        self._net.train()
        return {'loss': loss, 'metrics': result}

    def _frame_loss(self, data, batch_size):
        """The training loss of the frame logits on the clips of a dataset with event times."""
        model, total = self.model, 0.0
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            frame_logits = model.frame_logits(model.frontend(paddle.to_tensor(np.stack([w for w, _ in items]))))
            _, count, classes = frame_logits.shape
            targets = steps.network_targets(model, np.stack([t for _, t in items]), count, frame_logits.place)
            loss = self.loss_fn(frame_logits.reshape([-1, classes]), targets.reshape([-1, classes]))
            total += float(loss) * len(items)
        return total / len(data)

    def _event_metrics(self, data):
        """Event- and segment-based scores of the events Module.detect finds in every recording of
        `data` (whole, at the model's rate; the model's event config) against its event times,
        counted as deploy.event_metrics (sed_eval) counts them: onset collar 200 ms, offset collar
        max(200 ms, 20 % of the event), 1-s segments over the whole recording. F1 is
        2 TP / (2 TP + FP + FN): 0 for a model that detects nothing (sed_eval says NaN, and leaves
        such a class out of its class average; here it counts as 0). The class averages run over
        the classes with events or detections."""
        from ..deploy import event_metrics
        references, estimates, durations = {}, {}, {}
        for index, (path, _) in enumerate(progress_bar(data.items, desc='detect', show=self.is_main, leave=False)):
            wave = data.waveform(index)
            [found] = self.model.detect([wave], sample_rate=data.sample_rate, use_gpu=self.use_gpu)
            references[path], estimates[path] = data.events[path], found['events']
            durations[path] = len(wave) / data.sample_rate
        labels = list(self.model.labels)
        result = {}
        for kind, scores in (('event', event_metrics.event_based_metrics(references, estimates, labels)),
                             ('segment', event_metrics.segment_based_metrics(references, estimates, labels,
                                                                             durations=durations))):
            micro = scores['micro']
            result[f'{kind}_f1'] = _f1(micro)
            result[f'{kind}_precision'], result[f'{kind}_recall'] = micro['precision'], micro['recall']
            per_class = [_f1(c) for c in scores['classes'].values() if c['n_ref'] + c['n_est']]
            result[f'{kind}_f1_macro'] = float(np.mean(per_class)) if per_class else math.nan
        return result

    # ------------------------------------------------------------ checkpoints
    def _epoch_dirs(self):
        if not os.path.isdir(self.checkpoint_dir):
            return []
        found = []
        for name in os.listdir(self.checkpoint_dir):
            match = _EPOCH_DIR.match(name)
            if match and os.path.isfile(os.path.join(self.checkpoint_dir, name, TRAINER_STATE)):
                found.append((int(match.group(1)), os.path.join(self.checkpoint_dir, name)))
        return sorted(found)

    def _resume(self):
        """Load the last complete epoch, if any; return the trainer state."""
        fileio.recover_dir(os.path.join(self.checkpoint_dir, 'best_model'))
        epochs = self._epoch_dirs()
        if not epochs:
            return {'epoch': 0, 'best_metric': None, 'best_epoch': None, 'history': []}
        epoch, directory = epochs[-1]
        with open(os.path.join(directory, TRAINER_STATE), encoding='utf-8') as f:
            state = json.load(f)
        meta = checkpoint.read_meta(directory)
        if meta and (meta['model'] != self.model.name or meta.get('labels') != self.model.meta().get('labels')):
            raise checkpoint.CheckpointError(
                f'{directory} belongs to another run ({meta["model"]}, {len(meta.get("labels") or [])} classes); '
                f'use a new checkpoint_dir or delete the old one')
        saved_metric = state.get('compare_metrics')
        if saved_metric is not None and state.get('best_metric') is not None and saved_metric != self.compare_metrics:
            raise ValueError(f'{self.checkpoint_dir} chose its best model by {saved_metric!r}, not by '
                             f'{self.compare_metrics!r}: the scores cannot be compared. Pass '
                             f'compare_metrics={saved_metric!r} to continue this run, or use a new checkpoint_dir.')
        # Read without unpickling arbitrary objects: a damaged or hostile file is named and refused.
        self.model.set_state_dict(checkpoint.load_params(os.path.join(directory, checkpoint.PARAMS_FILE)))
        opt_state = self._optimizer_state(checkpoint.load_state(os.path.join(directory, OPT_FILE)), load=True)
        saved_frozen = bool(state.get('freeze_backbone', False))
        if saved_frozen != self.freeze_backbone:
            # The saved moments cover the parameters that were trained then: a head alone, or the
            # whole network. Keep the schedule; the optimizer starts its moments afresh.
            opt_state = {k: v for k, v in opt_state.items() if k == 'LR_Scheduler'}
            logger.warning('%s was trained with freeze_backbone=%s; continuing with freeze_backbone=%s from its '
                           'weights and learning-rate schedule, with fresh optimizer moments', directory,
                           saved_frozen, self.freeze_backbone)
        self.optimizer.set_state_dict(opt_state)
        logger.info('resuming from %s (epoch %d done)', directory, epoch)
        return state

    def _save_epoch(self, epoch, state, train_stats, result):
        improved = False
        entry = {'epoch': epoch, 'train': train_stats}
        if result is not None:
            entry['eval'] = {'loss': result['loss'], **dict(_scalars(result['metrics']))}
            value = result['loss'] if self.compare_metrics == 'loss' else result['metrics'].get(self.compare_metrics)
            if value is None:
                raise ValueError(f'compare_metrics={self.compare_metrics!r} is not an evaluation metric; choose from '
                                 f'{["loss"] + sorted(k for k, _ in _scalars(result["metrics"]))}')
            best = state['best_metric']
            # A NaN metric (e.g. mAP with no positives) never becomes or beats the best.
            improved = not math.isnan(value) and (
                best is None or (value < best if self.compare_metrics == 'loss' else value > best))
            if improved:
                state = {**state, 'best_metric': value, 'best_epoch': epoch}
        state = {**state, 'epoch': epoch, 'compare_metrics': self.compare_metrics,
                 'freeze_backbone': self.freeze_backbone, 'amp': self.amp, 'history': state['history'] + [entry]}
        if self.scaler is not None:  # fp16's loss scale and its counters: the resumed run goes on with them
            state['loss_scaler'] = self.scaler.state_dict()
        if self.is_main:
            target = os.path.join(self.checkpoint_dir, f'epoch_{epoch}')
            try:
                if improved:
                    fileio.replace_dir(lambda tmp: self._write_model(tmp, result, epoch),
                                           os.path.join(self.checkpoint_dir, 'best_model'))
                fileio.replace_dir(lambda tmp: self._write_epoch(tmp, state), target)
            except OSError as exc:  # e.g. a full disk: say what was kept and how to go on
                kept = self._epoch_dirs()
                kept = f'the last complete checkpoint, {kept[-1][1]}, is kept' if kept else 'no epoch was saved yet'
                raise OSError(exc.errno, f'{exc.strerror or exc} while writing {target}; {kept}. Free space (or fix '
                                         f'the cause) and run again to resume') from None
            self._prune()
            summary = ', '.join(f'{k}={v:.4f}' for k, v in entry.get('eval', train_stats).items())
            logger.info('epoch %d: %s%s', epoch, summary, ' (best so far)' if improved else '')
        if self.world_size > 1:
            dist.barrier()
        return state

    def _write_model(self, directory, result, epoch):
        paddle.save(self.model.state_dict(), os.path.join(directory, checkpoint.PARAMS_FILE))
        fileio.write_json(os.path.join(directory, checkpoint.META_FILE), self.model.meta())
        if result is not None:
            fileio.write_json(os.path.join(directory, 'metrics.json'),
                                  {'epoch': epoch, 'loss': result['loss'], **result['metrics']})
            if 'confusion' in result['metrics']:
                metrics.save_confusion_matrix(result['metrics']['confusion'], self.model.labels, directory)

    def _write_epoch(self, directory, state):
        self._write_model(directory, None, state['epoch'])
        paddle.save(self._optimizer_state(self.optimizer.state_dict(), load=False), os.path.join(directory, OPT_FILE))
        # trainer.json is written last: its presence marks the epoch directory complete.
        fileio.write_json(os.path.join(directory, TRAINER_STATE), state)

    def _optimizer_state(self, state, load):
        """Rename optimizer state between Paddle's per-process parameter names (`conv2d_7.w_0`)
        and the model's structural names (`backbone.conv_block1.conv1.weight`), so a checkpoint
        resumes in any process, whatever else it built first."""
        pairs = [(p.name, name) for name, p in self.model.named_parameters()]
        if load:
            pairs = [(b, a) for a, b in pairs]
        pairs.sort(key=lambda pair: -len(pair[0]))  # longest first: 'fc_1.w_0' before 'fc_1.w'
        renamed = {}
        for key, value in state.items():
            for old, new in pairs:
                if key.startswith(old + '_'):
                    key = new + key[len(old):]
                    break
            renamed[key] = value
        return renamed

    def _prune(self):
        """Keep the last `keep_last` complete epoch_N directories (all with None); remove the rest.

        trainer.json goes first, so a removal cut short leaves a directory that no longer counts
        as complete; the next prune removes such leftovers too.
        """
        complete = [directory for _, directory in self._epoch_dirs()]
        keep = set(complete if self.keep_last is None else complete[-self.keep_last:])
        for name in os.listdir(self.checkpoint_dir) if os.path.isdir(self.checkpoint_dir) else []:
            directory = os.path.join(self.checkpoint_dir, name)
            if _EPOCH_DIR.match(name) and directory not in keep:
                state_file = os.path.join(directory, TRAINER_STATE)
                if os.path.exists(state_file):
                    os.remove(state_file)
                shutil.rmtree(directory, ignore_errors=True)


class WithTeacher(paddle.io.Dataset):
    """A training dataset's items with the teacher's logits of the clip appended."""

    def __init__(self, dataset, logits):
        super().__init__()
        self.dataset, self.logits = dataset, logits

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (*self.dataset[index], self.logits[index])

    def set_epoch(self, epoch):
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(epoch)


AMP_CHOICES = (None, 'bf16', 'fp16')


def _check_amp(amp, use_gpu):
    """amp as given, after checking that the device can run it."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp == 'fp16' and not (use_gpu and paddle.is_compiled_with_cuda()):
        raise ValueError("amp='fp16' needs a CUDA GPU (use_gpu=True with paddlepaddle-gpu): CPUs have no fast "
                         "float16 training. On a CPU use amp='bf16' where supported, or None")
    if amp == 'bf16' and not paddle.amp.is_bfloat16_supported():
        raise ValueError(f"amp='bf16' is not supported on this {'GPU' if use_gpu else 'CPU'} "
                         f"(paddle.amp.is_bfloat16_supported() is False); use amp=None"
                         f"{' or fp16' if use_gpu else ''}")
    if amp == 'bf16' and not bf16_autocast_works():
        raise ValueError("amp='bf16' would change nothing here: PaddlePaddle's dygraph has no bfloat16 "
                         "convolution on the CPU, so paddle.amp.auto_cast leaves the network in float32 "
                         "(float32's results at float32's speed). Use amp=None on the CPU; bf16 is for GPUs "
                         "that support it")
    return amp


def bf16_autocast_works():
    """Whether paddle.amp.auto_cast(bfloat16) really runs a convolution in bfloat16 on the current
    device (CPU builds of Paddle 3.3 accept the context and compute in float32)."""
    conv = paddle.nn.Conv2D(1, 1, 1)
    with paddle.amp.auto_cast(dtype='bfloat16', level='O1'):
        out = conv(paddle.ones([1, 1, 2, 2]))
    return out.dtype == paddle.bfloat16


def _default_metric(dataset):
    """What picks best_model when compare_metrics is not given: event F1 on data with event
    times, else mAP (multi-label) or accuracy."""
    if getattr(dataset, 'strong', False):
        return 'event_f1'
    return 'mAP' if getattr(dataset, 'multi_label', False) else 'acc'


def _check_loss(loss, model):
    """Refuse, before any work, a loss name that is unknown or does not fit the model's scores."""
    if loss is None or not isinstance(loss, str):
        return
    if loss not in losses.LOSSES:
        raise ValueError(f'unknown loss {loss!r}; known: {", ".join(losses.LOSSES)}, or a Layer(logits, target)')
    if model.multi_label and loss in SOFTMAX_LOSSES:
        raise ValueError(f"loss={loss!r} is a loss over a softmax of the classes, but {model.name} is multi-label "
                         f"(independent sigmoid scores, also for event times): use loss='bce' (the default) or a "
                         f"Layer(logits, target) of your own")


def _f1(counts):
    """2 TP / (n_ref + n_est) from deploy.event_metrics' counts; NaN when there is nothing to count."""
    total = counts['n_ref'] + counts['n_est']
    return 2 * counts['tp'] / total if total else math.nan


def _target(data, index):
    """The target of clip `index` without loading its audio where the dataset can say it."""
    return data.target(index) if hasattr(data, 'target') else data[index][1]


def _shorten(labels, limit=12):
    labels = list(labels)
    return repr(labels) if len(labels) <= limit else repr(labels[:limit])[:-1] + f', ... ({len(labels)} labels)]'


def _check_frozen(model, augment):
    """Refuse what freeze_backbone=True cannot do, before any work is done."""
    if model.task != 'sound-cls':
        raise ValueError('freeze_backbone=True trains a classification head (dropout + fc) on cached embeddings; '
                         "build the Module with task='sound-cls' (the AudioSet tagging layer is part of the backbone)")
    if model.pooling != 'embedding':
        raise ValueError(f'freeze_backbone=True trains the head on cached clip embeddings, not frame by frame: '
                         f"build the Module with pooling='embedding' (it has pooling={model.pooling!r}), or train "
                         f'the whole network')
    if augment.enabled:
        defaults = augment_lib.AugmentConfig().to_dict()
        on = [name for name, value in augment.to_dict().items() if value != defaults[name]]
        raise ValueError(f'freeze_backbone=True trains on embeddings computed once per clip, so augmentation of the '
                         f'audio or features cannot apply (on: {", ".join(on)}). Turn it off (augment=None) or '
                         f'train the whole network with freeze_backbone=False.')


def _scalars(result):
    """The single-number metrics of a metrics dict."""
    for name, value in result.items():
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
            yield name, float(value)
