"""CPU inference speed of a PANNs model on Paddle dygraph, Paddle Inference (oneDNN), onnxruntime,
the engine `Predictor` uses by default, and its int8 model (onnxruntime_int8: quantized with the
defaults of paddle_soundcls/export/quantize.py, calibrated on a few generated clips), in one run on
the same inputs. Prints figures; asserts nothing.

    python benchmarks/bench_inference.py --model panns_cnn14 --seconds 5 --batch-size 8 --json

The weights are random (speed does not depend on their values); see
paddle_soundcls/export/benchmark.py for what is measured.
"""
import argparse
import os
import sys

try:
    import paddle_soundcls  # noqa: F401
except ImportError:
    # Run from a source checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_soundcls.cli import add_benchmark_args, print_benchmark, run_guarded  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(parser)
    args = parser.parse_args(argv)
    return run_guarded(print_benchmark, args)


if __name__ == '__main__':
    sys.exit(main())
