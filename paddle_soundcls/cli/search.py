"""`paddle-soundcls search INDEX_DIR QUERY...`: the clips of an indexed archive that sound most like
each query audio file."""
import argparse
import json
import os
import sys

from .. import validate
from .common import UsageError, add_engine_args, expand_inputs, load_model, resolve_engine

HELP = '''The k rows of the index (paddle-soundcls index) most similar to each query, best first, by
cosine similarity of their embeddings. A query is an audio file, embedded whole by the model
that made the index (index.json's model_dir, or --model-dir: an export or checkpoint of the
same model):

    paddle-soundcls search archive_index dog.wav --k 5 --format table
    paddle-soundcls search archive_index queries/ --model-dir exported > matches.jsonl

JSON lines: {"query": path, "results": [{"file", "start", "end", "distance", "score"}, ...]};
distance is 1 - score (cosine distance).
'''


def add_parser(subparsers):
    p = subparsers.add_parser('search', help='the indexed clips most like some audio files',
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=HELP)
    p.add_argument('index_dir', metavar='INDEX_DIR', help='an index folder (paddle-soundcls index --output)')
    p.add_argument('queries', nargs='+', metavar='QUERY', help='audio files and/or folders (searched recursively)')
    p.add_argument('--k', type=int, default=10, help='results per query (default 10)')
    p.add_argument('--model-dir', default=None,
                   help="the export or checkpoint that embeds the queries (default: the index's, from index.json)")
    p.add_argument('--format', choices=('jsonl', 'table'), default='jsonl')
    p.add_argument('--nprobe', type=int, default=None,
                   help="IVF lists each query scans (default: the index's; more is slower and closer to exact)")
    p.add_argument('--exact', action='store_true', help='compare with every indexed vector (slow for big indexes)')
    p.add_argument('--batch-size', type=int, default=8)
    add_engine_args(p)
    p.add_argument('--threads', type=int, default=None, help='CPU threads (export directories; default all)')
    return p


def query_model(index, model_dir, engine, threads):
    """The model that embeds queries for `index`: model_dir, or the one index.json names; refused
    when it is another model than the index's."""
    if model_dir is None:
        model_dir = index.model_dir
        if not model_dir or not os.path.isdir(model_dir):
            raise UsageError(f'{index.path} was made from embeddings of {index.model} by {model_dir or "a model"} '
                             f'that is not here: give --model-dir, an export or checkpoint of {index.model}')
    _, model = load_model(model_dir, engine, threads)
    if model.name != index.model:
        raise UsageError(f'--model-dir {model_dir} is {model.name}, but {index.path} holds embeddings of '
                         f'{index.model}: give an export or checkpoint of {index.model}')
    return model, model_dir


def embed_queries(model, paths, batch_size, engine):
    """One whole-clip embedding a path (embed without a window gives one row), [queries, embedding_size]."""
    import numpy as np
    kwargs = dict(batch_size=batch_size)
    if not hasattr(model, 'engine_name'):   # a Module: the engine is chosen per call
        kwargs['engine'] = engine
    return np.stack([result['embeddings'][0] for result in model.embed(paths, **kwargs)])


def run(args):
    from ..search.index import VectorIndex
    engine = resolve_engine(args)
    # Checked before the index and the model load (gigabytes for a big archive): a mistake costs no waiting.
    validate.positive_int('--k', args.k, error=UsageError)
    validate.positive_int('--nprobe', args.nprobe, allow_none=True, error=UsageError)
    paths = expand_inputs(args.queries)
    index = VectorIndex.load(args.index_dir)
    model, _ = query_model(index, args.model_dir, engine, args.threads)
    results = index.search(embed_queries(model, paths, args.batch_size, engine), k=args.k, exact=args.exact,
                           nprobe=args.nprobe)
    print_results(paths, results, args.format)
    return 0


def print_results(paths, results, fmt):
    for path, matches in zip(paths, results):
        if fmt == 'jsonl':
            print(json.dumps({'query': path, 'results': matches}, ensure_ascii=False))
            continue
        print(path)
        for match in matches:
            print(f'  {match["score"]:7.4f}  {match["start"]:9.2f}-{match["end"]:<9.2f} {match["file"]}')
    sys.stdout.flush()
