"""`paddle-soundcls`: predict, tag, find events, export, convert, measure and serve from the command line.

    paddle-soundcls predict MODEL_DIR clips/ dog.wav [--top-k 3] [--format table]
    paddle-soundcls predict MODEL_DIR long.wav --window 5 --hop 2.5
    paddle-soundcls tag street.wav [--model panns_cnn14 | --model-dir DIR]
    paddle-soundcls export --checkpoint ckpt/best_model --output exported [--check DATA]
    paddle-soundcls export --checkpoint ckpt/best_model --output exported --check DATA \\
        --quantize int8 --calibration CLIPS                  # + model.int8.onnx, checked on DATA
    paddle-soundcls export --model-dir exported              # (re)make model.onnx of an export
    paddle-soundcls predict exported clips/ --engine onnxruntime_int8
    paddle-soundcls fewshot efficientat_mn10 my_sounds/ --output ckpt_fewshot   # a few clips per class, no training
    paddle-soundcls ensemble ckpt_a/best_model ckpt_b/best_model --output my_ensemble [--weights 2 1]
    paddle-soundcls convert --input mn10_as_mAP_471.pt --output efficientat_mn10.pdparams --model efficientat_mn10
    paddle-soundcls benchmark exported --seconds 5 --batch-size 8 --json
    paddle-soundcls benchmark --model panns_cnn14 --json     # every engine, random weights
    paddle-soundcls events exported street.wav --csv events.csv --plot timeline.png
    paddle-soundcls embed exported archive/ --output archive_embeddings   # Parquet, resumable
    paddle-soundcls index archive_embeddings --output archive_index
    paddle-soundcls search archive_index query.wav --k 10
    paddle-soundcls complexity efficientat_mn10 cpmobile --seconds 1 10
    paddle-soundcls serve exported                           # http://127.0.0.1:8866

MODEL_DIR is a fine-tuned checkpoint directory (model.pdparams + meta.json), a saved ensemble
(ensemble.json) or an export directory (export.json). predict, tag, events, embed, index, search,
benchmark and serve on export directories run without PaddlePaddle. User errors print one line and exit with status 2; a failed parity check, or
an int8 model refused by its check, exits with status 1.
"""
import argparse
import logging

from ..scripts import silence_third_party_noise
from . import benchmark, complexity, convert, embed, ensemble, events, export, fewshot, index, predict, search, serve, \
    tag
from .benchmark import print_benchmark  # noqa: F401  (bench_inference.py prints the same report)
from .common import ENGINE_CHOICES, PROG, UsageError, run_guarded  # noqa: F401  (the names callers use)

# One module per subcommand, each with add_parser(subparsers) and run(args), in the order of --help.
COMMANDS = (predict, tag, events, embed, index, search, export, ensemble, fewshot, convert, complexity, benchmark,
            serve)


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress to stderr')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for command in COMMANDS:
        # The module, not its run function, so that run is looked up when the command runs.
        command.add_parser(subparsers).set_defaults(command_module=command)
    return parser


def main(argv=None):
    silence_third_party_noise()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    return run_guarded(lambda parsed: parsed.command_module.run(parsed), args)
