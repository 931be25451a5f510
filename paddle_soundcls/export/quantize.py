"""Static int8 quantization of an export's ONNX model with onnxruntime's own tooling, offline.

    from paddle_soundcls.export.quantize import quantize_export
    quantize_export('exported', calibration='data/calib', check='data/dev')   # + model.int8.onnx

How the int8 model is made (onnxruntime.quantization, nothing is downloaded or installed):
1. `quant_pre_process` runs onnxruntime's basic graph optimisations on model.onnx, so every
   convolution carries its batch norm and ReLU and every Linear is one Gemm: each is then
   quantized as one operator.
2. Calibration: the float model runs on log-mel features of the user's clips, computed with
   the numpy front end (paddle_soundcls.features.mel) exactly as the runtime computes them.
   Every clip is cut to a fixed length (default 5 s, centred; shorter clips are zero-padded
   on both sides) so clips of any length can be batched and no clip weighs more than
   another in the activation ranges.
3. `quantize_static` writes QDQ (QuantizeLinear/DequantizeLinear) nodes: uint8 activations,
   int8 weights, one scale per output channel. The front end stays float32 outside the
   graph; by default the stem (the first convolution, which sees the raw log-mel, and
   whatever normalises it first, such as PANNs' bn0) and the head (what follows the last
   convolution: pooling, Linear layers, softmax/sigmoid) stay float too. Both are found from
   the graph (`float_nodes`), for any convolutional family. They cost a few percent of the
   compute and hold most of the error; the graph output is never quantized.

The check (`paddle_soundcls.export.parity.check_int8`) compares the int8 model with the
float one on clips that are not calibration clips; `quantize_export` refuses (raises
QuantizationRefused, leaving no int8 file) when they disagree, unless forced.

An export with a frame-scores graph (model.frames.onnx, for event detection) has it quantized
too, into model.frames.int8.onnx, with the same calibration clips and settings. Its check
(`parity.check_int8_frames`) compares the frame scores and the detected events of the two
graphs on the check clips. When only that check fails, the int8 clip model is kept but the
frames graph is not: model.frames.int8.onnx is dropped, export.json says why
(int8.frames.dropped), and detection stays float32.
"""
import hashlib
import logging
import os
import tempfile

import numpy as np

from .. import validate
from ..errors import ArgumentError, ExportError, QuantizationRefused
from .. import audio, fileio
from ..deploy import exportdir
from ..features.mel import logmel
from .parity import check_int8, check_int8_frames, list_labelled_files

logger = logging.getLogger(__name__)

METHODS = ('minmax', 'entropy', 'percentile')
FORMATS = ('qdq', 'qoperator')
KEEP_FLOAT_CHOICES = ('stem', 'head')
# Chosen by measuring top-1 agreement with the float model (see the README's int8 section):
# per-channel weights and a float stem and head matter most; the calibration method and the
# number of clips beyond a few dozen hardly change it, and QOperator runs slower than QDQ.
DEFAULTS = {'method': 'minmax', 'per_channel': True, 'quant_format': 'qdq', 'keep_float': ('stem', 'head'),
            'reduce_range': False, 'seconds': 5.0, 'limit': 200}
MAX_CLIPS = 1000    # ranges settle after a few dozen clips; more only costs time (CNN14: ~8 clips/s on 2 CPUs)


def _ort_quantization():
    """onnxruntime.quantization, or a clear error naming what is missing."""
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ImportError(f'int8 quantization needs onnxruntime.quantization, which could not be imported ({exc}); '
                          f'`pip install ml_dtypes` if that is what it names, or upgrade onnxruntime') from None
    return quantization, quant_pre_process


def select_clips(data, limit=DEFAULTS['limit']):
    """Calibration clips of `data` (any layout `list_labelled_files` reads): paths, at most `limit`.

    More clips than `limit` are thinned evenly over the sorted list, so a class-folder
    layout still gives clips of every class rather than the first classes only.
    """
    paths = [path for path, _, _ in list_labelled_files(data)]
    validate.integer('limit', limit, 1, MAX_CLIPS, hint='the number of calibration clips')
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def refuse_overlap(calibration_paths, check_paths):
    """Raise ValueError when a check clip is also a calibration clip (the same file, or a copy).

    A check on the clips the ranges were fitted to says little about other audio.
    """
    calib = {os.path.realpath(p) for p in calibration_paths}
    same = [p for p in check_paths if os.path.realpath(p) in calib]
    # Copies: only files of a size some calibration clip has are worth hashing.
    by_size = {}
    for path in calibration_paths:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    candidates = [p for p in check_paths if p not in same and os.path.getsize(p) in by_size]
    if candidates:
        digests = {exportdir.sha256_file(p) for size in {os.path.getsize(c) for c in candidates}
                   for p in by_size[size]}
        same += [p for p in candidates if exportdir.sha256_file(p) in digests]
    if same:
        raise ArgumentError(f'{len(same)} of the {len(check_paths)} check clips are also calibration clips (e.g. '
                         f'{same[0]}): check the int8 model on other clips (--check DATA with clips not in '
                         f'--calibration), so the check measures how it does on audio it was not fitted to')


def list_digest(paths):
    """sha256 over the contents of the clips, in order: names the calibration set wherever it lives."""
    h = hashlib.sha256()
    for path in paths:
        h.update(exportdir.sha256_file(path).encode())
    return h.hexdigest()


def centre_crop_or_pad(wave, samples):
    """Centre-crop or centre-pad (zeros on both sides) a 1-D waveform to `samples`; unlike
    audio.fix_length, which pads at the end as the training crops do."""
    n = len(wave)
    if n >= samples:
        start = (n - samples) // 2
        return wave[start:start + samples]
    left = (samples - n) // 2
    return np.pad(wave, (left, samples - n - left))


class FeatureReader:
    """onnxruntime CalibrationDataReader: log-mel features of fixed-length clips, in batches.

    clips: audio file paths (any rate and channels) or 1-D numpy waveforms at cfg.sample_rate.
    cfg: the export's FrontendConfig; seconds: the fixed clip length.
    Each item is {'features': float32 [batch, frames, n_mels]}, computed when it is read so
    only one batch is in memory. `set_range` (in batches) lets onnxruntime collect the
    ranges batch by batch (CalibStridedMinMax), which bounds the memory the histogram
    methods need.
    """

    def __init__(self, clips, cfg, seconds=DEFAULTS['seconds'], batch_size=8, progress=True, desc='int8 calibration'):
        from ..progress import progress_bar
        check_seconds(seconds)
        self.clips = list(clips)
        self.cfg = cfg
        self.samples = int(round(seconds * cfg.sample_rate))
        self.batch_size = batch_size
        self.batches = [self.clips[i:i + batch_size] for i in range(0, len(self.clips), batch_size)]
        self.bar = progress_bar(total=len(self.clips), desc=desc, unit='clip', show=progress)
        self.set_range(0, len(self.batches))

    def __len__(self):
        return len(self.batches)

    def set_range(self, start_index, end_index):
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self):
        batch = next(self.pending, None)
        if batch is None:
            return None
        sr = self.cfg.sample_rate
        waves = [centre_crop_or_pad(audio.load(clip, sr, sr), self.samples) for clip in batch]
        self.bar.update(len(batch))
        return {exportdir.INPUT_NAME: logmel(np.stack(waves), self.cfg)}

    def close(self):
        self.bar.close()


def float_nodes(model, keep_float):
    """Names of the nodes of `model` (an onnx.ModelProto after quant_pre_process) to leave in float.

    keep_float: a subset of KEEP_FLOAT_CHOICES. Both parts are found from the graph's edges, so
    they hold for any convolutional network:
    'stem': the first convolutions (those no other Conv feeds) and every node they depend on:
        the input's reshapes and transposes, any normalisation of the raw log-mel (PANNs' bn0),
        and the convolution that reads it.
    'head': every node downstream of a Conv that feeds no Conv: what follows the last
        convolution (its activation, residual addition, pooling, the Linear layers, softmax).
    The node that writes the graph output (softmax / sigmoid scores) is always kept float,
    so scores are not rounded to 1/255.
    """
    nodes = list(model.graph.node)  # ONNX keeps nodes in topological order
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    parents = [{producer[name] for name in node.input if name in producer} for node in nodes]
    children = [{j for out in node.output for j in consumers.get(out, ())} for node in nodes]
    is_conv = [node.op_type == 'Conv' for node in nodes]
    if not any(is_conv):
        raise ExportError('the ONNX graph has no Conv node: the stem and head kept in float are found around the '
                         'convolutions; quantize with keep_float=() or keep the model float')

    # conv_above[i]: a Conv is node i or one of its ancestors; conv_below[i]: a Conv is one of its descendants.
    conv_above = [False] * len(nodes)
    for i in range(len(nodes)):
        conv_above[i] = is_conv[i] or any(conv_above[j] for j in parents[i])
    conv_below = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        conv_below[i] = any(is_conv[j] or conv_below[j] for j in children[i])

    keep = set()
    if 'stem' in keep_float:
        first = [i for i in range(len(nodes)) if is_conv[i] and not any(conv_above[j] for j in parents[i])]
        pending = list(first)
        while pending:
            i = pending.pop()
            if i not in keep:
                keep.add(i)
                pending.extend(parents[i])
    if 'head' in keep_float:
        keep.update(i for i in range(len(nodes)) if conv_above[i] and not is_conv[i] and not conv_below[i])
    outputs = {value.name for value in model.graph.output}
    keep.update(i for i, node in enumerate(nodes) if outputs & set(node.output))
    return [nodes[i].name for i in sorted(keep)]


def check_settings(method, quant_format, keep_float):
    if method not in METHODS:
        raise ArgumentError(f'calibration method must be one of {METHODS}, got {method!r}')
    if quant_format not in FORMATS:
        raise ArgumentError(f'quant_format must be one of {FORMATS}, got {quant_format!r}')
    unknown = set(keep_float) - set(KEEP_FLOAT_CHOICES)
    if unknown:
        raise ArgumentError(f'keep_float takes {KEEP_FLOAT_CHOICES}, got {sorted(unknown)}')


def check_seconds(seconds):
    validate.number_in('seconds', seconds, 0.5, 60, unit='seconds', hint='the calibration clip length')


def quantize_onnx(float_path, int8_path, reader, method=DEFAULTS['method'], per_channel=DEFAULTS['per_channel'],
                  quant_format=DEFAULTS['quant_format'], keep_float=DEFAULTS['keep_float'],
                  reduce_range=DEFAULTS['reduce_range']):
    """Quantize the float ONNX model `float_path` into `int8_path`, calibrated on `reader`.

    reader: a FeatureReader (or any CalibrationDataReader with __len__ and set_range).
    reduce_range: 7-bit weights, for CPUs without VNNI whose int8 kernels may saturate.
    Returns the settings as recorded in export.json.
    """
    import onnx
    import onnxruntime
    check_settings(method, quant_format, keep_float)
    quantization, quant_pre_process = _ort_quantization()
    # The sessions the tooling opens (without options of ours) would list every initializer
    # paddle2onnx left unused as a warning; errors still show.
    onnxruntime.set_default_logger_severity(3)
    methods = {'minmax': quantization.CalibrationMethod.MinMax, 'entropy': quantization.CalibrationMethod.Entropy,
               'percentile': quantization.CalibrationMethod.Percentile}
    formats = {'qdq': quantization.QuantFormat.QDQ, 'qoperator': quantization.QuantFormat.QOperator}
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(int8_path))) as tmp:
        prepared = os.path.join(tmp, 'prepared.onnx')
        # Symbolic shape inference (which needs sympy) adds nothing for a graph this simple.
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        for i, node in enumerate(model.graph.node):
            if not node.name:  # nodes are excluded by name
                node.name = f'{node.op_type}_{i}'
        onnx.save(model, prepared)
        keep = float_nodes(model, keep_float)
        quantization.quantize_static(
            prepared, int8_path, reader, quant_format=formats[quant_format], per_channel=per_channel,
            reduce_range=reduce_range, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, nodes_to_exclude=keep, calibrate_method=methods[method],
            # One batch per collection pass: the histogram methods would otherwise hold every
            # activation of every clip in memory at once (gigabytes for CNN14).
            extra_options={'CalibStridedMinMax': 1})
    return {'method': method, 'per_channel': per_channel, 'quant_format': quant_format.upper(),
            'activation_type': 'uint8', 'weight_type': 'int8', 'reduce_range': reduce_range,
            'keep_float': list(keep_float), 'nodes_excluded': keep, 'onnxruntime': onnxruntime.__version__}


def parameter_memory(onnx_path):
    """What an ONNX model stores, the DCASE rules' "parameter memory" of that file: the bytes of
    its initializers by element type ({'int8': ..., 'float32': ..., 'int32': ...}) and their
    total. In an int8 model the quantized weights take 1 byte each; their scales and zero points,
    the int32 biases, the layers kept float (keep_float) and any constant shapes count what they
    take, so the total is an upper bound of the weights' memory."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(os.fspath(onnx_path)).graph
    # paddle2onnx may store weights as Constant nodes rather than initializers: both count.
    tensors = list(graph.initializer) + [attribute.t for node in graph.node if node.op_type == 'Constant'
                                         for attribute in node.attribute if attribute.name == 'value']
    by_type = {}
    for tensor in tensors:
        array = numpy_helper.to_array(tensor)
        by_type[str(array.dtype)] = by_type.get(str(array.dtype), 0) + int(array.nbytes)
    return {'bytes': dict(sorted(by_type.items())), 'total_bytes': sum(by_type.values())}


def quantize_export(model_dir, calibration, check=None, limit=DEFAULTS['limit'], check_limit=None,
                    method=DEFAULTS['method'], per_channel=DEFAULTS['per_channel'],
                    quant_format=DEFAULTS['quant_format'], keep_float=DEFAULTS['keep_float'],
                    reduce_range=DEFAULTS['reduce_range'], seconds=DEFAULTS['seconds'], force=False, batch_size=8,
                    num_threads=None, progress=True):
    """Add model.int8.onnx to the export directory `model_dir` (which must hold model.onnx).

    calibration: clips to fit the activation ranges to (a folder, an ESC-50 or class-folder
        dataset, or a CSV with a path column); at most `limit` of them (default 200).
    check: labelled or unlabelled clips, none of them calibration clips, on which the int8
        model must agree with the float model (parity.check_int8: top-1 agreement >= 99%,
        accuracy drop <= 0.5 points). Without it the int8 model is recorded as unchecked.
    force: keep an int8 model that fails the check (the figures are still recorded).
    method, per_channel, quant_format, keep_float, reduce_range, seconds: see quantize_onnx
        and FeatureReader.
    An export with model.frames.onnx also gets model.frames.int8.onnx (same clips and settings),
    checked with parity.check_int8_frames when `check` is given; when only that check fails
    (and not force), the clip model is kept, the frames graph is dropped with the reason in
    int8['frames']['dropped'] and a warning, and detection stays float32.
    An ensemble export has each member quantized and checked ({'members': [their entries]}).
    Returns export.json's 'int8' entry. Raises QuantizationRefused (after removing the int8
    model from the export, which otherwise stays as it was) when the check fails.

    The directory is rebuilt beside itself (files hard-linked) and swapped in complete, so a
    failure half-way leaves the export as it was.
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    check_settings(method, quant_format, keep_float)
    check_seconds(seconds)
    meta = exportdir.read_export(model_dir)
    if meta.get('ensemble'):
        # Each member quantized and checked on its own, in a copy of the ensemble (files hard-linked)
        # swapped in whole: a refused member leaves no member quantized.
        import json
        import shutil

        def link_or_copy(src, dst):
            try:
                os.link(src, dst)
            except OSError:  # links not supported here
                shutil.copy2(src, dst)
        entries = []

        def build_ensemble(tmp):
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
            for record in meta['ensemble']['members']:
                staged = os.path.join(tmp, record['dir'])
                try:
                    entry = quantize_export(staged, calibration, check, limit, check_limit, method, per_channel,
                                            quant_format, keep_float, reduce_range, seconds, force, batch_size,
                                            num_threads, progress)
                except QuantizationRefused as exc:
                    raise QuantizationRefused(f'ensemble member {record["dir"]} ({record.get("model")}): {exc} No '
                                              f'member of {model_dir} was quantized.', exc.summary) from None
                if entry.get('check'):   # record where the member will be, not the copy it was checked in
                    final = os.path.join(model_dir, record['dir'])
                    member_json = os.path.join(staged, exportdir.EXPORT_FILE)
                    with open(member_json, encoding='utf-8') as f:
                        member_meta = json.load(f)
                    for recorded in (entry, member_meta['int8']):
                        recorded['check']['model_dir'] = final
                        if (recorded.get('frames') or {}).get('check'):
                            recorded['frames']['check']['model_dir'] = final
                    fileio.write_json(member_json, member_meta)
                entries.append(entry)

        fileio.replace_dir(build_ensemble, model_dir)
        return {'members': entries}
    exportdir.require_file(model_dir, meta, exportdir.ONNX_FILE)
    clips = select_clips(calibration, limit)
    if check is not None:
        check_items = list_labelled_files(check)[:check_limit]
        refuse_overlap(clips, [path for path, _, _ in check_items])
    has_frames = exportdir.FRAMES_FILE in meta['files']
    if has_frames:   # quantized from the file export.json records, not a replaced one
        exportdir.require_file(model_dir, meta, exportdir.FRAMES_FILE)
    cfg = meta.pop('frontend_cfg')
    for name in (exportdir.INT8_FILE, exportdir.FRAMES_INT8_FILE):
        meta['files'].pop(name, None)
    meta.pop('int8', None)
    outcome = {}

    def quantize_file(source, target, desc):
        reader = FeatureReader(clips, cfg, seconds, batch_size, progress, desc)
        try:
            return quantize_onnx(source, target, reader, method, per_channel, quant_format, keep_float, reduce_range)
        finally:
            reader.close()

    def build(tmp):
        exportdir.link_files(model_dir, tmp,
                             skip=(exportdir.EXPORT_FILE, exportdir.INT8_FILE, exportdir.FRAMES_INT8_FILE))
        int8_path = os.path.join(tmp, exportdir.INT8_FILE)
        frames_path = os.path.join(tmp, exportdir.FRAMES_INT8_FILE)
        info = quantize_file(os.path.join(tmp, exportdir.ONNX_FILE), int8_path, 'int8 calibration')
        info['calibration'] = {'data': os.path.abspath(os.fspath(calibration)), 'clips': len(clips),
                               'digest': list_digest(clips), 'seconds': float(seconds), 'method': method}
        info['source_sha256'] = meta['files'][exportdir.ONNX_FILE]['sha256']
        info['file'] = exportdir.INT8_FILE
        info['parameter_memory'] = parameter_memory(int8_path)
        meta['files'][exportdir.INT8_FILE] = exportdir.file_record(int8_path)
        frames = None
        if has_frames:
            quantized = quantize_file(os.path.join(tmp, exportdir.FRAMES_FILE), frames_path,
                                      'int8 calibration (frames)')
            frames = {'file': exportdir.FRAMES_INT8_FILE,
                      'source_sha256': meta['files'][exportdir.FRAMES_FILE]['sha256'],
                      'nodes_excluded': quantized['nodes_excluded'], 'parameter_memory': parameter_memory(frames_path),
                      'checked': False, 'check': None}
            meta['files'][exportdir.FRAMES_INT8_FILE] = exportdir.file_record(frames_path)
            info['frames'] = frames
        meta['int8'] = info
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)
        if check is None:
            info['check'] = None
            info['checked'] = False
        else:
            summary = check_int8(tmp, check, limit=check_limit, batch_size=batch_size, num_threads=num_threads)
            summary['model_dir'] = model_dir
            info['check'] = summary
            info['checked'] = True
            if not summary['passed'] and not force:
                outcome['refused'] = summary
                os.remove(int8_path)
                del meta['files'][exportdir.INT8_FILE]
                del meta['int8']
                if frames is not None:   # detection without the clip model's int8 either
                    os.remove(frames_path)
                    del meta['files'][exportdir.FRAMES_INT8_FILE]
            else:
                if not summary['passed']:
                    info['forced'] = True
                if frames is not None:
                    check_frames(tmp, frames, frames_path)
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)

    def check_frames(tmp, frames, frames_path):
        """The frames check; a failure (not forced) drops the frames graph only."""
        summary = check_int8_frames(tmp, check, limit=check_limit, batch_size=batch_size, num_threads=num_threads)
        summary['model_dir'] = model_dir
        frames['check'], frames['checked'] = summary, True
        if summary['passed']:
            return
        if force:
            frames['forced'] = True
            return
        os.remove(frames_path)
        del meta['files'][exportdir.FRAMES_INT8_FILE]
        frames['file'] = None
        frames['dropped'] = frames_refusal(summary)
        outcome['frames_dropped'] = frames['dropped']

    fileio.replace_dir(build, model_dir)
    if 'refused' in outcome:
        raise QuantizationRefused(refusal_message(outcome['refused']), outcome['refused'])
    if 'frames_dropped' in outcome:
        logger.warning('%s: %s', model_dir, outcome['frames_dropped'])
    if check is None:
        quantized = exportdir.INT8_FILE + (f' and {exportdir.FRAMES_INT8_FILE}' if has_frames else '')
        logger.warning(UNCHECKED_WARNING, os.path.join(model_dir, quantized))
    return meta['int8']


UNCHECKED_WARNING = ('\n' + '!' * 78 + '\n'
                     '%s is UNCHECKED: no check clips were given, so nothing has compared its answers with the '
                     'float model.\nint8 models can disagree with the float model; check it with --check DATA '
                     '(labelled clips that are not calibration clips).\nexport.json records it as unchecked '
                     '(int8.checked = false).\n' + '!' * 78)


def refusal_message(summary, int8_file=exportdir.INT8_FILE, kept='the float export is unchanged'):
    rule = summary['rule']
    figures = f'top-1 agreement {100 * summary["top1_agreement"]:.2f}% (needs >= {100 * rule["min_top1_agreement"]:g}%)'
    if summary.get('accuracy_drop') is not None:
        figures += (f', accuracy {summary["accuracy_fp32"]:.2f}% float vs {summary["accuracy_int8"]:.2f}% int8 '
                    f'(a drop of at most {rule["max_accuracy_drop_points"]:g} points allowed)')
    method = ', --calibration-method percentile or entropy' if int8_file == exportdir.INT8_FILE else ''
    return (f'int8 model refused: on {summary["clips"]} check clips it gives {figures}. {int8_file} was not '
            f'kept; {kept}. Try more or more representative calibration clips '
            f'(--calibration, --calibration-limit){method}, or run float; --force-int8 keeps it anyway.')


def frames_refusal(summary):
    """Why model.frames.int8.onnx was dropped and what to do (export.json's int8.frames.dropped)."""
    rule = summary['rule']
    return (f'{exportdir.FRAMES_INT8_FILE} was not kept: on {summary["clips"]} check clips its events match the float '
            f'events with F1 {summary["event_f1"]:.3f} (needs >= {rule["min_event_f1"]:g}) and its frame scores differ '
            f'by {summary["mean_abs_diff"]:.4f} on average (at most {rule["max_mean_abs_diff"]:g} allowed). '
            f'{exportdir.INT8_FILE} is kept for clip scores; event detection runs the float {exportdir.FRAMES_FILE}. '
            f'Try more or more representative calibration clips (--calibration, --calibration-limit) or another '
            f'--calibration-method; --force-int8 keeps it anyway.')
