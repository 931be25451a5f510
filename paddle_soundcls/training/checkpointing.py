"""A run's checkpoint directory: epoch_N to resume from, best_model to use; written atomically, pruned.

Layout of `checkpoint_dir`:
    epoch_N/       model.pdparams, model.pdopt, meta.json, trainer.json   (the last `keep_last`)
    best_model/    model.pdparams, meta.json, metrics.json, confusion_matrix.{csv,png}
    backbones/     <digest>.pdparams: the backbone of a frozen-backbone run, written once
    visualization/ VisualDL scalars (training/logs.py)

trainer.json is written last: its presence marks an epoch directory complete. best_model
always holds the whole model (Module(name, load_checkpoint='ckpt/best_model'), load_module).
An epoch of a frozen-backbone run holds what trains, the head, in its model.pdparams, and its
trainer.json names the backbone file ('backbone_file'): the backbone does not change in such
a run, so it is written once instead of with every epoch (305 MB for CNN14). Resuming reads
both. Epoch directories of whole models (every other run, and those written before) resume
as they always did.
"""
import json
import logging
import os
import re
import shutil

import paddle

from .. import fileio
from ..checkpoints.files import PARAMS_FILE, TRAINER_STATE, read_checkpoint_params
from ..checkpoints.pdparams import load_state
from ..checkpoints.schema import META_FILE, read_meta
from .. import validate
from ..errors import ArgumentError, CheckpointError
from . import metrics

logger = logging.getLogger(__name__)

OPT_FILE = 'model.pdopt'
BEST_MODEL = 'best_model'
BACKBONES = 'backbones'
BACKBONE = 'backbone.'   # the prefix of the backbone's entries in a Module's state dict
_EPOCH_DIR = re.compile(r'^epoch_(\d+)$')


def new_state():
    """The trainer state of a run that has not trained yet (what trainer.json holds, epoch by epoch)."""
    return {'epoch': 0, 'best_metric': None, 'best_epoch': None, 'history': []}


def check_keep_last(keep_last):
    return validate.positive_int('keep_last', keep_last, allow_none=True,
                                 hint='epoch_N directories kept for resuming; None keeps all')


class CheckpointDir:
    """The epoch_N / best_model directories of a run in `root`, for `model` and `optimizer`."""

    def __init__(self, root, model, optimizer, keep_last=3):
        self.root, self.model, self.optimizer = root, model, optimizer
        self.keep_last = check_keep_last(keep_last)

    def epochs(self):
        """[(epoch, directory)] of the complete epoch directories, oldest first."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            match = _EPOCH_DIR.match(name)
            if match and os.path.isfile(os.path.join(self.root, name, TRAINER_STATE)):
                found.append((int(match.group(1)), os.path.join(self.root, name)))
        return sorted(found)

    # ----------------------------------------------------------------- resume
    def resume(self, compare_metrics, freeze_backbone):
        """Load the model and optimizer of the last complete epoch, if any; return its trainer state."""
        fileio.recover_dir(os.path.join(self.root, BEST_MODEL))
        epochs = self.epochs()
        if not epochs:
            return new_state()
        epoch, directory = epochs[-1]
        state = _read_state(directory)
        meta = read_meta(directory)
        if meta and (meta['model'] != self.model.name or meta.get('labels') != self.model.meta().get('labels')):
            raise CheckpointError(f'{directory} belongs to another run ({meta["model"]}, '
                                  f'{len(meta.get("labels") or [])} classes); use a new checkpoint_dir or delete '
                                  f'the old one')
        saved_metric = state.get('compare_metrics')
        if saved_metric is not None and state.get('best_metric') is not None and saved_metric != compare_metrics:
            raise ArgumentError(f'{self.root} chose its best model by {saved_metric!r}, not by {compare_metrics!r}: '
                                f'the scores cannot be compared. Pass compare_metrics={saved_metric!r} to continue '
                                f'this run, or use a new checkpoint_dir.')
        self.model.set_state_dict(self._params(directory))
        opt_state = rename_optimizer_state(self.model, load_state(os.path.join(directory, OPT_FILE)),
                                           load=True)
        if 'LR_Scheduler' not in opt_state and 'LR_Scheduler' in self.optimizer.state_dict():
            # Paddle cannot start a schedule from the state of a constant rate (it fails an assertion).
            raise CheckpointError(f'{directory} was trained with a constant learning rate and this run has a '
                                  f'learning-rate schedule: they cannot continue each other. Use a new '
                                  f'checkpoint_dir (or the constant rate of the earlier run)')
        saved_frozen = bool(state.get('freeze_backbone', False))
        if saved_frozen != freeze_backbone:
            # The saved moments cover the parameters that were trained then: a head alone, or the
            # whole network. Keep the schedule; the optimizer starts its moments afresh.
            opt_state = {k: v for k, v in opt_state.items() if k == 'LR_Scheduler'}
            logger.warning('%s was trained with freeze_backbone=%s; continuing with freeze_backbone=%s from its '
                           'weights and learning-rate schedule, with fresh optimizer moments', directory,
                           saved_frozen, freeze_backbone)
        self.optimizer.set_state_dict(opt_state)
        logger.info('resuming from %s (epoch %d done)', directory, epoch)
        return state

    def _params(self, directory):
        """The whole model's parameters saved for an epoch: its own file, over the backbone file it names."""
        # Read without unpickling arbitrary objects: a damaged or hostile file is named and refused.
        return read_checkpoint_params(os.path.join(directory, PARAMS_FILE))

    # ------------------------------------------------------------------- save
    def save(self, epoch, state, best_result=None):
        """Write best_model (when best_result, the evaluation of this epoch, is given), then epoch_N
        from `state` (with freeze_backbone set: the head, and the backbone file once), then prune.
        Returns the state as saved."""
        state = {k: v for k, v in state.items() if k != 'backbone_file'}
        target = os.path.join(self.root, f'epoch_{epoch}')
        try:
            if best_result is not None:
                fileio.replace_dir(lambda tmp: self._write_model(tmp, self.model.state_dict(), best_result, epoch),
                                   os.path.join(self.root, BEST_MODEL))
            if state.get('freeze_backbone'):
                state['backbone_file'] = self._save_backbone()
            fileio.replace_dir(lambda tmp: self._write_epoch(tmp, state), target)
        except OSError as exc:  # e.g. a full disk: say what was kept and how to go on
            kept = self.epochs()
            kept = f'the last complete checkpoint, {kept[-1][1]}, is kept' if kept else 'no epoch was saved yet'
            raise OSError(exc.errno, f'{exc.strerror or exc} while writing {target}; {kept}. Free space (or fix '
                                     f'the cause) and run again to resume') from None
        self.prune()
        return state

    def _write_model(self, directory, params, result=None, epoch=None):
        paddle.save(params, os.path.join(directory, PARAMS_FILE))
        fileio.write_json(os.path.join(directory, META_FILE), self.model.meta())
        if result is not None:
            fileio.write_json(os.path.join(directory, 'metrics.json'),
                              {'epoch': epoch, 'loss': result['loss'], **result['metrics']})
            if 'confusion' in result['metrics']:
                metrics.save_confusion_matrix(result['metrics']['confusion'], self.model.labels, directory)

    def _write_epoch(self, directory, state):
        params = self.model.state_dict()
        if state.get('backbone_file'):
            params = {k: v for k, v in params.items() if not k.startswith(BACKBONE)}
        self._write_model(directory, params)
        paddle.save(rename_optimizer_state(self.model, self.optimizer.state_dict(), load=False),
                    os.path.join(directory, OPT_FILE))
        # trainer.json is written last: its presence marks the epoch directory complete.
        fileio.write_json(os.path.join(directory, TRAINER_STATE), state)

    def _save_backbone(self):
        """backbones/<digest of its weights>.pdparams, written unless it is there: the name for trainer.json."""
        from ..export.onnx_cache import weights_digest
        name = f'{BACKBONES}/{weights_digest(self.model.backbone)}.pdparams'
        path = os.path.join(self.root, name)
        if not os.path.isfile(path):
            backbone = {k: v for k, v in self.model.state_dict().items() if k.startswith(BACKBONE)}
            fileio.atomic_write(path, lambda tmp: paddle.save(backbone, tmp))
        return name

    # ------------------------------------------------------------------ prune
    def prune(self):
        """Keep the last `keep_last` complete epoch_N directories (all with None); remove the rest,
        and the backbone files no kept epoch names.

        trainer.json goes first, so a removal cut short leaves a directory that no longer counts
        as complete; the next prune removes such leftovers too.
        """
        complete = [directory for _, directory in self.epochs()]
        keep = complete if self.keep_last is None else complete[-self.keep_last:]
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            directory = os.path.join(self.root, name)
            if _EPOCH_DIR.match(name) and directory not in keep:
                state_file = os.path.join(directory, TRAINER_STATE)
                if os.path.exists(state_file):
                    os.remove(state_file)
                shutil.rmtree(directory, ignore_errors=True)
        folder = os.path.join(self.root, BACKBONES)
        if os.path.isdir(folder):
            used = {os.path.basename(_read_state(d).get('backbone_file') or '') for d in keep}
            for name in os.listdir(folder):
                if name not in used:
                    os.remove(os.path.join(folder, name))
            if not os.listdir(folder):
                os.rmdir(folder)


def _read_state(directory):
    with open(os.path.join(directory, TRAINER_STATE), encoding='utf-8') as f:
        return json.load(f)


def rename_optimizer_state(model, state, load):
    """Rename optimizer state between Paddle's per-process parameter names (`conv2d_7.w_0`) and
    the model's structural names (`backbone.conv_block1.conv1.weight`), so a checkpoint resumes
    in any process, whatever else it built first. load=False: to structural names (saving)."""
    pairs = [(p.name, name) for name, p in model.named_parameters()]
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
