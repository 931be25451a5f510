"""`paddle-soundcls`: predict, tag, find events, export, convert, measure and serve from the command line.

    paddle-soundcls predict MODEL_DIR clips/ dog.wav [--topk 3] [--format table]
    paddle-soundcls predict MODEL_DIR long.wav --window 5 --hop 2.5
    paddle-soundcls tag street.wav [--model panns_cnn14 | --model-dir DIR]
    paddle-soundcls export --checkpoint ckpt/best_model --output exported [--check DATA]
    paddle-soundcls export --checkpoint ckpt/best_model --output exported --check DATA \\
        --quantize int8 --calibration CLIPS                  # + model.int8.onnx, checked on DATA
    paddle-soundcls export --model-dir exported              # (re)make model.onnx of an export
    paddle-soundcls predict exported clips/ --precision int8
    paddle-soundcls convert --input mn10_as_mAP_471.pt --output efficientat_mn10.pdparams --model efficientat_mn10
    paddle-soundcls benchmark exported --seconds 5 --batch-size 8 --json
    paddle-soundcls benchmark --model panns_cnn14 --json     # every engine, random weights
    paddle-soundcls events exported street.wav --csv events.csv --plot timeline.png
    paddle-soundcls complexity efficientat_mn10 cpmobile --seconds 1 10
    paddle-soundcls serve exported                           # http://127.0.0.1:8866

MODEL_DIR is a fine-tuned checkpoint directory (model.pdparams + meta.json) or an export
directory (export.json). predict, tag, events, benchmark and serve on export directories run
without PaddlePaddle. User errors print one line and exit with status 2; a failed parity check, or
an int8 model refused by its check, exits with status 1.
"""
import argparse
import json
import logging
import os
import sys

from .audio import AUDIO_EXTENSIONS, list_audio_files
from .errors import ArgumentError
from .scripts import THIRD_PARTY_NOISE, run_script, silence_third_party_noise  # noqa: F401  (moved there)

ENGINE_CHOICES = ('auto', 'onnxruntime', 'paddle', 'dygraph')
EVENTS_HELP = '''When each sound happens: onset, offset, label and confidence of every event.

    paddle-soundcls events exported recording.wav --csv events.csv --plot timeline.png
    paddle-soundcls events exported archive/ --jsonl events.jsonl     # resumable over many files
    arecord -q -f S16_LE -r 16000 -c 1 -t raw | paddle-soundcls events exported - --sample-rate 16000
    sox -q street.wav -t raw -r 16000 -e signed -b 16 -c 1 - | paddle-soundcls events exported - --sample-rate 16000
    ffmpeg -loglevel quiet -i rtsp://camera/stream -f s16le -ac 1 -ar 16000 - | \\
        paddle-soundcls events exported - --sample-rate 16000 --window 2 --hop 0.5

From standard input, one JSON line is printed per event start and end as they happen.
'''
PRECISION_CHOICES = ('fp32', 'int8')
DEFAULT_TAGGER = 'panns_cnn14'


class UsageError(ArgumentError):
    """A command line that cannot be carried out as given."""


def expand_inputs(inputs):
    """Files and folders (searched recursively for audio files) -> list of file paths."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = list_audio_files(item)
            if not found:
                raise UsageError(f'{item} holds no audio files ({", ".join(AUDIO_EXTENSIONS)})')
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f'no such file or folder: {item}')
    return paths


def _runner(model_dir, engine, threads, model=None, tagging=None, precision='fp32'):
    """(predict function, the model: a Predictor or a Module) for a checkpoint or export directory.

    tagging: True / False to require an AudioSet tagger / a classifier, None for either.
    precision: 'fp32', or 'int8' (an export directory's model.int8.onnx, on onnxruntime).
    """
    from .deploy import exportdir
    if exportdir.is_export_dir(model_dir):
        from .deploy import Predictor
        if engine == 'dygraph':
            raise UsageError(f'{model_dir} is an export directory; --engine dygraph needs a checkpoint directory')
        if engine == 'auto':
            meta = exportdir.read_export(model_dir)
            engine = 'onnxruntime' if exportdir.ONNX_FILE in meta['files'] or precision == 'int8' else 'paddle'
        if precision == 'int8' and engine != 'onnxruntime':
            raise UsageError(f'--precision int8 runs on onnxruntime (model.int8.onnx), not --engine {engine}')
        loaded = Predictor(model_dir, engine=engine, num_threads=threads, precision=precision)
        run = loaded.predict
    else:
        from . import checkpoint
        if not os.path.isdir(model_dir):
            raise UsageError(f'no such model directory: {model_dir} (expected a checkpoint directory with '
                             f'{checkpoint.PARAMS_FILE} + {checkpoint.META_FILE}, or an export directory with '
                             f'{exportdir.EXPORT_FILE})')
        if engine == 'paddle':
            raise UsageError(f'{model_dir} is a checkpoint directory; --engine paddle needs an export directory '
                             f'(paddle-soundcls export --checkpoint {model_dir} --output DIR)')
        if threads is not None:
            raise UsageError('--threads applies to export directories; a checkpoint uses every CPU')
        if precision == 'int8':
            raise UsageError(f'--precision int8 needs an export directory with an int8 model: `paddle-soundcls export '
                             f'--checkpoint {model_dir} --output DIR --quantize int8 --calibration CLIPS --check '
                             f'OTHER_CLIPS`, then predict with DIR')
        from .hub import load_module
        loaded = load_module(model_dir, model=model, task='tagging' if tagging else 'sound-cls')

        def run(paths, **kwargs):
            return loaded.predict(paths, engine=engine, **kwargs)
    if tagging is True and loaded.task != 'tagging':
        raise UsageError(f'{model_dir} is a sound-cls model, not an AudioSet tagger; use `paddle-soundcls predict`')
    return run, loaded


def _print_results(paths, results, fmt):
    if fmt == 'jsonl':
        for record in _records(paths, results):
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


def _predict(args, tagging):
    if args.hop is not None and args.window is None:
        raise UsageError('--hop needs --window')
    paths = expand_inputs(args.inputs)
    if tagging and args.model_dir is None:
        from .hub import Module
        if args.engine == 'paddle':
            raise UsageError('--engine paddle needs an export directory (--model-dir)')
        if args.precision == 'int8':
            raise UsageError('--precision int8 needs an export directory with an int8 model (--model-dir); see '
                             '`paddle-soundcls export --help` (--quantize int8)')
        module = Module(name=args.model or DEFAULT_TAGGER, task='tagging')
        run = lambda p, **kw: module.predict(p, engine=args.engine, **kw)  # noqa: E731
    else:
        run, _ = _runner(args.model_dir, args.engine, args.threads, getattr(args, 'model', None), tagging,
                         args.precision)
    kwargs = dict(batch_size=args.batch_size, topk=args.topk, window=args.window, hop=args.hop, reduce=args.reduce,
                  threshold=args.threshold)
    if args.jsonl:
        return _to_jsonl(paths, args.jsonl, lambda some: _records(some, run(some, **kwargs)), 4 * args.batch_size)
    _print_results(paths, run(paths, **kwargs), args.format)
    return 0


def _records(paths, results):
    """predict results -> the JSON records `--format jsonl` prints, one per input."""
    out = []
    for path, result in zip(paths, results):
        record = {'input': path}
        record.update(result if isinstance(result, dict) and 'timeline' in result else {'scores': result})
        out.append(record)
    return out


def _to_jsonl(paths, out_path, records_of, chunk):
    """Process `paths` in chunks, appending one JSON line per input to `out_path` as it goes;
    inputs already recorded there (by an earlier, perhaps killed, run) are skipped. A line cut
    short by a kill is dropped and its input done again."""
    done, keep = set(), []
    if os.path.exists(out_path):
        with open(out_path, encoding='utf-8') as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # the last line of a killed run
                    continue
                if line.endswith('\n') and isinstance(record, dict) and 'input' in record:
                    done.add(record['input'])
                    keep.append(line)
    todo = [p for p in paths if p not in done]
    print(f'paddle-soundcls: {len(paths) - len(todo)} of {len(paths)} inputs already in {out_path}, '
          f'{len(todo)} to go', file=sys.stderr)
    from . import fileio
    fileio.atomic_write_file(out_path, lambda f: f.write(''.join(keep)), mode='w')  # without a cut line
    from .progress import progress_bar
    with open(out_path, 'a', encoding='utf-8') as out, progress_bar(total=len(todo), unit='file', show=len(todo) >= 2) as bar:
        for start in range(0, len(todo), chunk):
            some = todo[start:start + chunk]
            for record in records_of(some):
                out.write(json.dumps(record, ensure_ascii=False) + '\n')
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(some))
    return 0


def cmd_predict(args):
    return _predict(args, tagging=None)


def cmd_events(args):
    """When each sound happens, in files (CSV / JSON / JSON lines / a picture) or in raw PCM
    read from standard input as it arrives."""
    from .deploy.events import EventConfig
    _, model = _runner(args.model_dir, 'auto', args.threads)
    base = model.event_config or EventConfig()
    overrides = {k: v for k, v in (('onset_threshold', args.onset_threshold),
                                   ('offset_threshold', args.offset_threshold),
                                   ('median_filter_seconds', args.median_filter),
                                   ('min_duration_seconds', args.min_duration),
                                   ('min_gap_seconds', args.min_gap)) if v is not None}
    try:
        config = EventConfig.from_dict({**base.to_dict(), **overrides})
    except ValueError as exc:
        saved = {k: v for k, v in base.to_dict().items() if k not in overrides}
        origin = (f"the model's saved settings ({args.model_dir}: {json.dumps(saved)})" if model.event_config
                  else 'the defaults of deploy.events.EventConfig')
        raise UsageError(f'{exc}. The options given were combined with {origin}: give --onset-threshold and '
                         f'--offset-threshold together') from None
    if args.inputs == ['-']:
        return _events_from_stdin(model, args, config)
    paths = expand_inputs(args.inputs)
    if args.plot and len(paths) != 1:
        raise UsageError('--plot draws one recording: give one input file')

    def detect(some):
        results = model.detect(some, window=args.window, hop=args.hop, config=config)
        return [{'input': path, 'events': result['events']} for path, result in zip(some, results)], results
    if args.jsonl:
        return _to_jsonl(paths, args.jsonl, lambda some: detect(some)[0], 1)
    records, results = detect(paths)
    if args.csv:
        _write_events_csv(args.csv, records)
    if args.json:
        from . import fileio
        fileio.write_json(args.json, records)
    if args.plot:
        from .analysis.plots import plot_events
        plot_events(args.plot, paths[0], results[0], model.labels)
    if not (args.csv or args.json):
        for record in records:
            print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def _write_events_csv(path, records):
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(['filename', 'onset', 'offset', 'label', 'confidence'])
    for record in records:
        for e in record['events']:
            writer.writerow([record['input'], e['onset'], e['offset'], e['label'], round(e['confidence'], 4)])
    from . import fileio
    fileio.atomic_write_file(path, lambda f: f.write(buffer.getvalue()), mode='w')


def _events_from_stdin(model, args, config):
    """Raw little-endian PCM from standard input -> one JSON line per event start and end."""
    from .deploy import pcm
    if args.sample_rate is None:
        raise UsageError('reading standard input (-) needs --sample-rate HZ (and --pcm-format, --channels if not '
                         'int16 mono)')
    if args.channels < 1:
        raise UsageError(f'--channels must be at least 1, got {args.channels}')
    stream = model.stream(args.sample_rate, window=args.window, hop=args.hop, config=config)
    print(f'paddle-soundcls: listening; events are reported up to {stream.latency_seconds:.2f} s after they happen '
          f'(plus compute)', file=sys.stderr)
    frame_bytes = pcm.frame_bytes(args.pcm_format, args.channels)
    source, rest = sys.stdin.buffer, b''
    chunk_bytes = max(frame_bytes, int(args.sample_rate * 0.1) * frame_bytes)  # ~0.1 s per read
    while True:
        data = source.read1(chunk_bytes) if hasattr(source, 'read1') else source.read(chunk_bytes)
        if not data:
            break
        data, whole = rest + data, (len(rest) + len(data)) // frame_bytes * frame_bytes
        data, rest = data[:whole], data[whole:]
        # The one PCM reader (the server's WebSocket reads its messages with it too).
        for event in stream.push(pcm.decode(data, args.pcm_format, args.channels)):
            print(json.dumps(event), flush=True)
    for event in stream.close():
        print(json.dumps(event), flush=True)
    return 0


def cmd_tag(args):
    return _predict(args, tagging=True)


def cmd_export(args):
    """A new export of a checkpoint or tagger (--checkpoint / --model), or model.onnx added to an
    existing one (--model-dir); then the optional parity check and int8 model."""
    from .export import check_parity, export_onnx, export_static
    if args.model_dir is not None:
        if args.checkpoint is not None or args.model is not None:
            raise UsageError('--model-dir converts an existing export; it goes without --checkpoint and --model')
        if args.no_onnx:
            raise UsageError('--model-dir makes the ONNX model of an existing export; --no-onnx makes no sense with it')
        check_quantize_args(args)
        meta = export_onnx(args.model_dir, args.output, opset=args.opset)
        export_dir = args.model_dir
        summary = {'model_dir': os.path.abspath(export_dir), 'onnx': meta['onnx'],
                   'file': meta['files'][meta['onnx']['file']]}
    else:
        if args.checkpoint is None and args.model is None:
            raise UsageError('pass --checkpoint CKPT_DIR (a fine-tuned model), --model NAME --task tagging (a '
                             'pretrained tagger), or --model-dir EXPORT_DIR (add model.onnx to an export)')
        if args.output is None:
            raise UsageError('--output EXPORT_DIR is required: the export directory to write')
        if args.no_onnx and (args.check or args.quantize):
            raise UsageError('--check and --quantize need the ONNX model; leave out --no-onnx')
        check_quantize_args(args)
        from .hub import load_module
        module = load_module(args.checkpoint, model=args.model, task=args.task)
        meta = export_static(module, args.output, opset=None if args.no_onnx else args.opset)
        export_dir = args.output
        summary = {'output': os.path.abspath(export_dir), 'model': meta['model'], 'task': meta['task'],
                   'classes': len(meta['labels']), 'files': meta['files']}
    status = 0
    if args.check:
        summary['parity'] = check_parity(export_dir, args.check, limit=args.check_limit)
        status = 0 if summary['parity']['passed'] else 1
    if args.quantize:
        status = max(status, run_quantize(args, export_dir, summary))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return status


def cmd_convert(args):
    """A registered model's release checkpoint -> a Paddle .pdparams file in its own names (PyTorch not needed)."""
    from .convert import DEPRECATED_NAMES, convert_file
    model = args.model
    if model in DEPRECATED_NAMES:
        print(f'paddle-soundcls convert: --model {model} is deprecated; use --model {DEPRECATED_NAMES[model]}',
              file=sys.stderr)
        model = DEPRECATED_NAMES[model]
    for line in convert_file(args.input, args.output, model):
        print(line)
    return 0


def add_quantize_args(parser):
    """The int8 options of `paddle-soundcls export` (need --check DATA to be checked)."""
    from .export import quantize
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


def check_quantize_args(args):
    """Fail before any export work on int8 options that cannot work (including shared calibration/check clips)."""
    from .export import quantize
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
        from .export.parity import list_labelled_files
        quantize.refuse_overlap(clips, [path for path, _, _ in list_labelled_files(args.check)[:args.check_limit]])


def run_quantize(args, model_dir, summary, prog='paddle-soundcls'):
    """Quantize the export `model_dir` as the int8 options say; adds summary['int8']; returns the exit status."""
    from .export import quantize
    try:
        info = quantize.quantize_export(
            model_dir, args.calibration, check=args.check, limit=args.calibration_limit, check_limit=args.check_limit,
            method=args.calibration_method, per_channel=args.per_channel, quant_format=args.quant_format,
            keep_float=_keep_float(args.keep_float), reduce_range=args.reduce_range,
            seconds=args.calibration_seconds, force=args.force_int8)
    except quantize.QuantizationRefused as exc:
        summary['int8'] = {'refused': True, 'check': exc.summary}
        print(f'{prog}: {exc}', file=sys.stderr)
        return 1
    summary['int8'] = info
    if 'files' in summary:
        summary['files'] = quantize.exportdir.read_export(model_dir)['files']
    return 0


def add_benchmark_args(parser):
    parser.add_argument('model_dir', nargs='?', default=None,
                        help='an export directory: its ONNX models (fp32, and int8 when present), without Paddle')
    parser.add_argument('--model', default=None,
                        help='without MODEL_DIR: a registered model (default panns_cnn14) measured on every engine '
                             '(Paddle dygraph, Paddle Inference, onnxruntime, int8) with random weights')
    parser.add_argument('--seconds', type=float, default=5.0, help='clip length (default 5)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--iterations', type=int, default=5, help='timed batches per engine (default 5)')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads per engine (default: all CPUs)')
    parser.add_argument('--json', action='store_true', help='print the figures as JSON')


def print_benchmark(args):
    from .analysis import benchmark
    if args.model_dir is not None and args.model is not None:
        raise UsageError('give an export directory or --model NAME, not both')
    if args.model_dir is not None:
        result = benchmark.run_export(args.model_dir, args.seconds, args.batch_size, args.iterations, args.threads)
    else:
        result = benchmark.run(args.model or 'panns_cnn14', args.seconds, args.batch_size, args.iterations,
                               args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(benchmark.format_report(result))
    return 0


def cmd_benchmark(args):
    return print_benchmark(args)


def _add_output_args(parser, topk):
    parser.add_argument('inputs', nargs='+', help='audio files and/or folders (searched recursively)')
    parser.add_argument('--format', choices=('jsonl', 'table'), default='jsonl')
    parser.add_argument('--topk', type=int, default=topk, help=f'labels per result (default: {topk or "all"})')
    parser.add_argument('--threshold', type=float, default=None,
                        help='only labels scoring at least this (multi-label models: every label that applies)')
    parser.add_argument('--window', type=float, default=None, help='window length in seconds: score long audio '
                        'window by window and print a timeline')
    parser.add_argument('--hop', type=float, default=None, help='seconds between window starts (default: --window)')
    parser.add_argument('--reduce', choices=('mean', 'max'), default='mean',
                        help='clip-level scores from the windows (default mean)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--engine', choices=ENGINE_CHOICES, default='auto',
                        help="onnxruntime: an export's model.onnx, or a checkpoint exported once and cached; "
                             'paddle: Paddle Inference with oneDNN (export directories); dygraph: Paddle dygraph '
                             '(checkpoints); auto (default): onnxruntime, except dygraph for fewer than 4 clips '
                             'from a checkpoint')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (export directories; default all)')
    parser.add_argument('--precision', choices=PRECISION_CHOICES, default='fp32',
                        help="int8: an export directory's int8 model (model.int8.onnx, onnxruntime; made by "
                             '`export --quantize int8`); default fp32')
    parser.add_argument('--jsonl', default=None, metavar='OUT',
                        help='append one JSON line per input to OUT as it goes; a rerun skips the inputs already '
                             'in OUT (for archives of many files: a killed job resumes where it stopped)')


def build_parser():
    parser = argparse.ArgumentParser(prog='paddle-soundcls', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress to stderr')
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('predict', help='classify audio with a fine-tuned checkpoint or an export directory')
    p.add_argument('model_dir', help='checkpoint directory (model.pdparams + meta.json) or export directory')
    _add_output_args(p, topk=None)
    p.add_argument('--model', default=None, help='model name, only for a checkpoint directory without meta.json')
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser('tag', help='the 527 AudioSet tags of audio')
    p.add_argument('--model', default=None,
                   help=f'pretrained tagger, a registered model name (weights from the cache, downloaded once; '
                        f'default {DEFAULT_TAGGER})')
    p.add_argument('--model-dir', default=None, help='a tagging checkpoint or export directory instead')
    _add_output_args(p, topk=10)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser('events', help='when each sound happens: events of audio files, or of raw PCM on stdin (-)',
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=EVENTS_HELP)
    p.add_argument('model_dir', help='an export directory (no Paddle needed) or a checkpoint directory')
    p.add_argument('inputs', nargs='+', help='audio files and/or folders, or - for raw PCM on standard input')
    p.add_argument('--csv', default=None, metavar='FILE', help='write filename,onset,offset,label,confidence rows')
    p.add_argument('--json', default=None, metavar='FILE', help='write the events of every input as JSON')
    p.add_argument('--jsonl', default=None, metavar='OUT', help='append one JSON line per input as it goes; a rerun '
                   'skips the inputs already in OUT')
    p.add_argument('--plot', default=None, metavar='PNG', help='draw the spectrogram, the top frame scores and the '
                   'events of one input')
    p.add_argument('--window', type=float, default=None, help='seconds per window (default: the training clip '
                   'length, or 10)')
    p.add_argument('--hop', type=float, default=None, help='seconds between windows (default: half the window)')
    for name, what in (('onset-threshold', 'score at which an event starts'),
                       ('offset-threshold', 'score below which it ends'),
                       ('median-filter', 'seconds of median filtering of the frame scores'),
                       ('min-duration', 'shortest event kept, seconds'),
                       ('min-gap', 'shorter gaps are bridged, seconds')):
        p.add_argument(f'--{name}', type=float, default=None,
                       help=f'{what} (default: the model\'s saved settings, else deploy.events.EventConfig)')
    p.add_argument('--sample-rate', type=int, default=None, help='with -: the rate of the PCM on standard input')
    p.add_argument('--pcm-format', choices=('int16', 'float32'), default='int16', help='with -: sample format '
                   '(little-endian; default int16)')
    p.add_argument('--channels', type=int, default=1, help='with -: interleaved channels (default 1)')
    p.add_argument('--threads', type=int, default=None, help='CPU threads (export directories; default all)')
    p.set_defaults(func=cmd_events)

    p = sub.add_parser('export', help='static graph + ONNX in one step, optionally with a parity check and int8')
    p.add_argument('--checkpoint', default=None, help='fine-tuned checkpoint directory')
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
    add_quantize_args(p)
    p.set_defaults(func=cmd_export)

    from .analysis.complexity import add_complexity_arguments, run_complexity
    from .serve import add_serve_arguments, run_serve
    for name, text, add_arguments, func in (
            ('convert', "a model's release checkpoint (PyTorch .pt/.pth) to a Paddle .pdparams file (no PyTorch "
             "needed)", add_convert_args, cmd_convert),
            ('complexity', 'parameters, parameter memory, MACs and activation memory of models',
             add_complexity_arguments, run_complexity),
            ('benchmark', 'clips/s of an export directory, or of every engine for a model', add_benchmark_args,
             cmd_benchmark),
            ('serve', 'an HTTP API and a web page for a model (export directories need no Paddle)',
             add_serve_arguments, run_serve)):
        p = sub.add_parser(name, help=text)
        add_arguments(p)
        p.set_defaults(func=func)
    return parser


def add_convert_args(parser):
    parser.add_argument('--input', required=True,
                        help='the checkpoint: a PyTorch file (zip or legacy format), e.g. Cnn14_mAP=0.431.pth or '
                             "mn10_as_mAP_471.pt, or any other layout the model's family accepts")
    parser.add_argument('--output', required=True, help='Paddle parameters to write, e.g. efficientat_mn10.pdparams')
    parser.add_argument('--model', required=True,
                        help='the registered model the checkpoint is for, e.g. panns_cnn14 or efficientat_mn10 (an '
                             'unknown name lists them all); cnn14, cnn10 and cnn6 are deprecated names of the '
                             'panns_ models')


def user_errors():
    """Exception types that are the user's to fix: reported in one line, without a traceback."""
    from . import audio, checkpoint, weights
    from .deploy.exportdir import ExportError
    # AudioError, CheckpointError, ExportError and UsageError are ValueErrors; listed for the reader.
    return (ValueError, audio.AudioError, checkpoint.CheckpointError, ExportError, UsageError,
            weights.DownloadError, FileNotFoundError, PermissionError, IsADirectoryError)


# Optional packages a command may need, and what to tell a user who does not have them.
MISSING_PACKAGE_HINTS = {
    'paddle': 'needs PaddlePaddle, which is not installed: pip install paddlepaddle (or paddlepaddle-gpu), or '
              'run an export directory instead, which needs no Paddle (paddle-soundcls export on a machine with '
              'Paddle, then predict / tag / events / benchmark / serve EXPORT_DIR)',
    'paddle2onnx': "needs paddle2onnx to write ONNX: pip install 'paddle_soundcls[train]'",
    'onnx': "needs the onnx package: pip install 'paddle_soundcls[train]'",
    'matplotlib': "needs matplotlib to draw the plot: pip install matplotlib (or leave --plot out)",
    'visualdl': "needs VisualDL for its logs: pip install visualdl (or train with use_vdl=False)",
}


def missing_package(exc):
    """The one-line message for an ImportError of an optional package, or None for any other."""
    name = (getattr(exc, 'name', None) or '').split('.')[0]
    hint = MISSING_PACKAGE_HINTS.get(name)
    if hint is None:
        return None
    return str(exc) if 'pip install' in str(exc) else f'this command {hint} ({exc})'


def run_guarded(func, args, prog='paddle-soundcls'):
    """Run func(args); user errors -> one line on stderr and exit status 2."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except ImportError as exc:
        message = missing_package(exc)
        if message is None:
            raise
        print(f'{prog}: error: {message}', file=sys.stderr)
        return 2
    except user_errors() as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return 2


def main(argv=None):
    silence_third_party_noise()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    return run_guarded(args.func, args)


if __name__ == '__main__':
    sys.exit(main())
