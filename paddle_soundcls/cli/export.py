"""`paddle-soundcls export`: a checkpoint or tagger as a static graph + ONNX in one step, or
model.onnx added to an existing export; then the optional parity check and int8 model; then the
optional TFLite and SavedModel models (--format), converted from the ONNX graphs."""
import argparse
import json
import os
import sys

from .common import PROG, UsageError


def add_parser(subparsers):
    p = subparsers.add_parser('export', help='static graph + ONNX in one step, optionally with a parity check and '
                              'int8')
    p.add_argument('--checkpoint', default=None, help='fine-tuned checkpoint directory (or a saved ensemble)')
    p.add_argument('--model', default=None, help='model name: the pretrained tagger with --task tagging, or for a '
                   'checkpoint without meta.json')
    p.add_argument('--task', choices=('sound-cls', 'tagging'), default='sound-cls')
    p.add_argument('--model-dir', default=None, metavar='EXPORT_DIR',
                   help='instead of --checkpoint/--model: (re)make the ONNX model of this existing export')
    p.add_argument('--output', default=None, help='the export directory to write (replaced only once complete); '
                   'with --model-dir, the .onnx file inside it (default EXPORT_DIR/model.onnx)')
    p.add_argument('--no-onnx', action='store_true', help='the Paddle static model only')
    p.add_argument('--opset', type=int, default=13)
    p.add_argument('--check', default=None, metavar='DATA', help='parity check on these clips: a folder, an ESC-50 '
                   'or class-folder dataset, or a CSV with path,label columns')
    p.add_argument('--check-limit', type=int, default=None, help='check only the first N clips')
    p.add_argument('--format', nargs='+', choices=('onnx',) + TENSORFLOW_FORMATS, default=None, metavar='FORMAT',
                   help='what to write besides the Paddle static graph: onnx (the default), tflite (model.tflite, '
                        'model.frames.tflite, model.embed.tflite; with --quantize int8 also model.int8.tflite) and '
                        'savedmodel (saved_model/), the last two converted from the ONNX graphs (pip install '
                        '\'paddle_soundcls[tflite]\'); with --model-dir, only the formats named are made')
    add_quantize_args(p)
    return p


TENSORFLOW_FORMATS = ('tflite', 'savedmodel')


def run(args):
    """Exit status 0, or 1 when the parity check fails or an int8 model is refused."""
    formats = args.format or ['onnx']
    tensorflow = [f for f in formats if f in TENSORFLOW_FORMATS]
    onnx = 'onnx' in formats or args.model_dir is None   # a new export always has its ONNX graphs
    if args.no_onnx and tensorflow:
        raise UsageError(f'--format {" ".join(tensorflow)} is converted from the ONNX graphs; leave out --no-onnx')
    if tensorflow:
        from ..export.tflite import converter_versions
        converter_versions()   # a missing converter said before any export work
    if args.model_dir is not None and not onnx:
        if args.output is not None:
            raise UsageError('with --model-dir, --output names the .onnx file to make; --format '
                             f'{" ".join(formats)} writes into EXPORT_DIR itself: leave --output out')
        check_data_args(args)
        export_dir, summary = args.model_dir, {'model_dir': os.path.abspath(args.model_dir)}
    else:
        export_dir, summary = (_onnx_of_export(args) if args.model_dir is not None else _new_export(args))
    status = 0
    if args.check and onnx:
        from ..export import check_parity
        summary['parity'] = check_parity(export_dir, args.check, limit=args.check_limit)
        status = 0 if summary['parity']['passed'] else 1
    if args.quantize and onnx:
        status = max(status, run_quantize(args, export_dir, summary))
    if tensorflow:
        status = max(status, run_tensorflow(args, export_dir, tensorflow, summary))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return status


def run_tensorflow(args, model_dir, formats, summary, prog=PROG):
    """--format tflite / savedmodel on the export `model_dir`; adds their entries to summary."""
    from ..errors import QuantizationRefused
    from ..export.tflite import export_tensorflow
    from ..export.quantize import UNCHECKED_WARNING
    from ..deploy import exportdir
    try:
        summary.update(export_tensorflow(
            model_dir, formats, check=args.check, check_limit=args.check_limit, int8=bool(args.quantize),
            calibration=args.calibration, calibration_limit=args.calibration_limit,
            calibration_seconds=args.calibration_seconds, force_int8=args.force_int8))
        status = 0
    except QuantizationRefused as exc:
        summary.update({key: value for key, value in exportdir.read_export(model_dir).items()
                        if key in exportdir.TENSORFLOW_ENTRIES})
        summary['tflite_int8'] = {'refused': True, 'check': exc.summary}
        print(f'{prog}: {exc}', file=sys.stderr)
        status = 1
    if args.quantize and summary.get('tflite_int8', {}).get('checked') is False:
        print(UNCHECKED_WARNING % exportdir.TFLITE_INT8_FILE, file=sys.stderr)
    if 'files' in summary:
        summary['files'] = exportdir.read_export(model_dir)['files']
    return status


def _onnx_of_export(args):
    """--model-dir: (re)make the ONNX model of an existing export; (export dir, summary)."""
    if args.checkpoint is not None or args.model is not None:
        raise UsageError('--model-dir converts an existing export; it goes without --checkpoint and --model')
    if args.no_onnx:
        raise UsageError('--model-dir makes the ONNX model of an existing export; --no-onnx makes no sense with it')
    check_data_args(args)
    from ..export import export_onnx
    meta = export_onnx(args.model_dir, args.output, opset=args.opset)
    if meta.get('ensemble'):
        return args.model_dir, {'model_dir': os.path.abspath(args.model_dir),
                                'members': [{'onnx': m['onnx'], 'file': m['files'][m['onnx']['file']]}
                                            for m in meta['members']]}
    return args.model_dir, {'model_dir': os.path.abspath(args.model_dir), 'onnx': meta['onnx'],
                            'file': meta['files'][meta['onnx']['file']]}


def _new_export(args):
    """--checkpoint / --model: a new export directory; (export dir, summary)."""
    if args.checkpoint is None and args.model is None:
        raise UsageError('pass --checkpoint CKPT_DIR (a fine-tuned model), --model NAME --task tagging (a '
                         'pretrained tagger), or --model-dir EXPORT_DIR (add model.onnx to an export)')
    if args.output is None:
        raise UsageError('--output EXPORT_DIR is required: the export directory to write')
    if args.no_onnx and (args.check or args.quantize):
        raise UsageError('--check and --quantize need the ONNX model; leave out --no-onnx')
    check_data_args(args)
    from ..export import export_static
    from ..ensemble import load_module
    module = load_module(args.checkpoint, model=args.model, task=args.task)
    meta = export_static(module, args.output, opset=None if args.no_onnx else args.opset)
    summary = {'output': os.path.abspath(args.output), 'model': meta['model'], 'task': meta['task'],
               'classes': len(meta['labels']), 'files': meta['files']}
    if meta.get('ensemble'):
        summary['members'] = meta['ensemble']['members']
    return args.output, summary


def add_quantize_args(parser):
    """The int8 options of `paddle-soundcls export` (need --check DATA to be checked)."""
    from ..export import quantize
    d = quantize.DEFAULTS
    g = parser.add_argument_group('int8 quantization (onnxruntime static quantization; model.int8.onnx)')
    g.add_argument('--quantize', choices=('int8',), default=None,
                   help='also write model.int8.onnx, calibrated on --calibration and checked on --check')
    g.add_argument('--calibration', default=None, metavar='DATA',
                   help='clips to fit the int8 activation ranges to (same layouts as --check); not the --check clips')
    g.add_argument('--calibration-limit', type=int, default=d['limit'],
                   help=f'use at most N calibration clips, spread over the list (default {d["limit"]})')
    g.add_argument('--calibration-method', choices=quantize.METHODS, default=d['method'],
                   help=f'how activation ranges are chosen (default {d["method"]})')
    g.add_argument('--calibration-seconds', type=float, default=d['seconds'],
                   help=f'calibration clips are centre-cropped / zero-padded to this length (default {d["seconds"]:g})')
    g.add_argument('--quant-format', choices=quantize.FORMATS, default=d['quant_format'],
                   help=f'qdq (QuantizeLinear/DequantizeLinear nodes) or qoperator (default {d["quant_format"]})')
    g.add_argument('--per-channel', action=argparse.BooleanOptionalAction, default=d['per_channel'],
                   help='one weight scale per output channel (default on)')
    g.add_argument('--keep-float', default=','.join(d['keep_float']), metavar='PARTS',
                   help=f'parts left in float32, comma-separated from {",".join(quantize.KEEP_FLOAT_CHOICES)}, or '
                        f'"none" (default {",".join(d["keep_float"])})')
    g.add_argument('--reduce-range', action='store_true',
                   help='7-bit weights, for CPUs without VNNI (avx512_vnni / avx_vnni) whose int8 kernels may saturate')
    g.add_argument('--force-int8', action='store_true',
                   help='keep the int8 model even when it fails the check (the figures are recorded in export.json)')


def _keep_float(text):
    return () if text.strip().lower() == 'none' else tuple(part.strip() for part in text.split(',') if part.strip())


def check_data_args(args):
    """Fail before any export work on --check and int8 options that cannot work (including
    calibration clips that are also check clips)."""
    from .. import validate
    from ..export import quantize
    from ..export.parity import list_labelled_files
    validate.positive_int('--check-limit', args.check_limit, allow_none=True)
    check_clips = [path for path, _, _ in list_labelled_files(args.check)[:args.check_limit]] if args.check else []
    if not args.quantize:
        if args.calibration is not None or args.force_int8:
            raise UsageError('--calibration and --force-int8 go with --quantize int8')
        return
    if args.calibration is None:
        raise UsageError('--quantize int8 needs --calibration DATA: a few hundred clips like those the model will '
                         'see (a folder, an ESC-50 or class-folder dataset, or a CSV with a path column)')
    quantize.check_settings(args.calibration_method, args.quant_format, _keep_float(args.keep_float))
    quantize.check_seconds(args.calibration_seconds)
    clips = quantize.select_clips(args.calibration, args.calibration_limit)
    if args.check:
        quantize.refuse_overlap(clips, check_clips)


def run_quantize(args, model_dir, summary, prog=PROG):
    """Quantize the export `model_dir` as the int8 options say; adds summary['int8']; returns the exit status."""
    from ..errors import QuantizationRefused
    from ..export import quantize
    try:
        info = quantize.quantize_export(
            model_dir, args.calibration, check=args.check, limit=args.calibration_limit, check_limit=args.check_limit,
            method=args.calibration_method, per_channel=args.per_channel, quant_format=args.quant_format,
            keep_float=_keep_float(args.keep_float), reduce_range=args.reduce_range,
            seconds=args.calibration_seconds, force=args.force_int8)
    except QuantizationRefused as exc:
        summary['int8'] = {'refused': True, 'check': exc.summary}
        print(f'{prog}: {exc}', file=sys.stderr)
        return 1
    summary['int8'] = info
    # The frames figures are in the JSON summary with the clip ones; a dropped frames graph is said here too.
    for entry in info.get('members', [info]):
        if (entry.get('frames') or {}).get('dropped'):
            print(f'{prog}: {model_dir}: {entry["frames"]["dropped"]}', file=sys.stderr)
    if 'files' in summary:
        from ..deploy import exportdir
        summary['files'] = exportdir.read_export(model_dir)['files']
    return 0
