"""Export a Module as a Paddle static model (Paddle Inference) with export.json beside it.

The exported graph takes log-mel features and outputs scores, not logits: softmax for
'sound-cls', sigmoid for the AudioSet tags. The activation is part of the graph so every
runtime (Paddle Inference, onnxruntime, or someone else's) gets the same numbers the
Module's predict() gives, without having to know which activation the task needs.
The front end is not in the graph: runtimes compute it with the numpy code in
paddle_soundcls.features.mel, using the settings recorded in export.json.
"""
import os

import paddle
import paddle.nn as nn

from .. import checkpoint, registry
from ..deploy import exportdir
from ..hub import MIN_SECONDS, Module

TASK_CHOICES = ('sound-cls', 'tagging')


class ScoresNet(nn.Layer):
    """features [batch, frames, n_mels] float32 -> scores [batch, classes] (softmax or sigmoid)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, features):
        return self.module.scores(self.module(features))


def load_module(checkpoint_dir=None, model=None, task='sound-cls'):
    """The Module to export.

    checkpoint_dir: a fine-tuned checkpoint directory (model.pdparams + meta.json, written
        by the Trainer or `Module.save`). A directory without meta.json needs `model` (and
        task='tagging' for an AudioSet tagger).
    model: a registry name; without checkpoint_dir it must be task='tagging' (the official
        pretrained tagger, whose weights must be in the cache or downloadable).
    task: 'sound-cls' or 'tagging'.
    """
    if task not in TASK_CHOICES:
        raise ValueError(f'task must be one of {TASK_CHOICES}, got {task!r}')
    if model is not None:
        registry.get_cfg(model)  # an unknown name fails here, listing the known ones
    module_task = None if task == 'tagging' else task
    if checkpoint_dir is None:
        if model is None:
            raise ValueError('pass a fine-tuned checkpoint directory, or a model name with task=tagging')
        if task != 'tagging':
            raise ValueError(f'{model} without a checkpoint has no trained classification head; pass a fine-tuned '
                             f'checkpoint directory, or task=tagging for the pretrained AudioSet tagger')
        return Module(name=model, task=None)
    path = os.fspath(checkpoint_dir)
    if not os.path.isdir(path):
        raise checkpoint.CheckpointError(f'checkpoint directory not found: {path}')
    meta = checkpoint.read_meta(path)
    if meta is None:
        if model is None:
            raise checkpoint.CheckpointError(
                f'{path} has no {checkpoint.META_FILE} (written by the Trainer or Module.save), so the model and '
                f'its labels are unknown. Pass the model name (--model NAME, one of {", ".join(registry.list_models())}'
                f') and, for an AudioSet tagger, --task tagging; or point to a directory written by the Trainer, '
                f'e.g. ckpt/best_model.')
        return Module(name=model, task=module_task, load_checkpoint=path)
    if model is not None and model != meta['model']:
        raise checkpoint.CheckpointError(f'{path} holds a {meta["model"]} model, not {model}; drop --model or '
                                         f'pass --model {meta["model"]}')
    return Module(name=meta['model'], load_checkpoint=path)


def export_meta(module):
    """export.json for `module`, before its files are recorded (see deploy.exportdir)."""
    return {
        'format': exportdir.FORMAT,
        'model': module.name,
        'task': 'tagging' if module.task is None else 'sound-cls',
        'labels': list(module.labels),
        'frontend': module.frontend_cfg.to_dict(),
        'min_seconds': MIN_SECONDS,
        'input': {'name': exportdir.INPUT_NAME, 'shape': [None, None, module.frontend_cfg.n_mels],
                  'dtype': 'float32'},
        'output': {'name': exportdir.OUTPUT_NAME, 'shape': [None, len(module.labels)], 'dtype': 'float32',
                   'activation': 'sigmoid' if module.task is None else 'softmax'},
        'files': {},
        'paddle': paddle.__version__,
    }


def save_static(module, directory):
    """paddle.jit.save the scores graph of `module` as directory/inference.{json,pdiparams}."""
    net = ScoresNet(module)
    net.eval()  # dropout off; batch norm uses its running statistics
    spec = paddle.static.InputSpec([None, None, module.frontend_cfg.n_mels], 'float32', name=exportdir.INPUT_NAME)
    paddle.jit.save(net, os.path.join(directory, exportdir.STATIC_PREFIX), input_spec=[spec])
    for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS):
        if not os.path.isfile(os.path.join(directory, name)):
            raise RuntimeError(f'paddle.jit.save did not write {name} (Paddle {paddle.__version__}); '
                               f'Paddle 3.x with PIR is required')


def export_static(module, output_dir, opset=None):
    """Write an export directory for `module` (a Module) at `output_dir`.

    Everything is built in a temporary directory next to `output_dir` and swapped in once
    complete, so an existing export is never replaced by a half-written one.
    opset: also convert to ONNX (model.onnx) with this opset in the same step.
    Returns the export.json contents.
    """
    from .onnx import write_onnx

    module.eval()
    meta = export_meta(module)

    def build(tmp):
        save_static(module, tmp)
        for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS):
            meta['files'][name] = exportdir.file_record(os.path.join(tmp, name))
        if opset is not None:
            write_onnx(tmp, meta, opset)
        checkpoint.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)

    checkpoint.replace_dir(build, os.fspath(output_dir))
    return meta

