"""The export directory: its files, `export.json`, and the checks made before running it.

An export directory holds

    inference.json, inference.pdiparams   the Paddle static model (Paddle Inference)
    inference.frames.json, inference.frames.pdiparams
                                          the frame-scores network as a static model (from which
                                          model.frames.onnx is made)
    model.onnx                            the same network in ONNX (optional until exported)
    model.int8.onnx                       model.onnx quantized to int8 (optional; export/quantize.py)
    model.frames.onnx                     frame scores [batch, frames', classes], for event detection
    model.frames.int8.onnx                model.frames.onnx quantized to int8 (optional; made with
                                          model.int8.onnx when the export has a frames graph)
    inference.embed.json, inference.embed.pdiparams
                                          the embedding network (features -> the backbone's clip
                                          embedding) as a static model
    model.embed.onnx                      embeddings [batch, embedding_size], for Predictor.embed
    model.tflite, model.frames.tflite, model.embed.tflite
                                          the three graphs for the TFLite interpreter (optional;
                                          export/tflite.py, converted from the ONNX graphs)
    model.int8.tflite                     model.tflite as a full-integer int8 model (optional)
    frontend.npz                          with the TFLite models: the front end's STFT window and mel
                                          filter bank as arrays, for app code that computes the
                                          features itself (docs/deploy.md#tflite-and-savedmodel)
    saved_model/                          the scores graph as a TensorFlow SavedModel (optional)
    export.json                           what a runtime needs besides the network

export.json (format FORMAT):
    model        registry name, e.g. 'panns_cnn14'
    task         'sound-cls' (a classification head) or 'tagging' (the 527 AudioSet tags)
    labels       class names, in output order
    multi_label  true: independent sigmoid scores (several labels per clip; always for tagging);
                 false: a softmax over the classes
    clip_seconds the clip length the model was trained on, or null: shorter clips are padded to
                 it, longer ones scored as the mean over windows of it (deploy.pipeline.clip_segments)
    frontend     FrontendConfig.to_dict(): the log-mel settings the network expects
    min_seconds  shorter clips (and windows) are zero-padded to this length
    input        {'name': 'features', 'shape': [null, null, n_mels], 'dtype': 'float32'}:
                 log-mel features [batch, frames, n_mels], batch and frames dynamic
    output       {'name': 'scores', 'shape': [null, num_classes], 'dtype': 'float32',
                  'activation': 'softmax' | 'sigmoid'}: the graphs output scores, not logits
    files        {file name: {'sha256': hex, 'bytes': size}} for every file above
    onnx         {'file': 'model.onnx', 'opset': 13, 'paddle2onnx': version} once exported
    frames       {'file': 'model.frames.onnx', 'opset': 13}: the frame-scores graph
    embed        {'file': 'model.embed.onnx', 'opset': 13}: the embeddings graph
    embedding_size  the length of the backbone's clip embedding (what Predictor.embed returns);
                 null in exports of earlier versions, which have no embeddings graph
    events       the EventConfig.to_dict() the model was saved with (tuned thresholds), or null
    frame_geometry {'stride', 'offset'} and, where a frame sees only the input near it, 'context':
                 where the frames of model.frames.onnx sit in time and how far each sees, in
                 front-end frames (paddle_soundcls.frames.FrameGeometry); null in exports of
                 earlier versions, which detection refuses
    int8         once quantized: {'file': 'model.int8.onnx', 'source_sha256': sha256 of the
                 model.onnx it was made from, 'onnxruntime': version, 'method', 'per_channel',
                 'quant_format', 'activation_type', 'weight_type', 'reduce_range', 'keep_float',
                 'nodes_excluded', 'calibration': {'data', 'clips', 'digest', 'seconds', 'method'},
                 'checked': bool, 'check': parity.check_int8 summary or null, 'forced' if kept
                 despite a failed check,
                 'frames': the frame-scores graph's int8 model, when the export has model.frames.onnx:
                   {'file': 'model.frames.int8.onnx' or null when it was dropped, 'source_sha256':
                   sha256 of the model.frames.onnx it was made from, 'nodes_excluded', 'checked',
                   'check': parity.check_int8_frames summary or null, 'forced' if kept despite a
                   failed check, 'dropped': why it was not kept (detection then runs float)}}
    tflite       once converted (export/tflite.py): {'file': 'model.tflite', 'frames':
                 'model.frames.tflite' or null, 'embed': 'model.embed.tflite' or null,
                 'source_sha256': {ONNX file: sha256 of the graph it was converted from},
                 'converter': 'onnx2tf VERSION', 'tensorflow': version, 'probe': the converted
                 graphs against onnxruntime on generated clips, 'check': the scores against
                 Paddle Inference on the user's clips or null}
    tflite_int8  {'file': 'model.int8.tflite', 'source_sha256', 'calibration', 'check' (int8 vs
                 float TFLite, parity.compare_int8) or null, 'checked', 'forced' if kept despite
                 a failed check}
    savedmodel   {'dir': 'saved_model', 'source_sha256', 'converter', 'tensorflow'}

Paddle-free: numpy and the standard library only.
"""
import os
import shutil

from ..checkpoints import schema
from ..errors import ExportError  # (re-exported)
from ..fileio import file_digest as sha256_file  # (re-exported: the package's one file hasher)

FORMAT = schema.EXPORT_FORMAT
EXPORT_FILE = 'export.json'
STATIC_MODEL = 'inference.json'
STATIC_PARAMS = 'inference.pdiparams'
STATIC_PREFIX = 'inference'      # paddle.jit.save / paddle.inference take the path without suffix
FRAMES_STATIC_PREFIX = 'inference.frames'
FRAMES_STATIC_MODEL = FRAMES_STATIC_PREFIX + '.json'
FRAMES_STATIC_PARAMS = FRAMES_STATIC_PREFIX + '.pdiparams'
ONNX_FILE = 'model.onnx'
INT8_FILE = 'model.int8.onnx'
FRAMES_FILE = 'model.frames.onnx'  # frame scores for event detection (made with model.onnx)
FRAMES_INT8_FILE = 'model.frames.int8.onnx'  # model.frames.onnx quantized with model.int8.onnx
EMBED_STATIC_PREFIX = 'inference.embed'
EMBED_STATIC_MODEL = EMBED_STATIC_PREFIX + '.json'
EMBED_STATIC_PARAMS = EMBED_STATIC_PREFIX + '.pdiparams'
EMBED_FILE = 'model.embed.onnx'  # embeddings (made with model.onnx)
# The graphs beside the scores graph: export.json key -> (static model prefix, ONNX file).
OTHER_GRAPHS = {'frames': (FRAMES_STATIC_PREFIX, FRAMES_FILE), 'embed': (EMBED_STATIC_PREFIX, EMBED_FILE)}
# TFLite and SavedModel (export/tflite.py): made from the ONNX graphs, dropped when they are remade.
TFLITE_FILE = 'model.tflite'
TFLITE_INT8_FILE = 'model.int8.tflite'
TFLITE_GRAPHS = {'scores': (ONNX_FILE, TFLITE_FILE), 'frames': (FRAMES_FILE, 'model.frames.tflite'),
                 'embed': (EMBED_FILE, 'model.embed.tflite')}
FRONTEND_ARRAYS = 'frontend.npz'
SAVEDMODEL_DIR = 'saved_model'
TENSORFLOW_ENTRIES = ('tflite', 'tflite_int8', 'savedmodel')   # export.json keys
INPUT_NAME = 'features'
OUTPUT_NAME = 'scores'
TASKS = schema.TASKS


def drop_tensorflow(meta, formats=('tflite', 'tflite_int8', 'savedmodel')):
    """Forget the float TFLite ('tflite'), int8 TFLite ('tflite_int8') and / or SavedModel
    ('savedmodel') models in `meta` (being made again, or made from ONNX graphs being replaced);
    returns the names to leave out of the new directory."""
    names = ()
    if 'tflite' in formats:
        names += (FRONTEND_ARRAYS,) + tuple(tflite for _, tflite in TFLITE_GRAPHS.values())
    if 'tflite_int8' in formats:
        names += (TFLITE_INT8_FILE,)
    if 'savedmodel' in formats:
        names += (SAVEDMODEL_DIR,)
    for key in formats:
        meta.pop(key, None)
    for name in list(meta['files']):
        if name in names or name.split('/')[0] in names:
            del meta['files'][name]
    return names


def file_record(path):
    return {'sha256': sha256_file(path), 'bytes': os.path.getsize(path)}


def is_export_dir(path):
    return os.path.isfile(os.path.join(os.fspath(path), EXPORT_FILE))


def read_export(model_dir):
    """Read and check `model_dir/export.json`; returns it as a dict (see checkpoints.schema)."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ExportError(f'export directory not found: {model_dir}')
    path = os.path.join(model_dir, EXPORT_FILE)
    if not os.path.isfile(path):
        raise ExportError(f'{model_dir} has no {EXPORT_FILE}, so it is not an export directory; create one with '
                          f'`paddle-soundcls export --checkpoint CKPT_DIR --output {model_dir}`')
    return schema.read_export_json(path, model_dir)


def require_file(model_dir, meta, name, verify=True):
    """Path of `name` in the export, after checking it exists and matches the sha256 in export.json."""
    path = os.path.join(model_dir, name)
    hint = {ONNX_FILE: f'create it with `paddle-soundcls export --model-dir {model_dir}`',
            INT8_FILE: f'create it with `paddle-soundcls export --model-dir {model_dir} --quantize int8 '
                       f'--calibration CLIPS --check OTHER_CLIPS`, or run in float32 (engine onnxruntime)',
            FRAMES_INT8_FILE: f'quantize the export again (`paddle-soundcls export --model-dir {model_dir} --quantize '
                              f'int8 --calibration CLIPS --check OTHER_CLIPS`), or detect events in float32 (engine '
                              f'onnxruntime)',
            EMBED_FILE: f'embeddings need the embeddings graph: `paddle-soundcls export --model-dir {model_dir}` makes '
                        f'it from the static export (exports of earlier versions lack its static graph: export the '
                        f'checkpoint again with `paddle-soundcls export --checkpoint CKPT_DIR --output DIR`)',
            FRAMES_FILE: f'event detection needs the frame-scores graph: `paddle-soundcls export --model-dir {model_dir}` '
                         f'makes it from the static export (exports of earlier versions lack its static graph: '
                         f'export the checkpoint again with `paddle-soundcls export --checkpoint CKPT_DIR --output DIR`)',
            }.get(name)
    if hint is None and name.endswith('.tflite'):
        quantize = ' --quantize int8 --calibration CLIPS --check OTHER_CLIPS' if name == TFLITE_INT8_FILE else ''
        hint = (f'create it with `paddle-soundcls export --model-dir {model_dir} --format tflite{quantize}` '
                f'(pip install \'paddle_soundcls[tflite]\' first)')
    hint = hint or 'export the model again'
    if not os.path.isfile(path):
        raise ExportError(f'{path} is missing from the export directory; {hint}')
    record = meta['files'].get(name)
    if record is None:
        raise ExportError(f'{path} is not recorded in {os.path.join(model_dir, EXPORT_FILE)}; {hint}')
    if verify:
        if os.path.getsize(path) != record['bytes'] or sha256_file(path) != record['sha256']:
            raise ExportError(f'{path} is not the file this export wrote (its size or sha256 differs from '
                              f'{EXPORT_FILE}): it was replaced or damaged, perhaps by a file from another '
                              f'model. {hint[0].upper() + hint[1:]}.')
    return path


def link_files(src_dir, dst_dir, skip=()):
    """Hard-link (or copy, where links are not possible) every entry of src_dir but `skip` into dst_dir.

    Used to rebuild an export directory beside itself without copying its large files.
    """
    for entry in os.listdir(src_dir):
        if entry in skip:
            continue
        src, dst = os.path.join(src_dir, entry), os.path.join(dst_dir, entry)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            try:
                os.link(src, dst)
            except OSError:  # another file system, or links not supported
                shutil.copy2(src, dst)
