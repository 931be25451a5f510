"""Convert an export directory's static model to ONNX with paddle2onnx, offline.

paddle2onnx.export() by default runs Polygraphy constant folding on the converted model,
and sets POLYGRAPHY_AUTOINSTALL_DEPS=1 first, so a missing Polygraphy dependency is
pip-installed at run time (which hangs or fails offline, and changes the environment).
We call it with save_file=None: it then returns the ONNX bytes straight from its C++
converter (with its own built-in ONNX optimizer, enable_optimize=True, and checker) and
never reaches the Python optimizer step; optimize_tool=None says the same explicitly.
onnxruntime folds constants itself when it loads the model.
"""
import os
import shutil

from .. import fileio
from ..deploy import exportdir
from ..deploy.engines import stdout_to_stderr
from .. import validate
from ..errors import ArgumentError, ExportError

DEFAULT_OPSET = 13


def convert(static_dir, opset=DEFAULT_OPSET, prefix=exportdir.STATIC_PREFIX):
    """static_dir/<prefix>.{json,pdiparams} -> a checked onnx.ModelProto.

    The graph input is named 'features' and the output 'scores'; initializers that no node
    reads (paddle2onnx leaves a few) are dropped.
    """
    import onnx
    import paddle2onnx

    validate.integer('opset', opset, 7, 23)
    model_file = os.path.join(static_dir, prefix + '.json')
    params_file = os.path.join(static_dir, prefix + '.pdiparams')
    try:
        with stdout_to_stderr():
            raw = paddle2onnx.export(model_file, params_file, save_file=None, opset_version=opset,
                                     auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True,
                                     optimize_tool=None, verbose=False)
    except Exception as exc:
        raise ExportError(f'paddle2onnx could not convert {model_file} with opset {opset}: {exc}. '
                           f'Try a newer opset (e.g. --opset 17).') from None
    model = onnx.load_from_string(raw)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f'{model_file}: expected one input and one output, got {len(graph.input)} and '
                           f'{len(graph.output)}')
    _rename_value(graph, graph.output[0].name, exportdir.OUTPUT_NAME)
    _rename_value(graph, graph.input[0].name, exportdir.INPUT_NAME)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    onnx.checker.check_model(model)
    return model


def _rename_value(graph, old, new):
    if old == new:
        return
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def write_onnx(directory, meta, opset=DEFAULT_OPSET, filename=exportdir.ONNX_FILE):
    """Convert directory's static models to directory/filename (scores), directory/model.frames.onnx
    (frame scores) and directory/model.embed.onnx (embeddings), the last two where the export has
    their static graphs, and record them in `meta`."""
    import onnx
    import paddle2onnx

    model = convert(directory, opset)
    path = os.path.join(directory, filename)
    onnx.save(model, path)
    meta['files'][filename] = exportdir.file_record(path)
    meta['onnx'] = {'file': filename, 'opset': opset, 'paddle2onnx': paddle2onnx.__version__}
    # The other graphs, where the export has their static models (exports of earlier versions may not).
    for key, (prefix, filename) in exportdir.OTHER_GRAPHS.items():
        if prefix + '.json' in meta['files']:
            graph = os.path.join(directory, filename)
            onnx.save(convert(directory, opset, prefix), graph)
            meta['files'][filename] = exportdir.file_record(graph)
            meta[key] = {'file': filename, 'opset': opset}
    return path


def export_onnx(model_dir, output=None, opset=DEFAULT_OPSET):
    """Add an ONNX model to the export directory `model_dir` (written by export_static).

    output: the .onnx path, inside model_dir (default model_dir/model.onnx), so the export
        directory stays self-contained and relocatable.
    The directory is rebuilt beside itself (existing files hard-linked, not copied) and
    swapped in complete, so a failed conversion leaves the old export as it was. An int8
    model (model.int8.onnx, model.frames.int8.onnx) is dropped: it was made from the old model.onnx; quantize again.
    So are the TFLite and SavedModel models (export/tflite.py): convert again.
    Returns the updated export.json contents (an ensemble's, with 'members': each member's).
    An ensemble export gets an ONNX model in every member.
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    meta = exportdir.read_export(model_dir)
    if meta.get('ensemble'):
        if output:
            raise ArgumentError(f'{model_dir} is an ensemble export: each member gets its own model.onnx; leave '
                                f'--output out')
        # Every member converted in a copy of the ensemble (files hard-linked) swapped in whole: a
        # member that fails leaves every member as it was.
        def build_ensemble(tmp):
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
            meta['members'] = [export_onnx(os.path.join(tmp, m['dir']), None, opset)
                               for m in meta['ensemble']['members']]
        fileio.replace_dir(build_ensemble, model_dir)
        meta.pop('frontend_cfg')
        return meta
    for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS):
        exportdir.require_file(model_dir, meta, name)
    output = os.path.abspath(os.fspath(output)) if output else os.path.join(model_dir, exportdir.ONNX_FILE)
    if os.path.dirname(output) != model_dir or not output.endswith('.onnx'):
        raise ArgumentError(f'--output must be a .onnx file directly inside the model directory {model_dir} '
                         f'(e.g. {os.path.join(model_dir, exportdir.ONNX_FILE)}), got {output}')
    filename = os.path.basename(output)
    meta.pop('frontend_cfg')
    # Graphs made again from their static models; an older export without such a model keeps its file.
    remade = ()
    for prefix, onnx_file in exportdir.OTHER_GRAPHS.values():
        if prefix + '.json' in meta['files']:
            for name in (prefix + '.json', prefix + '.pdiparams'):
                exportdir.require_file(model_dir, meta, name)
            remade += (onnx_file,)
    old_onnx = meta.get('onnx', {}).get('file')
    if old_onnx:
        meta['files'].pop(old_onnx, None)
    for stale in (exportdir.INT8_FILE, exportdir.FRAMES_INT8_FILE):
        meta['files'].pop(stale, None)
    meta.pop('int8', None)
    tensorflow = exportdir.drop_tensorflow(meta)   # converted from the old ONNX graphs: convert again

    def build(tmp):
        exportdir.link_files(model_dir, tmp,
                             skip=(exportdir.EXPORT_FILE, filename, old_onnx, exportdir.INT8_FILE,
                                   exportdir.FRAMES_INT8_FILE) + remade + tensorflow)
        write_onnx(tmp, meta, opset, filename)
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)

    fileio.replace_dir(build, model_dir)
    return meta


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # links not supported here
        shutil.copy2(src, dst)
