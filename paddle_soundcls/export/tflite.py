"""TFLite and SavedModel exports: the export's ONNX graphs converted by onnx2tf, and checked
before they are kept.

    paddle-soundcls export --model-dir exported --format tflite savedmodel --check clips/
    paddle-soundcls export --model-dir exported --format tflite --quantize int8 --calibration cal/ --check clips/

Files added to the export directory (see deploy/exportdir.py): model.tflite, model.frames.tflite
and model.embed.tflite (the scores, frame-scores and embeddings graphs, float32), model.int8.tflite
(the scores graph as a full-integer model: int8 weights, activations, input and output), and
saved_model/ (the scores graph as a TensorFlow SavedModel, signature 'serving_default').

The graphs take log-mel features [batch, frames, n_mels], as the ONNX graphs do; the front end
stays outside them (deploy.Predictor computes it with numpy: features.mel.logmel). On a phone
that is the better place for it: the same features feed every graph (scores, frames,
embeddings) of one recording, computed once; an STFT inside a full-integer graph would be
quantized too, and 8 bits across the 100 dB of a power spectrum lose the quiet sounds; and the
front end is a few lines of code in any language (FFT, a fixed [n_fft/2+1, n_mels] matrix,
log), whose matrix and settings export.json records.

Every converted graph is run against onnxruntime on generated clips before it is kept (a
converter can place an axis wrongly and still produce a graph that runs): it must agree within
PROBE_TOLERANCE, else the conversion is refused and the export stays as it was. With check
clips the TFLite scores are also compared with Paddle Inference's (parity.check_parity), and
the int8 model with the float TFLite model (parity.check_int8), under the rules of the ONNX
exports.

onnx2tf runs in a subprocess: it imports TensorFlow, and it ends its process on a failed
conversion. It is called with its simplifier off (onnxsim is not among its requirements) and
with calibration data always given for int8 (without any it downloads sample images).
"""
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np

from .. import fileio
from ..deploy import exportdir
from ..deploy.engines import OnnxEngine, TFLiteEngine
from ..errors import ArgumentError, ExportError, QuantizationRefused
from ..features.mel import logmel

FORMATS = ('tflite', 'savedmodel')
# float32 TFLite vs onnxruntime on the probe clips: |difference| <= PROBE_TOLERANCE * max(1, |onnx|)
# (the same arithmetic in another order differs by ~1e-6; an axis placed wrongly by ~0.1 or more).
PROBE_TOLERANCE = 1e-4
CONVERT_TIMEOUT = 1800   # seconds per graph; CNN14 takes about a minute on 2 CPUs
INSTALL_HINT = "pip install 'paddle_soundcls[tflite]'"


def converter_versions():
    """{'converter': 'onnx2tf X', 'tensorflow': Y}; an ExportError naming the install when missing."""
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for key, names in (('converter', ('onnx2tf',)), ('tensorflow', ('tensorflow', 'tensorflow-cpu'))):
        for name in names:
            try:
                found[key] = version(name)
                break
            except PackageNotFoundError:
                continue
        else:
            raise ExportError(f'--format tflite / savedmodel converts with onnx2tf and TensorFlow, and {names[0]} is '
                              f'not installed: {INSTALL_HINT}')
    return {'converter': f'onnx2tf {found["converter"]}', 'tensorflow': found['tensorflow']}


def convert_graph(onnx_path, out_dir, calibration_npy=None):
    """onnx2tf on `onnx_path` into `out_dir`; returns {'float32': path of the float32 .tflite,
    'int8': path of the full-integer .tflite or None, 'savedmodel': the folder holding
    saved_model.pb}."""
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    # onnx2tf rewrites the file it reads (it names unnamed nodes); the export's file is hard-linked
    # into the new directory, so it converts a copy.
    os.makedirs(out_dir, exist_ok=True)
    source = os.path.join(out_dir, os.path.basename(onnx_path))
    shutil.copyfile(onnx_path, source)
    cmd = [sys.executable, '-m', 'onnx2tf', '-i', source, '-o', out_dir, '-kat', exportdir.INPUT_NAME,
           '-nuo', '-n']
    if calibration_npy is not None:
        # Calibration data as is (mean 0, std 1: the features are not images to normalise).
        cmd += ['-oiqt', '-qt', 'per-channel', '-cind', exportdir.INPUT_NAME, calibration_npy, '[0.0]', '[1.0]',
                '-iqd', 'int8', '-oqd', 'int8']
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='-1', PYTHONWARNINGS='ignore')
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CONVERT_TIMEOUT,
                              preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        raise ExportError(f'onnx2tf did not finish converting {onnx_path} in {CONVERT_TIMEOUT} s') from None
    paths = {'float32': os.path.join(out_dir, f'{stem}_float32.tflite'), 'savedmodel': out_dir,
             'int8': os.path.join(out_dir, f'{stem}_full_integer_quant.tflite') if calibration_npy else None}
    missing = [p for p in (paths['float32'], paths['int8'], os.path.join(out_dir, 'saved_model.pb'))
               if p and not os.path.isfile(p)]
    if proc.returncode != 0 or missing:
        # onnx2tf's own ERROR lines name the failing ONNX node; the rest is a trace with tensor dumps.
        lines = [line.strip() for line in re.sub(r'\x1b\[[0-9;]*m', '', proc.stdout + proc.stderr).splitlines()
                 if line.strip()]
        errors = [line for line in lines if line.startswith('ERROR:') and 'trace log' not in line]
        errors = errors or [line for line in lines if 'Error' in line] or lines[-3:]
        raise ExportError(f'onnx2tf could not convert {os.path.basename(onnx_path)} (exit status {proc.returncode}): '
                          f'{" | ".join(errors[:3])[:600] or "no output"}. This model does not convert to TFLite; '
                          f'run it with onnxruntime')
    return paths


def _die_with_parent():
    """In the converter's process: end when the process that started it ends (a killed export
    leaves no converter running on; Linux only, elsewhere nothing)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def probe_waves(sample_rate):
    """Generated clips the converted graphs must agree on: noise, a tone, a sweep, silence and a
    short clip (another frame count), at several levels."""
    rng = np.random.default_rng(0)
    n = 3 * sample_rate
    t = np.arange(n) / sample_rate
    sweep = np.sin(2 * np.pi * (100 + (sample_rate / 4 - 100) * t / 6) * t)
    batch = np.stack([0.1 * rng.standard_normal(n), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.3 * sweep,
                      np.zeros(n), 0.01 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 300 * t)])
    short = 0.2 * rng.standard_normal((1, int(1.3 * sample_rate)))
    return [batch.astype(np.float32), short.astype(np.float32)]


def probe_graph(onnx_path, tflite_path, cfg, min_seconds):
    """max |TFLite - onnxruntime| / max(1, |onnxruntime|) over the probe clips (float32 graphs)."""
    onnx_engine, tflite_engine = OnnxEngine(onnx_path, 1), TFLiteEngine(tflite_path, 1)
    worst = 0.0
    min_samples = int(round(min_seconds * cfg.sample_rate))
    for waves in probe_waves(cfg.sample_rate):
        if waves.shape[1] < min_samples:
            waves = np.pad(waves, ((0, 0), (0, min_samples - waves.shape[1])))
        features = logmel(waves, cfg)
        expected, got = onnx_engine(features), tflite_engine(features)
        if got.shape != expected.shape:
            return float('inf')
        worst = max(worst, float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max())))
    return worst


def write_frontend_arrays(path, cfg):
    """frontend.npz: 'window' [n_fft] (the analysis window, centred in n_fft) and 'mel_filterbank'
    [n_fft // 2 + 1, n_mels], float32: with export.json's frontend settings, what app code needs to
    compute the features the graphs take (docs/deploy.md#tflite-and-savedmodel)."""
    from ..features.mel import config_filterbank, stft_window
    with open(path, 'wb') as f:
        np.savez(f, window=stft_window(cfg).astype(np.float32),
                 mel_filterbank=np.ascontiguousarray(config_filterbank(cfg).T, dtype=np.float32))


def calibration_features(clips, cfg, seconds, progress=True):
    """[clips, frames, n_mels] float32: the features of the calibration clips, centre-cropped or
    padded to `seconds` (as the ONNX int8 export reads them)."""
    from .quantize import FeatureReader
    reader = FeatureReader(clips, cfg, seconds, 8, progress, 'int8 calibration (tflite)')
    try:
        batches = [batch[exportdir.INPUT_NAME] for batch in iter(reader.get_next, None)]
    finally:
        reader.close()
    return np.concatenate(batches).astype(np.float32)


def export_tensorflow(model_dir, formats=('tflite',), check=None, check_limit=None, int8=False, calibration=None,
                      calibration_limit=None, calibration_seconds=None, force_int8=False, num_threads=None,
                      progress=True):
    """Add TFLite (formats 'tflite') and SavedModel ('savedmodel') models to the export directory
    `model_dir`, converted from its ONNX graphs (export it with ONNX first).

    check: clips on which model.tflite must agree with Paddle Inference (parity.check_parity with
        engine='tflite'); the conversion is refused when it does not.
    int8 (with 'tflite'): also model.int8.tflite, calibrated on `calibration` (at most
        `calibration_limit` clips, each cut to `calibration_seconds`) and checked against
        model.tflite on `check` (parity.check_int8, runtime 'tflite'); refused (QuantizationRefused,
        the float files kept) when it fails, unless force_int8.
    Returns {'tflite': entry, 'tflite_int8': entry, 'savedmodel': entry} (those made), the
    entries export.json records. The directory is rebuilt beside itself and swapped in
    complete: a refused or failed conversion leaves the export as it was.
    """
    from . import quantize
    from .parity import check_int8, check_parity, list_labelled_files
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ArgumentError(f'formats must be among {", ".join(FORMATS)}, got {", ".join(map(str, formats)) or "none"}')
    if int8 and 'tflite' not in formats:
        raise ArgumentError('int8 quantization of a TensorFlow model is for TFLite: add tflite to the formats')
    model_dir = os.path.abspath(os.fspath(model_dir))
    meta = exportdir.read_export(model_dir)
    if meta.get('ensemble'):
        raise ExportError(f'{model_dir} is an ensemble export: convert each member (paddle-soundcls export --model-dir '
                          f'{os.path.join(model_dir, meta["ensemble"]["members"][0]["dir"])} --format tflite); the '
                          f'TFLite runtime runs single models')
    versions = converter_versions()
    graphs = [key for key, (onnx_file, _) in exportdir.TFLITE_GRAPHS.items() if onnx_file in meta['files']]
    if 'scores' not in graphs:
        raise ExportError(f'{model_dir} has no {exportdir.ONNX_FILE} to convert: `paddle-soundcls export --model-dir '
                          f'{model_dir}` makes it')
    for key in graphs:
        exportdir.require_file(model_dir, meta, exportdir.TFLITE_GRAPHS[key][0])
    clips = None
    if int8:
        if calibration is None:
            raise ArgumentError('int8 TFLite needs calibration clips (--calibration DATA)')
        clips = quantize.select_clips(calibration, calibration_limit or quantize.DEFAULTS['limit'])
        if check is not None:
            quantize.refuse_overlap(clips, [path for path, _, _ in list_labelled_files(check)[:check_limit]])
    seconds = float(calibration_seconds or quantize.DEFAULTS['seconds'])
    quantize.check_seconds(seconds)
    cfg = meta.pop('frontend_cfg')
    # What is made again is forgotten first; the rest is kept (model.int8.tflite without int8: it was
    # converted from the same model.onnx and stays valid).
    skip = exportdir.drop_tensorflow(meta, formats + (('tflite_int8',) if int8 else ()))
    made, outcome = {}, {}

    def build(tmp):
        exportdir.link_files(model_dir, tmp, skip=(exportdir.EXPORT_FILE,) + skip)
        scratch = os.path.join(tmp, '.tensorflow')
        calibration_npy = None
        if int8:
            calibration_npy = os.path.join(scratch, 'calibration.npy')
            os.makedirs(scratch)
            np.save(calibration_npy, calibration_features(clips, cfg, seconds, progress))
        entry = dict(versions, source_sha256={}, probe={'tolerance': PROBE_TOLERANCE})
        for key in graphs if 'tflite' in formats else ['scores']:
            onnx_file, tflite_file = exportdir.TFLITE_GRAPHS[key]
            onnx_path = os.path.join(tmp, onnx_file)
            out = convert_graph(onnx_path, os.path.join(scratch, key),
                                calibration_npy if key == 'scores' else None)
            worst = probe_graph(onnx_path, out['float32'], cfg, float(meta['min_seconds']))
            if not worst <= PROBE_TOLERANCE:
                raise ExportError(f'the TFLite conversion of {onnx_file} does not compute what it does: on generated '
                                  f'clips its outputs differ from onnxruntime\'s by {worst:.3g} (at most '
                                  f'{PROBE_TOLERANCE:g} allowed); {model_dir} is unchanged. This model does not '
                                  f'convert with {versions["converter"]}; run it with onnxruntime')
            entry['probe'][key] = worst
            entry['source_sha256'][onnx_file] = meta['files'][onnx_file]['sha256']
            if 'tflite' in formats:
                target = os.path.join(tmp, tflite_file)
                os.replace(out['float32'], target)
                meta['files'][tflite_file] = exportdir.file_record(target)
                entry['file' if key == 'scores' else key] = tflite_file
            if key == 'scores' and 'savedmodel' in formats:
                saved = os.path.join(tmp, exportdir.SAVEDMODEL_DIR)
                os.makedirs(saved)
                for name in ('saved_model.pb', 'variables', 'assets', 'fingerprint.pb'):
                    if os.path.exists(os.path.join(out['savedmodel'], name)):
                        os.replace(os.path.join(out['savedmodel'], name), os.path.join(saved, name))
                for root, _, files in os.walk(saved):
                    for name in files:
                        path = os.path.join(root, name)
                        meta['files'][os.path.relpath(path, tmp).replace(os.sep, '/')] = exportdir.file_record(path)
                made['savedmodel'] = dict(versions, dir=exportdir.SAVEDMODEL_DIR,
                                          source_sha256=meta['files'][onnx_file]['sha256'])
            if key == 'scores' and int8:
                target = os.path.join(tmp, exportdir.TFLITE_INT8_FILE)
                os.replace(out['int8'], target)
                meta['files'][exportdir.TFLITE_INT8_FILE] = exportdir.file_record(target)
                made['tflite_int8'] = {'file': exportdir.TFLITE_INT8_FILE, 'source_sha256': entry['source_sha256'],
                                       'calibration': {'data': os.path.abspath(os.fspath(calibration)),
                                                       'clips': len(clips), 'digest': quantize.list_digest(clips),
                                                       'seconds': seconds},
                                       'checked': False, 'check': None}
        shutil.rmtree(scratch)
        if 'tflite' in formats:
            write_frontend_arrays(os.path.join(tmp, exportdir.FRONTEND_ARRAYS), cfg)
            meta['files'][exportdir.FRONTEND_ARRAYS] = exportdir.file_record(os.path.join(tmp, exportdir.FRONTEND_ARRAYS))
            entry['frontend_arrays'] = exportdir.FRONTEND_ARRAYS
            for key in ('frames', 'embed'):
                entry.setdefault(key, None)
            entry['check'] = None
            made['tflite'] = entry
        meta.update(made)
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)
        if check is None or 'tflite' not in formats:
            return
        summary = check_parity(tmp, check, limit=check_limit, num_threads=num_threads, engine='tflite')
        summary['model_dir'] = model_dir
        entry['check'] = summary
        if not summary['passed']:
            raise ExportError(f'model.tflite refused: on {summary["clips"]} check clips its scores differ from Paddle '
                              f'Inference\'s by up to {summary["max_abs_diff"]:.3g} (at most '
                              f'{summary["rule"]["max_abs_diff"]:g}) with top-1 agreement '
                              f'{100 * summary["top1_agreement"]:.2f}%; {model_dir} is unchanged')
        if int8:
            summary = check_int8(tmp, check, limit=check_limit, num_threads=num_threads, runtime='tflite')
            summary['model_dir'] = model_dir
            made['tflite_int8'].update(checked=True, check=summary)
            if not summary['passed']:
                if not force_int8:
                    outcome['refused'] = summary
                    os.remove(os.path.join(tmp, exportdir.TFLITE_INT8_FILE))
                    del meta['files'][exportdir.TFLITE_INT8_FILE]
                    del meta['tflite_int8'], made['tflite_int8']
                else:
                    made['tflite_int8']['forced'] = True
        fileio.write_json(os.path.join(tmp, exportdir.EXPORT_FILE), meta)

    fileio.replace_dir(build, model_dir)
    if 'refused' in outcome:
        raise QuantizationRefused(quantize.refusal_message(
            outcome['refused'], exportdir.TFLITE_INT8_FILE,
            kept=f'the float {" and ".join(formats)} models asked for were written'), outcome['refused'])
    return made
