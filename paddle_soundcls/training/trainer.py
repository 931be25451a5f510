"""The training loop: waveforms in, features on the device, loss, metrics, checkpoints.

The loop is Trainer._train_epoch; the rest of the work lives beside it:
    modes.py          which modes combine (one table), the precision, the step a run takes
    steps.py          one step per mode, each one forward pass through the wrapped network
    evaluation.py     scoring as predict and detect score
    checkpointing.py  epoch_N / best_model: save, resume, prune (the layout of checkpoint_dir)
    logs.py           where the figures go (VisualDL, or nowhere)
    data.py           the checks of a dataset against the model, the loader

Every training step, whatever the mode, runs its forward through one Layer (steps.TrainingNet,
or the head alone with a frozen backbone), wrapped once in paddle.DataParallel in a
data-parallel run, so every mode's gradients are averaged over the processes. With
`freeze_backbone=True` the loop takes the backbone's embeddings instead of waveforms: they
are computed once per clip and cached on disk (embeddings.py), and only the head trains.

Re-running with the same `checkpoint_dir` resumes after the last complete epoch. Randomness
is drawn from (seed, epoch[, step]) rather than carried state, so a resumed run continues
exactly as an uninterrupted one would.
"""
import logging
import math

import paddle
import paddle.distributed as dist

from ..device import set_device
from .. import validate
from ..errors import ArgumentError
from ..models.domain import DeviceClassifier
from ..progress import progress_bar
from . import data as data_lib
from . import embeddings, evaluation, losses, metrics, modes, steps
from .augment import AugmentConfig, load_impulse_responses
from .checkpointing import CheckpointDir
from .logs import training_log
from .modes import bf16_autocast_works  # noqa: F401  (benchmarks/bench_train.py imports it from here)
from .schedules import optimizer_schedule, steps_per_epoch
from .teacher import Teacher, teacher_logits

logger = logging.getLogger(__name__)


class Trainer:
    """Fine-tunes a `Module` (PaddleHub-compatible signature).

    Args:
        model: a paddle_soundcls Module (a Layer with `frontend`, `meta()`, `labels`).
        optimizer: a paddle optimizer over model.parameters(). Its LR scheduler (the one it was
            built with, or `lr_scheduler`) is stepped once per batch and saved with the checkpoints.
        use_gpu: train on the GPU (a CPU-only Paddle build raises a clear error).
        use_vdl: write VisualDL scalars under checkpoint_dir/visualization (training/logs.py).
        checkpoint_dir: where epochs, best_model and logs go (default 'ckpt'; training/checkpointing.py).
        compare_metrics: the eval metric that picks best_model ('acc', 'macro_f1', 'top5',
            'mAP', 'AUC', 'f1_micro'; on a dev set with event times also 'event_f1', 'segment_f1',
            'event_f1_macro', 'segment_f1_macro'; on a single-label dev set that names each clip's
            recording device (`devices`, e.g. TAU22) also 'macro_acc', 'log_loss',
            'macro_log_loss', and with its `seen_devices` 'seen_acc', 'unseen_acc'; or 'loss').
            'loss', 'log_loss' and 'macro_log_loss' are minimised, the others maximised. Default:
            'acc', 'mAP' for multi-label models, 'event_f1' when the dev set has event times,
            'macro_acc' (the class-averaged accuracy DCASE task 1 ranks by) when it names devices.
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
            and cached by file content under `embedding_cache` (default
            `<cache_dir()>/embeddings`; training/embeddings.py). Augmentation is refused in this
            mode. best_model holds the whole model as usual; the epochs hold the head, and the
            backbone is saved once. The mode is recorded: a run continued with the other mode
            keeps the weights and the learning-rate schedule and starts the optimizer's moments afresh.
        teacher: knowledge distillation from a Module, a checkpoint directory, an export
            directory, or a list of them (an ensemble: the mean of their logits). The teacher
            scores every training clip whole, once (cached under `teacher_cache`, default
            `<cache_dir()>/teachers`; training/teacher.py); the student learns from
            (1 - kd_lambda) * its loss + kd_lambda * kd_temperature^2 * the distance to the
            teacher's distribution at that temperature (losses.DistillationLoss). With mixup the
            teacher's distributions (not its logits) are mixed with the same coefficient, as
            EfficientAT does. Its labels must be the data's.
        supcon_weight: > 0 adds the supervised contrastive loss (losses.SupConLoss, Khosla et al.
            2020, at supcon_temperature) on the embeddings of two augmented views of every clip,
            times this weight, to the task loss (single-label data, full fine-tuning, augmentation
            on, one process; steps.SupConStep).
        domain_adversarial_weight: > 0 trains a device classifier (models.domain.DeviceClassifier,
            an MLP of `domain_adversarial_hidden` units) on the clip embeddings behind a gradient
            reversal (DANN, Ganin et al. 2016; steps.DomainStep): its cross-entropy on the clips'
            recording devices is added to the task loss, and the backbone gets its gradient
            reversed, times this weight times DANN's schedule 2 / (1 + exp(-gamma * p)) - 1 of the
            training progress p (gamma = domain_adversarial_gamma), so that devices become hard to
            tell apart in the embeddings. The training set must name each clip's device
            (`devices`, e.g. datasets.TAU22; two devices or more). The classifier has its own Adam
            at the optimizer's learning rate and exists for training only: checkpoints hold the
            model alone, and a resumed run starts a new classifier. Refused with a frozen backbone,
            mixup, SupCon, event times, decision-level pooling and fp16.
        max_params, max_macs_per_second: a complexity budget (e.g. DCASE task 1: 128 kB of
            parameters, 30 M MACs per second of audio): a model over it is refused before the
            first step, naming the figures (analysis.complexity.check_budget).
        amp: mixed precision for the network's forward pass: None (float32), 'bf16' (GPUs where
            paddle.amp.is_bfloat16_supported()) or 'fp16' (CUDA GPUs, with dynamic loss scaling);
            see modes.Precision. Resumes exactly as float32 runs do. A precision the device cannot
            run is refused, bf16 on CPUs included (Paddle's dygraph has no bfloat16 convolution there).
        num_threads: threads of Paddle's CPU kernels; None: the count set earlier in this
            process, else every CPU it may use (shared among the processes of a data-parallel
            launch). See device.set_device and device.cpu_threads.
        lr_scheduler: the LRScheduler to step, made the optimizer's (default: the optimizer's own).

    Which modes combine is one table, modes.CONFLICTS. Data with event times
    (datasets.StrongLabelDataset) trains the frame logits against the events' frame targets
    placed on the network's frames by the family's frame geometry; the model must be
    multi-label with decision-level pooling ('max' or 'linear_softmax').
    """

    def __init__(self, model, optimizer, use_gpu=False, use_vdl=True, checkpoint_dir=None, compare_metrics=None,
                 loss=None, label_smoothing=0.0, augment=None, seed=0, keep_last=3, skip_bad_files=False,
                 freeze_backbone=False, embedding_cache=None, teacher=None, kd_lambda=0.5, kd_temperature=2.0,
                 teacher_cache=None, supcon_weight=0.0, supcon_temperature=0.1, max_params=None,
                 max_macs_per_second=None, amp=None, num_threads=None, lr_scheduler=None,
                 domain_adversarial_weight=0.0, domain_adversarial_gamma=10.0, domain_adversarial_hidden=128):
        set_device(use_gpu, num_threads)  # the run's device: every tensor of the loop is made there
        self.use_gpu, self.use_vdl = bool(use_gpu), use_vdl
        self.amp = modes.check_amp(amp, use_gpu)
        losses.DistillationLoss(None, kd_lambda, kd_temperature)  # checks the two settings before any work
        self.compare_metrics = metrics.check_compare_metric(compare_metrics)
        self._chosen_metric = self.compare_metrics   # the user's choice; None: each run's default
        losses.check_loss(loss, model)
        validate.non_negative_number('supcon_weight', supcon_weight)
        self.domain_weight = validate.non_negative_number('domain_adversarial_weight', domain_adversarial_weight)
        self.domain_gamma = validate.positive_number('domain_adversarial_gamma', domain_adversarial_gamma)
        self.domain_hidden = validate.positive_int('domain_adversarial_hidden', domain_adversarial_hidden)
        if self.domain_weight > 0 and self.amp == 'fp16':   # the classifier's own optimizer has no loss scaler
            raise ArgumentError("domain_adversarial_weight > 0 trains in float32 or bf16: drop amp='fp16'")
        self.model, self.optimizer = model, optimizer
        self.augment = augment or AugmentConfig()
        self.freeze_backbone = bool(freeze_backbone)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.teacher, self.supcon_weight = teacher, supcon_weight   # the teacher is loaded once the modes fit
        modes.check_modes(self._modes())
        if max_params is not None or max_macs_per_second is not None:
            _check_budget(model, max_params, max_macs_per_second)
        self.scheduler = optimizer_schedule(optimizer, lr_scheduler)
        self.checkpoint_dir = checkpoint_dir or 'ckpt'
        self.checkpoints = CheckpointDir(self.checkpoint_dir, model, optimizer, keep_last)
        self.log = training_log(use_vdl, self.checkpoint_dir, self.is_main)
        self.loss_spec, self.label_smoothing, self.seed = loss, label_smoothing, seed
        self.skip_bad_files, self.embedding_cache = skip_bad_files, embedding_cache
        self.teacher = None if teacher is None else Teacher(teacher, use_gpu=use_gpu)
        self.kd_lambda, self.kd_temperature, self.teacher_cache = kd_lambda, kd_temperature, teacher_cache
        self.supcon = losses.SupConLoss(supcon_temperature) if supcon_weight > 0 else None
        if self.augment.impulse_responses is not None:  # a folder without audio fails here, before any work
            load_impulse_responses(self.augment.impulse_responses, model.frontend_cfg.sample_rate)
        if self.freeze_backbone:
            model.backbone.eval()
        self.precision = modes.Precision(self.amp)
        self.loss_fn = self.step = None      # made from the training set (class counts, event times)
        self._checked, self._train_counts = set(), None
        # What every training step goes through: the whole model on features (steps.TrainingNet
        # gives each mode its outputs), or with a frozen backbone the head alone on cached
        # embeddings (the backbone never runs in the loop). Wrapped once for data parallelism.
        # With domain-adversarial training the device classifier joins the net once the training
        # set has said how many devices there are (_domain_net), and is wrapped with it.
        self._head = model.part('head') if self.freeze_backbone else None
        self._net = self._head if self.freeze_backbone else steps.TrainingNet(model)
        self._device_optimizer = None
        if self.world_size > 1:
            dist.init_parallel_env()
            if self.domain_weight == 0:
                self._net = paddle.DataParallel(self._net)

    @property
    def scaler(self):
        """fp16's loss scaler (loss_scale.DynamicLossScaler) of the current run, else None."""
        return self.precision.scaler

    # ------------------------------------------------------------------ train
    def train(self, train_dataset, epochs=1, batch_size=1, num_workers=0, eval_dataset=None, log_interval=10,
              save_interval=1):
        """Train for `epochs` epochs (counting epochs already done in checkpoint_dir).

        Evaluates on `eval_dataset` and saves epoch_N every `save_interval` epochs and after
        the last one; best_model follows `compare_metrics`.
        """
        for arg, value in (('epochs', epochs), ('batch_size', batch_size), ('log_interval', log_interval),
                           ('save_interval', save_interval)):
            validate.positive_int(arg, value)
        state = self._start(train_dataset, eval_dataset)
        if state['epoch'] >= epochs:
            logger.info('%s already holds %d epochs; nothing to train', self.checkpoint_dir, state['epoch'])
            return state
        train_data, eval_data = self._loop_data(train_dataset, eval_dataset)
        num_steps = steps_per_epoch(len(train_dataset), batch_size, self.world_size)
        if isinstance(self.step, steps.DomainStep):
            self.step.set_steps(epochs * num_steps, num_steps)
        try:
            for epoch in range(state['epoch'] + 1, epochs + 1):
                train_stats = self._train_epoch(train_data, epoch, epochs, batch_size, num_workers, log_interval,
                                                num_steps)
                if epoch % save_interval and epoch != epochs:
                    continue
                result = None if eval_data is None else self._evaluate(eval_data, batch_size, eval_dataset)
                state = self._save(epoch, state, train_stats, result)
        finally:
            self.log.close()
        return state

    def _train_epoch(self, data, epoch, epochs, batch_size, num_workers, log_interval, num_steps):
        """One pass over `data`: {'loss'} (and 'acc' for single-label data), the epoch's means."""
        paddle.seed(self.seed * 100003 + epoch)  # dropout and Paddle's other draws from (seed, epoch): exact resume
        if hasattr(data, 'set_epoch'):
            data.set_epoch(epoch)
        self._net.train()
        meter = _Meter(self.model.multi_label)
        batches = progress_bar(data_lib.loader(data, batch_size, num_workers, True, self.seed, epoch),
                               total=num_steps, desc=f'epoch {epoch}/{epochs}', show=self.is_main, leave=False,
                               dynamic_ncols=True)
        for step, batch in enumerate(batches, start=1):
            logits, loss, target = self.step(batch, key=(self.seed, epoch, step, self.rank))
            loss_value = float(loss)
            if not math.isfinite(loss_value) and self.scaler is None:  # fp16: the scaler skips such steps
                raise FloatingPointError(
                    f'the training loss became {loss_value} at epoch {epoch}, step {step}. Training stopped; the '
                    f'last good checkpoint in {self.checkpoint_dir} is kept. Lower the learning rate, or check the '
                    f'data for silent or corrupt clips, then run again to resume from it.')
            self.precision.step(loss, self.optimizer, self._net.parameters())
            self.optimizer.clear_grad()
            if self._device_optimizer is not None:   # the device classifier, at the model's learning rate
                self._device_optimizer.set_lr(self.optimizer.get_lr())
                self._device_optimizer.step()
                self._device_optimizer.clear_grad()
            if self.scheduler is not None:
                self.scheduler.step()
            meter.add(loss_value, logits, target)
            shown = {**meter.shown(), 'lr': f'{self.optimizer.get_lr():.2e}'}
            batches.set_postfix(shown)
            if step % log_interval == 0 and self.is_main:
                global_step = (epoch - 1) * num_steps + step
                self.log.scalar('train/loss', loss_value, global_step)
                self.log.scalar('train/lr', self.optimizer.get_lr(), global_step)
                logger.info('epoch %d step %d/%d: %s', epoch, step, num_steps,
                            ', '.join(f'{k}={v}' for k, v in shown.items()))
        batches.close()
        stats = meter.stats()
        self.log.scalars('train', {f'epoch_{name}': value for name, value in stats.items()}, epoch)
        return stats

    # ------------------------------------------------------------------ set-up
    def _modes(self, train_dataset=None):
        return modes.active_modes(self.model, self.augment, self.freeze_backbone, self.teacher is not None,
                                  self.supcon_weight > 0, self.world_size, train_dataset, self.domain_weight > 0)

    def _start(self, train_dataset, eval_dataset):
        """Check the data, resume from checkpoint_dir, and set up the run's precision; the trainer state."""
        if self._chosen_metric is None:  # chosen by what this run's dev set can measure
            self.compare_metrics = metrics.default_metric(train_dataset if eval_dataset is None else eval_dataset)
        self._prepare(train_dataset, 'train')
        if eval_dataset is not None:
            self._prepare(eval_dataset, 'eval')
        duration = getattr(train_dataset, 'duration', None)
        if duration is not None:  # predict treats clips as the training clips were (see Module clip_seconds)
            self.model.clip_seconds = float(duration)
        state = self.checkpoints.resume(self.compare_metrics, self.freeze_backbone)
        self.precision.start(state.get('loss_scaler'))
        if self.is_main:
            self.checkpoints.prune()  # finish a removal that a killed run left half done
        return state

    def _prepare(self, dataset, role):
        """Check a dataset against the model (and a training set against the run's modes) once; a
        training set also sets the loss (class counts) and the step (event times)."""
        data_lib.check_dataset(self.model, dataset, role)
        if role == 'train':
            modes.check_modes(self._modes(dataset))
        data_lib.check_files(dataset, role, self.skip_bad_files, self._checked)
        if role == 'eval':  # devices that do not match the clips are refused before any work
            evaluation.scene_devices(dataset, role)
        if role == 'train' and hasattr(dataset, 'class_counts'):
            self._train_counts = dataset.class_counts()
        if self.loss_fn is None or role == 'train':
            self.loss_fn = losses.training_loss(self.loss_spec, self.model, self._train_counts, self.label_smoothing)
        if role == 'train':
            distill = None if self.teacher is None else losses.DistillationLoss(
                self.loss_fn, self.kd_lambda, self.kd_temperature, self.model.multi_label)
            domain = self._domain_net(dataset) if self.domain_weight > 0 else None
            self.step = modes.build_step(self._net, self.model, self.augment, self.loss_fn, distill,
                                         self.freeze_backbone, bool(getattr(dataset, 'strong', False)), self.supcon,
                                         self.supcon_weight, self.precision.autocast, domain)
        if self.compare_metrics is None:
            self.compare_metrics = metrics.default_metric(dataset)
        metrics.check_metric_fits(self.compare_metrics, dataset, role)

    def _domain_net(self, dataset):
        """The net with a device classifier for the training set's devices (made once), and the
        DomainStep settings (device classifier, weight, gamma)."""
        devices, _ = evaluation.scene_devices(dataset, 'training')
        names = sorted(set(devices))
        net = self._net._layers if isinstance(self._net, paddle.DataParallel) else self._net
        head = net.device_head
        if head is not None and head.num_devices != len(names) and self.world_size > 1:
            # Rewrapping the model in a second DataParallel would leave the first one's gradient
            # hooks on its parameters.
            raise ArgumentError(f'this data-parallel Trainer trained a device classifier for {head.num_devices} '
                                f'devices; the new training set has {len(names)} ({names}): make a new Trainer '
                                f'(in a new launch) for it')
        if head is None or head.num_devices != len(names):
            head = DeviceClassifier(self.model.backbone.emb_size, len(names), hidden=self.domain_hidden)
            net = steps.TrainingNet(self.model, head)
            self._net = paddle.DataParallel(net) if self.world_size > 1 else net
            self._device_optimizer = paddle.optimizer.Adam(learning_rate=self.optimizer.get_lr(),
                                                           parameters=head.parameters())
        return head, self.domain_weight, self.domain_gamma

    def _loop_data(self, train_dataset, eval_dataset):
        """What the loop reads: with a frozen backbone the cached embeddings (computed after the
        resume, which may have loaded other backbone weights); in distillation the training items
        with the teacher's logits appended."""
        train_data, eval_data = train_dataset, eval_dataset
        if self.freeze_backbone:
            train_data = self._embed(train_dataset, 'center')
            eval_data = None if eval_dataset is None else self._embed(eval_dataset, 'segments')
        if self.teacher is not None:
            train_data = data_lib.WithTeacher(train_data, teacher_logits(self.teacher, train_dataset,
                                                                         self.teacher_cache, progress=self.is_main))
        if self.domain_weight > 0:
            train_data = data_lib.WithDevices(train_data, train_dataset.devices)
        return train_data, eval_data

    def _embed(self, dataset, cut):
        """The cached backbone embeddings of `dataset` (computed where missing)."""
        return embeddings.embed_dataset(self.model, dataset, cut=cut,
                                        clip_samples=evaluation.clip_samples(self.model, dataset),
                                        root=self.embedding_cache, rank=self.rank, world_size=self.world_size)

    # ------------------------------------------------------------- save, evaluate
    def _save(self, epoch, state, train_stats, result):
        """Log the evaluation, record the epoch in the trainer state, write its checkpoints (rank 0)."""
        if result is not None:
            self.log.scalars('eval', {'loss': result['loss'], **metrics.scalars(result['metrics']),
                                      **metrics.device_scalars(result['metrics'])}, epoch)
        state, improved = record_epoch(state, epoch, train_stats, result, self.compare_metrics)
        state = {**state, 'compare_metrics': self.compare_metrics, 'freeze_backbone': self.freeze_backbone,
                 'amp': self.amp}
        if self.scaler is not None:  # fp16's loss scale and its counters: the resumed run goes on with them
            state['loss_scaler'] = self.scaler.state_dict()
        if self.is_main:
            state = self.checkpoints.save(epoch, state, result if improved else None)
            entry = state['history'][-1]
            summary = ', '.join(f'{k}={v:.4f}' for k, v in entry.get('eval', entry['train']).items())
            logger.info('epoch %d: %s%s', epoch, summary, ' (best so far)' if improved else '')
        if self.world_size > 1:
            dist.barrier()
        return state

    @paddle.no_grad()
    def evaluate(self, eval_dataset, batch_size=1, num_workers=0):
        """Loss and metrics over the whole dataset: {'loss': float, 'metrics': {...}}.

        Single-label: acc, top5, macro_f1, per-class precision/recall/f1, confusion.
        Single-label data that names each clip's recording device (`devices`, e.g. TAU22) adds
        the scores DCASE task 1 reports (metrics.scene_metrics): class_acc and macro_acc, log_loss
        and macro_log_loss, device_count / device_acc / device_macro_acc / device_log_loss
        ({device: value}), and with `seen_devices` seen_acc, unseen_acc, unseen_devices
        (metrics.scene_table prints them). Multi-label: mAP, AUC, f1_micro. Data with event
        times (a StrongLabelDataset) adds event_f1 / segment_f1 (micro) and event_f1_macro /
        segment_f1_macro (class average) with their precision and recall, from the events
        Module.detect finds in each whole recording; its 'loss' is the training loss of the frame
        logits. Each clip is scored as predict scores it (training/evaluation.py), in item order
        (so the devices line up); with freeze_backbone=True the head runs on
        the cached embeddings of the segments. In a data-parallel run every process evaluates
        the whole set (the same figures everywhere, so all agree on best_model); only rank 0
        writes. num_workers is accepted for PaddleHub's signature; clips are read in this process.
        """
        if self._chosen_metric is None:  # nothing is compared here; a default that fits this set
            self.compare_metrics = None
        self._prepare(eval_dataset, 'eval')
        data = self._embed(eval_dataset, 'segments') if self.freeze_backbone else eval_dataset
        return self._evaluate(data, batch_size, eval_dataset)

    def _evaluate(self, data, batch_size, dataset):
        """evaluate() on an audio dataset, or on an EmbeddingDataset with a frozen backbone;
        `dataset` is the audio dataset (its recording devices, if it names them)."""
        model = self.model
        net = self._head if self.freeze_backbone else (lambda waves: model(model.frontend(waves)))
        devices, seen_devices = evaluation.scene_devices(dataset)
        self._net.eval()
        try:
            return evaluation.evaluate(model, net, data, self.loss_fn, batch_size, self.use_gpu, self.is_main,
                                       devices, seen_devices)
        finally:
            self._net.train()


def record_epoch(state, epoch, train_stats, result, compare_metrics):
    """(the trainer state with this epoch in its history, whether it is the best so far). The
    losses (metrics.MINIMISED_METRICS) are best smallest, the others largest. A NaN metric (e.g.
    mAP with no positives, unseen_acc without unseen devices) never becomes or beats the best."""
    entry = {'epoch': epoch, 'train': train_stats}
    improved = False
    if result is not None:
        entry['eval'] = {'loss': result['loss'], **metrics.scalars(result['metrics'])}
        value = result['loss'] if compare_metrics == 'loss' else result['metrics'].get(compare_metrics)
        smaller_is_better = compare_metrics in metrics.MINIMISED_METRICS
        if value is None:
            raise ArgumentError(f'compare_metrics={compare_metrics!r} is not an evaluation metric; choose from '
                                f'{["loss"] + sorted(metrics.scalars(result["metrics"]))}')
        best = state['best_metric']
        improved = not math.isnan(value) and (
            best is None or (value < best if smaller_is_better else value > best))
        if improved:
            state = {**state, 'best_metric': value, 'best_epoch': epoch}
    return {**state, 'epoch': epoch, 'history': state['history'] + [entry]}, improved


class _Meter:
    """The running loss (and accuracy of single-label data) of an epoch, weighted by batch size."""

    def __init__(self, multi_label):
        self.multi_label = multi_label
        self.loss, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss, logits, target):
        n = logits.shape[0]
        self.loss += loss * n
        self.seen += n
        if not self.multi_label:
            reference = target.argmax(axis=-1) if target.ndim == 2 else target  # mixup: soft targets
            self.correct += int((logits.argmax(axis=-1) == reference.astype('int64')).astype('int64').sum())

    def stats(self):
        stats = {'loss': self.loss / max(self.seen, 1)}
        if not self.multi_label:
            stats['acc'] = self.correct / max(self.seen, 1)
        return stats

    def shown(self):
        """The figures of the progress bar and the step log lines, as text."""
        return {name: f'{value:.4f}' for name, value in self.stats().items()}


def _check_budget(model, max_params, max_macs_per_second):
    from ..analysis.complexity import check_budget, complexity
    report = check_budget(complexity(model, seconds=(1,)), max_params, max_macs_per_second)
    logger.info('%s: %d parameters (%.1f kB at fp16), %d MACs per second of audio: within the budget',
                model.name, report['params']['total'], report['param_memory']['fp16']['kB'],
                report['macs_per_second'])
