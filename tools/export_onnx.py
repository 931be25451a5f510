"""Convert an export directory's static model to ONNX (paddle2onnx, offline), optionally checking parity.

    python tools/export_onnx.py --model-dir exported --output exported/model.onnx --opset 13
    python tools/export_onnx.py --model-dir exported --check data/ESC-50-master
    python tools/export_onnx.py --model-dir exported --check data/dev --quantize int8 --calibration data/calib

The ONNX file is checked with onnx.checker and recorded (sha256) in export.json. --check DATA
runs the same clips through Paddle Inference and onnxruntime and prints a JSON summary (max
score difference, top-1 agreement, both accuracies when DATA has labels); the exit status is 1
when they disagree. DATA: a folder of audio files (recursive), an ESC-50 directory
(meta/esc50.csv + audio/), a class-folder dataset, or a CSV file with path,label columns.

--quantize int8 also writes model.int8.onnx (onnxruntime static quantization, calibrated on
the --calibration clips) and checks it against model.onnx on the --check clips, which must
not be calibration clips: below 99% top-1 agreement, or with accuracy more than 0.5 points
lower, it is refused (exit status 1, no int8 file) unless --force-int8. Without --check the
int8 model is recorded as unchecked in export.json.
"""
import argparse
import json
import os
import sys

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.cli import add_quantize_args, check_quantize_args, run_guarded, run_quantize  # noqa: E402


def convert(args):
    from paddle_soundcls.export import check_parity, export_onnx
    check_quantize_args(args)
    meta = export_onnx(args.model_dir, args.output, opset=args.opset)
    summary = {'model_dir': os.path.abspath(args.model_dir), 'onnx': meta['onnx'],
               'file': meta['files'][meta['onnx']['file']]}
    status = 0
    if args.check:
        summary['parity'] = check_parity(args.model_dir, args.check, limit=args.check_limit)
        status = 0 if summary['parity']['passed'] else 1
    if args.quantize:
        status = max(status, run_quantize(args, args.model_dir, summary, prog='export_onnx'))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model-dir', required=True, help='export directory written by tools/export_static.py')
    parser.add_argument('--output', default=None, help='ONNX file inside --model-dir (default MODEL_DIR/model.onnx)')
    parser.add_argument('--opset', type=int, default=13)
    parser.add_argument('--check', default=None, metavar='DATA', help='run the parity check on these clips')
    parser.add_argument('--check-limit', type=int, default=None, help='check only the first N clips')
    add_quantize_args(parser)
    return run_guarded(convert, parser.parse_args(argv), prog='export_onnx')


if __name__ == '__main__':
    sys.exit(main())
