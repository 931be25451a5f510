"""`paddle-soundcls events MODEL_DIR INPUTS`: when each sound happens, in files (CSV / JSON /
JSON lines / a picture) or in raw PCM read from standard input as it arrives."""
import argparse
import json
import sys

from ..archive.jsonl import event_records
from .common import (UsageError, add_engine_args, add_ray_args, append_jsonl, expand_inputs, load_model, note,
                     resolve_engine, run_on_ray)

HELP = '''When each sound happens: onset, offset, label and confidence of every event.

    paddle-soundcls events exported recording.wav --csv events.csv --plot timeline.png
    paddle-soundcls events exported archive/ --jsonl events.jsonl     # resumable over many files
    arecord -q -f S16_LE -r 16000 -c 1 -t raw | paddle-soundcls events exported - --sample-rate 16000
    sox -q street.wav -t raw -r 16000 -e signed -b 16 -c 1 - | paddle-soundcls events exported - --sample-rate 16000
    ffmpeg -loglevel quiet -i rtsp://camera/stream -f s16le -ac 1 -ar 16000 - | \\
        paddle-soundcls events exported - --sample-rate 16000 --window 2 --hop 0.5

From standard input, one JSON line is printed per event start and end as they happen.
'''
# (option, EventConfig field, what it sets)
THRESHOLD_OPTIONS = (('onset-threshold', 'onset_threshold', 'score at which an event starts'),
                     ('offset-threshold', 'offset_threshold', 'score below which it ends'),
                     ('median-filter', 'median_filter_seconds', 'seconds of median filtering of the frame scores'),
                     ('min-duration', 'min_duration_seconds', 'shortest event kept, seconds'),
                     ('min-gap', 'min_gap_seconds', 'shorter gaps are bridged, seconds'))


def add_parser(subparsers):
    p = subparsers.add_parser('events', help='when each sound happens: events of audio files, or of raw PCM on '
                              'stdin (-)', formatter_class=argparse.RawDescriptionHelpFormatter, description=HELP)
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
    for option, field, what in THRESHOLD_OPTIONS:
        p.add_argument(f'--{option}', dest=field, type=float, default=None, metavar=option.replace('-', '_').upper(),
                       help=f'{what} (default: the model\'s saved settings, else deploy.events.EventConfig)')
    p.add_argument('--sample-rate', type=int, default=None, help='with -: the rate of the PCM on standard input')
    p.add_argument('--pcm-format', choices=('int16', 'float32'), default='int16', help='with -: sample format '
                   '(little-endian; default int16)')
    p.add_argument('--channels', type=int, default=1, help='with -: interleaved channels (default 1)')
    add_engine_args(p)
    p.add_argument('--threads', type=int, default=None, help='CPU threads (export directories; default all)')
    add_ray_args(p, '--jsonl OUT')
    return p


def event_config(model, args):
    """The model's saved event settings (else the defaults) with the options given on top."""
    from ..deploy.events import EventConfig
    base = model.event_config or EventConfig()
    overrides = {field: getattr(args, field) for _, field, _ in THRESHOLD_OPTIONS if getattr(args, field) is not None}
    try:
        return EventConfig.from_dict({**base.to_dict(), **overrides})
    except ValueError as exc:  # settings that do not fit together: say where the others came from
        saved = {k: v for k, v in base.to_dict().items() if k not in overrides}
        origin = (f"the model's saved settings ({args.model_dir}: {json.dumps(saved)})" if model.event_config
                  else 'the defaults of deploy.events.EventConfig')
        raise UsageError(f'{exc}. The options given were combined with {origin}: give --onset-threshold and '
                         f'--offset-threshold together') from None


def run(args):
    from ..deploy.exportdir import is_export_dir
    engine = resolve_engine(args)
    if engine not in ('auto', 'dygraph') and not is_export_dir(args.model_dir):
        raise UsageError(f'{args.model_dir} is not an export directory: a checkpoint detects events in Paddle dygraph; '
                         f'--engine {engine} needs an export (paddle-soundcls export --checkpoint {args.model_dir} '
                         f'--output DIR)')
    _, model = load_model(args.model_dir, engine, args.threads)
    config = event_config(model, args)
    if args.inputs == ['-']:
        return events_from_stdin(model, args, config)
    if args.ray is not None:
        if not args.jsonl:
            raise UsageError('--ray writes --jsonl OUT: give it')
        return run_on_ray(args, 'events', args.jsonl, {'window': args.window, 'hop': args.hop, 'config': config},
                          engine)
    paths = expand_inputs(args.inputs)
    if args.plot and len(paths) != 1:
        raise UsageError('--plot draws one recording: give one input file')

    def detect(some):
        results = model.detect(some, window=args.window, hop=args.hop, config=config)
        return event_records(some, results), results
    if args.jsonl:
        return append_jsonl(paths, args.jsonl, lambda some: detect(some)[0], 1)
    records, results = detect(paths)
    if args.csv:
        write_events_csv(args.csv, records)
    if args.json:
        from .. import fileio
        fileio.write_json(args.json, records)
    if args.plot:
        from ..analysis.plots import plot_events
        plot_events(args.plot, paths[0], results[0], model.labels)
    if not (args.csv or args.json):
        for record in records:
            print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def write_events_csv(path, records):
    import csv
    import io

    from .. import fileio
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(['filename', 'onset', 'offset', 'label', 'confidence'])
    for record in records:
        for e in record['events']:
            writer.writerow([record['input'], e['onset'], e['offset'], e['label'], round(e['confidence'], 4)])
    fileio.atomic_write_file(path, lambda f: f.write(buffer.getvalue()), mode='w')


def events_from_stdin(model, args, config):
    """Raw little-endian PCM from standard input -> one JSON line per event start and end."""
    from .. import validate
    from ..deploy import pcm
    if args.sample_rate is None:
        raise UsageError('reading standard input (-) needs --sample-rate HZ (and --pcm-format, --channels if not '
                         'int16 mono)')
    validate.positive_int('--channels', args.channels)
    stream = model.stream(args.sample_rate, window=args.window, hop=args.hop, config=config)
    note(f'listening; events are reported up to {stream.latency_seconds:.2f} s after they happen (plus compute)')
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
