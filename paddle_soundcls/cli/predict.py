"""`paddle-soundcls predict MODEL_DIR INPUTS`: the labels of audio files, with a fine-tuned
checkpoint or an export directory; `tag` shares the options and the output."""
import json
import sys

from ..archive.jsonl import prediction_records
from .common import UsageError, add_deprecated_spelling, add_engine_args, add_ray_args, append_jsonl, expand_inputs, \
    load_model, resolve_engine, run_on_ray

DEFAULT_TAGGER = 'panns_cnn14'


def add_parser(subparsers):
    p = subparsers.add_parser('predict', help='classify audio with a fine-tuned checkpoint or an export directory')
    p.add_argument('model_dir', help='checkpoint directory (model.pdparams + meta.json) or export directory')
    add_output_args(p, top_k=None)
    p.add_argument('--model', default=None, help='model name, only for a checkpoint directory without meta.json')
    return p


def run(args):
    return classify(args, tagging=None)


def add_output_args(parser, top_k):
    """The inputs and the options of predict and tag."""
    parser.add_argument('inputs', nargs='+', help='audio files and/or folders (searched recursively)')
    parser.add_argument('--format', choices=('jsonl', 'table'), default='jsonl')
    parser.add_argument('--top-k', type=int, default=top_k, metavar='K',
                        help=f'labels per result (default: {top_k or "all"})')
    add_deprecated_spelling(parser, '--topk', '--top-k', dest='top_k', type=int, metavar='K')
    parser.add_argument('--threshold', type=float, default=None,
                        help='only labels scoring at least this (multi-label models: every label that applies)')
    parser.add_argument('--window', type=float, default=None, help='window length in seconds: score long audio '
                        'window by window and print a timeline')
    parser.add_argument('--hop', type=float, default=None, help='seconds between window starts (default: --window)')
    parser.add_argument('--reduce', choices=('mean', 'max'), default='mean',
                        help='clip-level scores from the windows (default mean)')
    parser.add_argument('--batch-size', type=int, default=8)
    add_engine_args(parser)
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (export directories; default all)')
    parser.add_argument('--jsonl', default=None, metavar='OUT',
                        help='append one JSON line per input to OUT as it goes; a rerun skips the inputs already '
                             'in OUT (for archives of many files: a killed job resumes where it stopped)')
    add_ray_args(parser, '--jsonl OUT')


def _registered_tagger(name, engine):
    """The predict function of a registered tagger (weights from the cache)."""
    if engine in ('paddle', 'onnxruntime_int8', 'tflite', 'tflite_int8'):
        raise UsageError(f'--engine {engine} needs an export directory (--model-dir); see `paddle-soundcls export '
                         f'--help`' + (' (--quantize int8)' if engine == 'onnxruntime_int8' else
                                  ' (--format tflite)' if engine.startswith('tflite') else ''))
    from ..module import Module
    module = Module(name=name, task='tagging')
    return lambda paths, **kwargs: module.predict(paths, engine=engine, **kwargs)


def classify(args, tagging):
    """predict (tagging=None: either kind of model) and tag (tagging=True)."""
    if args.hop is not None and args.window is None:
        raise UsageError('--hop needs --window')
    engine = resolve_engine(args)
    kwargs = dict(batch_size=args.batch_size, top_k=args.top_k, window=args.window, hop=args.hop, reduce=args.reduce,
                  threshold=args.threshold)
    if args.ray is not None:
        if not args.jsonl or args.model_dir is None:
            raise UsageError('--ray runs an export directory (--model-dir for tag) and writes --jsonl OUT: give both')
        return run_on_ray(args, 'tag' if tagging else 'predict', args.jsonl, kwargs, engine)
    paths = expand_inputs(args.inputs)
    if tagging and args.model_dir is None:
        run = _registered_tagger(args.model or DEFAULT_TAGGER, engine)
    else:
        run, _ = load_model(args.model_dir, engine, args.threads, getattr(args, 'model', None), tagging)
    if args.jsonl:
        return append_jsonl(paths, args.jsonl, lambda some: prediction_records(some, run(some, **kwargs)),
                            4 * args.batch_size)
    print_results(paths, run(paths, **kwargs), args.format)
    return 0


def print_results(paths, results, fmt):
    if fmt == 'jsonl':
        for record in prediction_records(paths, results):
            print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    for path, result in zip(paths, results):
        windowed = isinstance(result, dict) and 'timeline' in result
        scores = result['scores'] if windowed else result
        title = f'{path}  (clip: {len(result["timeline"])} windows)' if windowed else path
        print(title)
        for label, score in scores.items():
            print(f'  {score:8.4f}  {label}')
        if windowed:
            for window in result['timeline']:
                best = ', '.join(f'{label} {score:.3f}' for label, score in list(window['scores'].items())[:3])
                print(f'    {window["start"]:9.2f}-{window["end"]:<9.2f} {best}')
        sys.stdout.flush()
