"""Export a network as a Paddle static model (Paddle Inference) with export.json beside it.

The exported graph takes log-mel features and outputs scores, not logits: softmax for
single-label models, sigmoid for multi-label ones (the AudioSet tags among them). The
activation is part of the graph so every runtime (Paddle Inference, onnxruntime, or someone
else's) gets the same numbers as `Module.predict`, without having to know which one applies.
The front end is not in the graph: runtimes compute it with the numpy code in
paddle_soundcls.features.mel, using the settings recorded in export.json.

The exporter knows nothing of how the model was built: it takes any Layer with
`export_settings()` (what export.json records; see Module.export_settings) and
`part('scores')` (the features -> scores Layer), or an ensemble of them (`members`).
Loading checkpoints is the Module's job.
"""
import os

import paddle

from .. import fileio
from ..deploy import exportdir
from ..errors import ExportError


def save_static(net, n_mels, directory, prefix=exportdir.STATIC_PREFIX):
    """paddle.jit.save `net` (log-mel features [batch, frames, n_mels] -> anything) as
    directory/<prefix>.{json,pdiparams}, batch and frames dynamic."""
    net.eval()  # dropout off; batch norm uses its running statistics
    spec = paddle.static.InputSpec([None, None, n_mels], 'float32', name=exportdir.INPUT_NAME)
    paddle.jit.save(net, os.path.join(directory, prefix), input_spec=[spec])
    for name in (prefix + '.json', prefix + '.pdiparams'):
        if not os.path.isfile(os.path.join(directory, name)):
            raise ExportError(f'paddle.jit.save did not write {name} (Paddle {paddle.__version__}); '
                               f'Paddle 3.x with PIR is required')


def export_meta(model):
    """export.json for `model`, before its files are recorded (see deploy.exportdir)."""
    settings = model.export_settings()
    n_mels, num_classes = settings['frontend']['n_mels'], len(settings['labels'])
    return {
        'format': exportdir.FORMAT,
        **settings,
        'input': {'name': exportdir.INPUT_NAME, 'shape': [None, None, n_mels], 'dtype': 'float32'},
        'output': {'name': exportdir.OUTPUT_NAME, 'shape': [None, num_classes], 'dtype': 'float32',
                   'activation': 'sigmoid' if settings['multi_label'] else 'softmax'},
        'files': {},
        'paddle': paddle.__version__,
    }


def ensemble_meta(ensemble):
    """export.json of an ensemble export: the ensemble's settings; each member is an export of its
    own under members/N, so the ensemble's graphs and files are its members' (see deploy/ensemble.py)."""
    settings = ensemble.export_settings()
    return {
        'format': exportdir.FORMAT,
        **settings,
        'input': None,   # waveforms: each member computes its own features
        'output': {'name': exportdir.OUTPUT_NAME, 'shape': [None, len(settings['labels'])], 'dtype': 'float32',
                   'activation': 'sigmoid' if settings['multi_label'] else 'softmax'},
        'files': {},
        'paddle': paddle.__version__,
    }


def _write_export(model, directory, opset):
    """The graphs of `model` (a Module) and their export.json in the existing folder `directory`."""
    from .onnx import write_onnx
    meta = export_meta(model)
    # The scores network, the frame-scores network for event detection (features -> [batch,
    # frames', classes]) and the embeddings network (features -> [batch, embedding_size]); all
    # static, so ONNX can be made from them later too.
    n_mels = meta['frontend']['n_mels']
    save_static(model.part('scores'), n_mels, directory)
    save_static(model.part('frames'), n_mels, directory, exportdir.FRAMES_STATIC_PREFIX)
    save_static(model.part('features'), n_mels, directory, exportdir.EMBED_STATIC_PREFIX)
    for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS, exportdir.FRAMES_STATIC_MODEL,
                 exportdir.FRAMES_STATIC_PARAMS, exportdir.EMBED_STATIC_MODEL, exportdir.EMBED_STATIC_PARAMS):
        meta['files'][name] = exportdir.file_record(os.path.join(directory, name))
    if opset is not None:
        write_onnx(directory, meta, opset)
    fileio.write_json(os.path.join(directory, exportdir.EXPORT_FILE), meta)
    return meta


def export_static(model, output_dir, opset=None):
    """Write an export directory for `model` (a Module, or an Ensemble: one export per member
    under members/N) at `output_dir`.

    Everything is built in a temporary directory next to `output_dir` and swapped in once
    complete, so an existing export is never replaced by a half-written one.
    opset: also convert to ONNX (model.onnx, and model.frames.onnx for event detection) with
        this opset in the same step; export_onnx does it later otherwise.
    Returns the export.json contents.
    """
    from ..deploy.ensemble import member_dir

    model.eval()
    members = getattr(model, 'members', None)
    result = {}

    def build(tmp):
        if members is None:
            result.update(_write_export(model, tmp, opset))
            return
        for i, member in enumerate(members):
            os.makedirs(os.path.join(tmp, member_dir(i)))
            _write_export(member, os.path.join(tmp, member_dir(i)), opset)
        result.update(ensemble_meta(model))
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), result)

    fileio.replace_dir(build, os.fspath(output_dir))
    return result
