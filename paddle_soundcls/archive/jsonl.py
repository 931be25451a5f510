"""JSON-lines outputs a rerun resumes (`predict / tag / events --jsonl OUT`, and their Ray jobs):
one line per input, with its 'input'; a line cut short by a kill is dropped and its input done again.
The records of each command are made here, so every path that writes them writes the same."""
import json
import os

from .. import fileio
from ..errors import ArgumentError


def recorded_inputs(out_path):
    """(inputs already in the JSON-lines file out_path, its complete lines)."""
    done, keep = set(), []
    if not os.path.exists(out_path):
        return done, keep
    with open(out_path, encoding='utf-8') as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # the last line of a killed run
                continue
            if line.endswith('\n') and isinstance(record, dict) and 'input' in record:
                done.add(record['input'])
                keep.append(line)
    return done, keep


def open_jsonl(out_path):
    """The inputs already in `out_path`, which is rewritten without a line cut short by a kill."""
    if os.path.isdir(out_path):
        raise ArgumentError(f'{out_path} is a folder; give the JSON-lines file to write')
    done, keep = recorded_inputs(out_path)
    fileio.atomic_write_file(out_path, lambda f: f.write(''.join(keep)), mode='w')
    return done


def prediction_records(paths, results):
    """predict / tag results -> one record per input (what `--format jsonl` prints)."""
    out = []
    for path, result in zip(paths, results):
        record = {'input': path}
        record.update(result if isinstance(result, dict) and 'timeline' in result else {'scores': result})
        out.append(record)
    return out


def event_records(paths, results):
    """detect results -> one record per input (events --jsonl, --json)."""
    return [{'input': path, 'events': result['events']} for path, result in zip(paths, results)]
