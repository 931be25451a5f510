"""`paddle-soundcls embed MODEL_DIR INPUTS --output OUT`: the backbone's embeddings of audio files,
as a Parquet folder (archive/parquet.py) that a rerun resumes and `paddle-soundcls index` reads."""
import argparse

from .common import UsageError, add_engine_args, add_ray_args, expand_inputs, load_model, note, resolve_engine, \
    run_on_ray

HELP = '''The backbone's embedding of every input (one row per file), or of every window of it
(--window / --hop), written to a folder of Parquet files:

    paddle-soundcls embed exported archive/ --output archive_embeddings
    paddle-soundcls embed exported long.wav --window 5 --hop 2.5 --output long_embeddings
    python -c "import pandas; print(pandas.read_parquet('archive_embeddings'))"

Rows: file, start, end (seconds), model, embedding. A rerun skips the inputs already in the
folder, so a killed job resumes where it stopped.
'''
CHUNK_FILES = 16   # inputs per Parquet part: what a kill may cost, and the rows held until it is written


def add_parser(subparsers):
    p = subparsers.add_parser('embed', help='embeddings of audio files, as a resumable Parquet folder',
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=HELP)
    p.add_argument('model_dir', help='an export directory (no Paddle needed) or a checkpoint directory')
    p.add_argument('inputs', nargs='+', help='audio files and/or folders (searched recursively)')
    p.add_argument('--output', required=True, metavar='OUT', help='the folder of Parquet files (created, or resumed)')
    p.add_argument('--window', type=float, default=None, help='seconds: one embedding per window instead of per file')
    p.add_argument('--hop', type=float, default=None, help='seconds between window starts (default: --window)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--workers', type=int, default=0,
                   help='processes decoding audio while the engine embeds (default 0: decode in this process)')
    add_engine_args(p)
    p.add_argument('--threads', type=int, default=None, help='CPU threads (export directories; default all)')
    p.add_argument('--model', default=None, help='model name, only for a checkpoint directory without meta.json')
    add_ray_args(p, '--output OUT')
    return p


def run(args):
    from .. import validate
    from ..archive import parquet
    from ..deploy import pipeline
    if args.hop is not None and args.window is None:
        raise UsageError('--hop needs --window')
    # Before the folder records them: a mistyped value must not become the folder's settings.
    pipeline.check_args(args.batch_size, None, args.window, args.hop)
    validate.integer('--workers', args.workers, 0, 64)
    engine = resolve_engine(args)
    if args.ray is not None:
        return run_on_ray(args, 'embed', args.output, {'batch_size': args.batch_size, 'window': args.window,
                                                       'hop': args.hop}, engine)
    paths = expand_inputs(args.inputs)
    _, model = load_model(args.model_dir, engine, args.threads, args.model)
    settings = parquet.folder_settings(model, args.model_dir, args.window, args.hop)
    kwargs = dict(batch_size=args.batch_size, window=args.window, hop=args.hop, workers=args.workers)
    if not hasattr(model, 'engine_name'):   # a Module: the engine is chosen per call
        kwargs['engine'] = engine
    parquet.open_folder(args.output, settings)   # created, or checked to hold what these settings make
    with parquet.writer_lock(args.output):
        todo = parquet.pending(paths, parquet.recorded_files(args.output))   # what an earlier writer finished
        note(f'{len(paths) - len(todo)} of {len(paths)} inputs already in {args.output} (or named twice), '
             f'{len(todo)} to go')
        parquet.write_chunks(todo, args.output, settings, lambda some: model.embed(some, **kwargs), CHUNK_FILES)
    return 0
