"""Export a network as a Paddle static model (Paddle Inference) with export.json beside it.

The exported graph takes log-mel features and outputs scores, not logits: softmax for
single-label models, sigmoid for multi-label ones (the AudioSet tags among them). The
activation is part of the graph so every runtime (Paddle Inference, onnxruntime, or someone
else's) gets the same numbers as `Module.predict`, without having to know which one applies.
The front end is not in the graph: runtimes compute it with the numpy code in
paddle_soundcls.features.mel, using the settings recorded in export.json.

The exporter knows nothing of how the model was built: it takes any Layer with
`export_settings()` (what export.json records; see Module.export_settings) and
`part('scores')` (the features -> scores Layer). Loading checkpoints is the Module's job.
"""
import os
import tempfile

import paddle

from .. import fileio
from ..deploy import exportdir


def save_static(net, n_mels, directory):
    """paddle.jit.save `net` (log-mel features [batch, frames, n_mels] -> anything) as
    directory/inference.{json,pdiparams}, batch and frames dynamic."""
    net.eval()  # dropout off; batch norm uses its running statistics
    spec = paddle.static.InputSpec([None, None, n_mels], 'float32', name=exportdir.INPUT_NAME)
    paddle.jit.save(net, os.path.join(directory, exportdir.STATIC_PREFIX), input_spec=[spec])
    for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS):
        if not os.path.isfile(os.path.join(directory, name)):
            raise RuntimeError(f'paddle.jit.save did not write {name} (Paddle {paddle.__version__}); '
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


def write_frames_onnx(model, directory, meta, opset):
    """The frame-scores graph (features -> [batch, frames', classes], for event detection) as
    directory/model.frames.onnx, recorded in `meta`."""
    import onnx

    from .onnx import convert
    with tempfile.TemporaryDirectory() as tmp:
        save_static(model.part('frames'), meta['frontend']['n_mels'], tmp)
        graph = convert(tmp, opset)
    path = os.path.join(directory, exportdir.FRAMES_FILE)
    onnx.save(graph, path)
    meta['files'][exportdir.FRAMES_FILE] = exportdir.file_record(path)
    meta['frames'] = {'file': exportdir.FRAMES_FILE, 'opset': opset}


def export_static(model, output_dir, opset=None):
    """Write an export directory for `model` (a Module) at `output_dir`.

    Everything is built in a temporary directory next to `output_dir` and swapped in once
    complete, so an existing export is never replaced by a half-written one.
    opset: also convert to ONNX (model.onnx, and model.frames.onnx for event detection) with
        this opset in the same step.
    Returns the export.json contents.
    """
    from .onnx import write_onnx

    model.eval()
    meta = export_meta(model)

    def build(tmp):
        save_static(model.part('scores'), meta['frontend']['n_mels'], tmp)
        for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS):
            meta['files'][name] = exportdir.file_record(os.path.join(tmp, name))
        if opset is not None:
            write_onnx(tmp, meta, opset)
            write_frames_onnx(model, tmp, meta, opset)
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)

    fileio.replace_dir(build, os.fspath(output_dir))
    return meta
