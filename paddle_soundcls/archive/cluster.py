"""Run predict / tag / events / embed over many files on a Ray cluster, into the resumable outputs
of the one-machine commands.

    from paddle_soundcls.archive.cluster import run_job
    run_job('tag', 'exported', paths, 'tags.jsonl', options={'top_k': 10})          # a local Ray
    run_job('embed', 'exported', paths, 'embeddings', address='auto')               # a running cluster

The work is a Ray Data pipeline: the paths to do -> decode (audio.load, to the model's rate) ->
an actor pool, one Predictor per actor -> the driver, which writes what comes back:

- predict, tag, events: the JSON lines of `paddle-soundcls predict/tag/events --jsonl OUT` (the
  same records functions), appended and fsynced after every batch of files;
- embed: the Parquet parts of `paddle-soundcls embed --output OUT` (archive/parquet.py), a part
  per batch of files.

A rerun skips the inputs already in the output (read as the one-machine commands read it), so a
killed driver resumes where it stopped; each input's line or rows are the same as the
one-machine run's, but the order of inputs in the output is the order batches finished in.

The decode stage asks for the same resources as the actors, so Ray Data fuses the two: each actor
decodes its own batch, and decoded audio never crosses the object store. A file that cannot be
decoded stops the job with an AudioError naming it, as the one-machine commands do; the files
of the batches written before it are kept, and a rerun without it goes on from there.

Every machine of the cluster needs this package (with onnxruntime and ray) installed, and must
read the export directory and the audio files at the paths the driver was given (a shared file
system): nothing is installed or copied at run time.
"""
import contextlib
import json
import logging
import os

from .. import audio, fileio, validate
from ..errors import ArgumentError, AudioError
from .jsonl import event_records, open_jsonl, prediction_records

JOBS = ('predict', 'tag', 'events', 'embed')
# The keyword arguments of the Predictor method each job calls. sample_rate and workers are the
# pipeline's: files are decoded by its decode stage, at the model's rate.
JOB_OPTIONS = {'predict': ('batch_size', 'top_k', 'window', 'hop', 'reduce', 'threshold'),
               'events': ('window', 'hop', 'config', 'batch_size'),
               'embed': ('batch_size', 'window', 'hop')}
JOB_OPTIONS['tag'] = JOB_OPTIONS['predict']
FILES_PER_BATCH = 16   # files per actor call, and per write: what a killed driver may have to redo per actor


def run_job(job, model_dir, paths, output, address=None, options=None, engine='onnxruntime', actors=None,
            threads_per_actor=None, files_per_batch=FILES_PER_BATCH):
    """Run `job` over the audio files `paths` on a Ray cluster, writing `output` as the one-machine
    command does (JSON lines for predict / tag / events, an embedding folder for embed).

    job: 'predict', 'tag' (an AudioSet tagger), 'events' or 'embed'.
    model_dir: an export directory (runs without Paddle); a checkpoint directory is refused.
    output: the JSON-lines file, or the embedding folder; inputs already in it are skipped.
    address: None to start Ray on this machine, else a running cluster's: 'auto', 'HOST:PORT'
        or 'ray://HOST:PORT'. Where this process has already called ray.init, that Ray is used.
    options: keyword arguments of Predictor.predict (predict, tag), .detect (events: window, hop,
        config (an EventConfig or a dict of its fields), batch_size) or .embed (batch_size,
        window, hop).
    engine: the Predictor engine of every actor.
    actors, threads_per_actor: Predictors running at once, and the CPU threads (and CPUs
        reserved) of each; defaults: 1 thread, as many actors as the cluster has CPUs.
    files_per_batch: files per actor call and per write.
    Returns {'inputs': len(paths), 'skipped': inputs already in output, 'written': inputs done now}.
    """
    validate.one_of('job', job, JOBS)
    options = _check_options(job, options)
    threads = validate.positive_int('threads_per_actor', threads_per_actor, allow_none=True) or 1
    validate.positive_int('actors', actors, allow_none=True)
    validate.positive_int('files_per_batch', files_per_batch)
    predictor = _driver_predictor(model_dir, engine)
    options = _resolved_options(job, predictor, options)
    paths = [os.fspath(p) for p in paths]
    from . import parquet
    if job == 'embed':
        settings = parquet.folder_settings(predictor, model_dir, options.get('window'), options.get('hop'))
        todo = parquet.pending(paths, parquet.open_folder(output, settings))
        write = _parquet_writer(output, settings)
    else:
        done = open_jsonl(output)
        todo = [p for p in paths if p not in done]
        write = _jsonl_writer(output)
    summary = {'inputs': len(paths), 'skipped': len(paths) - len(todo), 'written': 0}
    if not todo:
        return summary
    import ray
    with parquet.writer_lock(output) if job == 'embed' else contextlib.nullcontext():
        started = _connect(ray, address)
        try:
            actors = _actor_count(ray, actors, threads)
            batches = _pipeline(ray, todo, job, model_dir, engine, options, predictor.frontend_cfg.sample_rate,
                                actors, threads, files_per_batch)
            summary['written'] = _drain(batches, write, len(todo), job)
        finally:
            if started:
                ray.shutdown()
    return summary


def _check_options(job, options):
    options = dict(options or {})
    allowed = JOB_OPTIONS[job]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ArgumentError(f'options {unknown} do not apply to job {job!r}; it takes {list(allowed)} (files are '
                            f'decoded at the model\'s rate by the job itself)')
    return options


def _driver_predictor(model_dir, engine):
    """The export, loaded once here: a bad directory, engine or option fails before Ray starts."""
    from ..checkpoints.schema import META_FILE
    from ..deploy import Predictor, exportdir
    model_dir = os.fspath(model_dir)
    if not exportdir.is_export_dir(model_dir) and os.path.isfile(os.path.join(model_dir, META_FILE)):
        raise ArgumentError(f'{model_dir} is a checkpoint directory; a cluster job runs export directories (no Paddle '
                            f'on the workers): `paddle-soundcls export --checkpoint {model_dir} --output EXPORT_DIR`, '
                            f'then run the job with EXPORT_DIR')
    return Predictor(model_dir, engine=engine, num_threads=1)


def _resolved_options(job, predictor, options):
    """Check the options as the Predictor method would, before any work; for events, the
    EventConfig every actor runs with (the export's saved settings with `config` on top)."""
    from ..deploy import exportdir, pipeline
    if job in ('predict', 'tag'):
        if job == 'tag' and predictor.task != 'tagging':
            raise ArgumentError(f'{predictor.model_dir} is a {predictor.task} model, not an AudioSet tagger; run '
                                f"job='predict' with it")
        pipeline.check_args(**options)
    elif job == 'embed':
        pipeline.check_args(**options)
        predictor.embedding_size   # an ensemble, or an export without an embeddings graph: refused here
    else:
        validate.positive_int('batch_size', options.get('batch_size'), allow_none=True)
        predictor.frame_scorer(options.get('window'), options.get('hop'))   # checks window, hop and the export
        from ..deploy.events import merge_settings
        options['config'] = merge_settings(options.get('config'), predictor.event_config,
                                           os.path.join(predictor.model_dir, exportdir.EXPORT_FILE))
    return options


def _connect(ray, address):
    """Connect to Ray; True when this call connected (and so must disconnect: ray.shutdown stops a
    Ray it started here, and leaves a cluster it joined running)."""
    if ray.is_initialized():   # the caller's own Ray connection: used as it is, and left to the caller
        return False
    if address is None:   # 'local': a new Ray of this process, even where `ray start` runs one here
        from ..deploy.engines import cpu_count
        ray.init(address='local', num_cpus=cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
        return True
    hint = 'start one with `ray start --head`, or leave address out to run on this machine'
    host, _, port = address.rpartition('://')[2].rpartition(':')
    if port.isdigit():   # Ray itself would retry an address with nothing behind it for minutes
        import socket
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise ArgumentError(f'no Ray cluster answers at address {address!r} ({exc}); {hint}') from None
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ArgumentError(f'cannot connect to the Ray cluster at address {address!r} ({exc}); {hint}') from None
    return True


def _actor_count(ray, actors, threads):
    cpus = int(ray.cluster_resources().get('CPU', 0))
    if actors is None:
        actors = max(1, cpus // threads)
    if actors * threads > cpus:
        raise ArgumentError(f'actors={actors} x threads_per_actor={threads} needs {actors * threads} CPUs; the Ray '
                            f'cluster has {cpus}: ask for fewer, or add machines (`ray start --address HEAD:6379`)')
    return actors


def _pipeline(ray, todo, job, model_dir, engine, options, sample_rate, actors, threads, files_per_batch):
    """The Ray Data pipeline over `todo`: an iterator of result batches (numpy dicts)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False   # the driver draws its own bar, of files written
    # Workers read the absolute path (their working folder is not the driver's); the output names the input as given.
    dataset = ray.data.from_items([{'path': p, 'source': os.path.abspath(p)} for p in todo])
    # Same num_cpus as the actors: Ray Data fuses decoding into them (see the module docstring).
    dataset = dataset.map(_decode, fn_kwargs={'sample_rate': sample_rate}, num_cpus=threads)
    dataset = dataset.map_batches(JobActor, fn_constructor_args=(job, os.path.abspath(model_dir), engine, threads,
                                                                 options),
                                  compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                                  batch_size=files_per_batch, batch_format='numpy')
    return dataset.iter_batches(batch_size=None, batch_format='numpy')


def _decode(row, sample_rate):
    """One file -> its samples at the model's rate, or the reason it cannot be used."""
    import numpy as np
    path = row['path']
    try:
        return {'path': path, 'wave': audio.load(row['source'], None, sample_rate), 'error': ''}
    except AudioError as exc:
        return {'path': path, 'wave': np.zeros(0, np.float32), 'error': str(exc)}


class JobActor:
    """One Predictor, running the job over batches of decoded files."""

    def __init__(self, job, model_dir, engine, threads, options):
        from ..deploy import Predictor
        self.job, self.options = job, options
        self.predictor = Predictor(model_dir, engine=engine, num_threads=threads)

    def __call__(self, batch):
        import numpy as np
        paths = [str(p) for p in batch['path']]
        usable = [i for i, error in enumerate(batch['error']) if not error]
        results = self._run([batch['wave'][i] for i in usable]) if usable else []
        out = {'path': np.array(paths, dtype=object), 'error': batch['error']}
        if self.job == 'embed':
            empty = {'start': np.zeros(0), 'end': np.zeros(0),
                     'embeddings': np.zeros((0, self.predictor.embedding_size), np.float32)}
            per_input = [empty] * len(paths)
            for i, result in zip(usable, results):
                per_input[i] = result
            for key in empty:
                out[key] = _objects([result[key] for result in per_input])
        else:
            lines = [''] * len(paths)
            for i, record in zip(usable, self._records([paths[i] for i in usable], results)):
                lines[i] = json.dumps(record, ensure_ascii=False) + '\n'   # the line `--jsonl` writes
            out['line'] = np.array(lines, dtype=object)
        return out

    def _run(self, waves):
        rate = self.predictor.frontend_cfg.sample_rate
        if self.job == 'embed':
            return self.predictor.embed(waves, sample_rate=rate, **self.options)
        if self.job == 'events':
            return self.predictor.detect(waves, sample_rate=rate, **self.options)
        return self.predictor.predict(waves, sample_rate=rate, **self.options)

    def _records(self, paths, results):
        if self.job == 'events':
            return event_records(paths, results)
        return prediction_records(paths, results)


def _objects(arrays):
    """A numpy object array holding `arrays` (of different lengths) as they are."""
    import numpy as np
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def _jsonl_writer(output):
    def write(batch, usable):
        with open(output, 'a', encoding='utf-8') as out:
            out.write(''.join(batch['line'][i] for i in usable))
            out.flush()
            os.fsync(out.fileno())
    return write


def _parquet_writer(folder, settings):
    from . import parquet

    def write(batch, usable):
        results = [{key: batch[key][i] for key in ('start', 'end', 'embeddings')} for i in usable]
        parquet.write_part(folder, parquet.rows_table([str(batch['path'][i]) for i in usable], results,
                                                      settings['model'], settings['embedding_size']))
    return write


def _drain(batches, write, total, job):
    """Write every batch as it comes; stop at the first file that could not be decoded, after
    writing the rest of its batch. Returns the number of inputs written."""
    from ..progress import progress_bar
    written = 0
    with progress_bar(total=total, unit='file', desc=job, show=total >= 2) as bar:
        for batch in batches:
            usable = [i for i, error in enumerate(batch['error']) if not error]
            if usable:
                write(batch, usable)
            written += len(usable)
            bar.update(len(usable))
            failed = [error for error in batch['error'] if error]
            if failed:
                raise AudioError(f'{failed[0]} ({written} inputs of this run were written before it; a rerun '
                                 f'skips them)')
    return written
