"""`paddle-soundcls index EMB_DIR... --output INDEX_DIR`: a similarity index over embedding folders
(what `paddle-soundcls embed` writes), for `paddle-soundcls search`."""
import argparse

from ..search.index import DEFAULT_NPROBE
from .common import note

HELP = '''Index the embeddings of one or more embedding folders (all of one model) for similarity
search by cosine similarity (faiss IVF-Flat; see paddle_soundcls/search/index.py):

    paddle-soundcls embed exported archive/ --output archive_embeddings
    paddle-soundcls index archive_embeddings --output archive_index
    paddle-soundcls search archive_index query.wav --k 10

The index folder is replaced whole once complete: a failed build leaves the old one.
'''


def add_parser(subparsers):
    p = subparsers.add_parser('index', help='a similarity index over embedding folders, for search',
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=HELP)
    p.add_argument('sources', nargs='+', metavar='EMB_DIR', help='embedding folders (paddle-soundcls embed --output)')
    p.add_argument('--output', required=True, metavar='INDEX_DIR', help='the index folder (created, or replaced)')
    p.add_argument('--metric', choices=('cosine',), default='cosine')
    p.add_argument('--nlist', type=int, default=None,
                   help='IVF lists (default: about the square root of the number of vectors)')
    p.add_argument('--nprobe', type=int, default=DEFAULT_NPROBE,
                   help=f'lists a query scans unless search says otherwise (default {DEFAULT_NPROBE}: more is slower '
                        f'and closer to exact)')
    return p


def run(args):
    from ..search import index
    meta = index.build_index(args.sources, args.output, metric=args.metric, nlist=args.nlist, nprobe=args.nprobe)
    note(f'indexed {meta["count"]} embeddings of {meta["model"]} ({meta["embedding_size"]} values) into '
         f'{args.output}')
    return 0
