"""Strong labels: when each sound happens in a clip, as `filename,onset,offset,label` rows.

    read_strong_labels('events.csv', labels) -> {filename: [(onset, offset, label), ...]}
    write_strong_labels('events.csv', events_by_file)
    frame_targets(events, num_frames, frame_hop_seconds, labels) -> [frames, classes] 0/1 targets

Reads the DESED / URBAN-SED layout: comma-separated (header optional) or tab-separated with a
header as DESED ships it (`filename  onset  offset  event_label`). Times are in seconds from
the start of the clip. A row with a filename and the other fields empty (or onset and offset
'nan') lists a clip with no events.

Standard library and numpy only (no Paddle).
"""
import csv
import math
import os

import numpy as np

from .. import validate
from ..fileio import atomic_write_file
from ..errors import ArgumentError, DatasetError

COLUMNS = ('filename', 'onset', 'offset', 'label')
# Header names accepted for each column (DESED calls the label column event_label).
HEADER_NAMES = {'filename': ('filename', 'file', 'audio_filename'), 'onset': ('onset', 'event_onset'),
                'offset': ('offset', 'event_offset'), 'label': ('label', 'event_label')}
EMPTY = ('', 'nan', 'none')


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def _header_columns(row, where):
    """Column index of each field if `row` is a header, else None (the columns are then positional)."""
    names = [cell.strip().lower() for cell in row]
    if (len(row) >= 2 and _number(row[1]) is not None) or not any(n in HEADER_NAMES['onset'] for n in names):
        return None
    columns = {}
    for field, accepted in HEADER_NAMES.items():
        found = [i for i, name in enumerate(names) if name in accepted]
        if not found:
            raise DatasetError(f'{where}: the header {row} has no {field!r} column; '
                             f'need the columns {", ".join(COLUMNS)}')
        columns[field] = found[0]
    return columns


def _check_labels(labels):
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, (list, tuple, set)) or not labels:
        raise ArgumentError(f'labels must be a non-empty list of class names or None, got {labels!r}')
    return set(labels)


def read_strong_labels(path, labels=None):
    """Read a strong-label CSV/TSV -> {filename: [(onset, offset, label)]}.

    Files keep the order they first appear in; events are sorted by onset. labels: the allowed
    class names (None: any). Errors name the file and line: missing columns, times that are
    not numbers, negative or NaN/Inf times, onset >= offset, labels not in `labels`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f'path must be the path of a strong-label CSV file, got {path!r}')
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f'strong-label file not found: {path}')
    allowed = _check_labels(labels)
    with open(path, newline='', encoding='utf-8-sig') as f:   # -sig: a spreadsheet's byte-order mark
        text = f.read()
    first_line = next((line for line in text.splitlines() if line.strip()), '')
    delimiter = '\t' if '\t' in first_line else ','
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    columns = None
    if rows:
        columns = _header_columns(rows[0][1], f'{path}, line {rows[0][0]}')
        if columns is not None:
            rows = rows[1:]
    positional = columns is None
    columns = columns or dict(zip(COLUMNS, range(len(COLUMNS))))
    result = {}
    for line, row in rows:
        def fail(problem):
            raise DatasetError(f'{path}, line {line}: {problem}')

        needed = max(columns.values()) + 1
        if len(row) < needed:
            fail(f'expected {needed} columns ({", ".join(COLUMNS)}), got {len(row)}: {row}')
        if positional and len(row) > len(COLUMNS):
            fail(f'expected {len(COLUMNS)} columns ({", ".join(COLUMNS)}), got {len(row)}: {row}; '
                 'quote labels that contain the separator, or add a header row to name the columns')
        filename, onset, offset, label = (row[columns[field]].strip() for field in COLUMNS)
        if not filename:
            fail('the filename is empty')
        events = result.setdefault(filename, [])
        if onset.lower() in EMPTY and offset.lower() in EMPTY and label.lower() in EMPTY:
            continue   # a clip with no events
        times = []
        for what, text_value in (('onset', onset), ('offset', offset)):
            value = _number(text_value)
            if value is None:
                fail(f'{what} {text_value!r} is not a number of seconds')
            if not math.isfinite(value):
                fail(f'{what} is {text_value}; give a finite number of seconds')
            if value < 0:
                fail(f'{what} {value} is negative; times are seconds from the start of the clip')
            times.append(value)
        if times[0] >= times[1]:
            fail(f'onset {times[0]} must be before offset {times[1]}')
        if not label:
            fail('the label is empty')
        if allowed is not None and label not in allowed:
            fail(f'label {label!r} is not one of the labels {sorted(allowed)[:20]}'
                 + (' ...' if len(allowed) > 20 else ''))
        events.append((times[0], times[1], label))
    for events in result.values():
        events.sort()
    return result


def write_strong_labels(path, events_by_file):
    """Write {filename: [(onset, offset, label)]} as `filename,onset,offset,label` rows (with that
    header); a clip with no events gets a row with the other fields empty, so it reads back."""
    if not isinstance(events_by_file, dict):
        raise ArgumentError(f'events_by_file must be {{filename: [(onset, offset, label)]}}, '
                         f'got {type(events_by_file).__name__}')

    def write(f):
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(COLUMNS)
        for filename, events in events_by_file.items():
            if not events:
                writer.writerow([filename, '', '', ''])
            for onset, offset, label in events:
                writer.writerow([filename, repr(float(onset)), repr(float(offset)), label])  # repr: exact round trip

    atomic_write_file(os.fspath(path), write, mode='w')


def frame_targets(events, num_frames, frame_hop_seconds, labels, frame_offset_seconds=0.0):
    """0/1 targets [num_frames, len(labels)] (float32) for one clip's events.

    Frame i covers [frame_offset + i * hop, frame_offset + (i + 1) * hop) (as in
    deploy.events); it is active for a class when its centre lies inside one of the class's
    events, so an event's boundaries move by at most half a hop. An event too short to
    contain any frame centre marks the frame holding its midpoint, so no event is lost.
    Events (or parts) outside the frames are left out.
    """
    num_frames = validate.non_negative_int('num_frames', num_frames)
    frame_hop_seconds = validate.positive_number('frame_hop_seconds', frame_hop_seconds, unit='seconds')
    frame_offset_seconds = validate.number('frame_offset_seconds', frame_offset_seconds, unit='seconds')
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
        raise ArgumentError(f'labels must be a non-empty list of class names, got {labels!r}')
    if not isinstance(events, (list, tuple)):
        raise ArgumentError(f'events must be a list of (onset, offset, label) tuples, got {type(events).__name__}')
    column = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((int(num_frames), len(labels)), dtype=np.float32)
    for i, event in enumerate(events):
        if not isinstance(event, (list, tuple)) or len(event) != 3:
            raise ArgumentError(f'events[{i}] must be an (onset, offset, label) tuple, got {event!r}')
        onset, offset, label = event
        if label not in column:
            raise ArgumentError(f'events[{i}]: label {label!r} is not one of the labels {list(labels)[:20]}')
        if not (isinstance(onset, (int, float)) and isinstance(offset, (int, float))
                and math.isfinite(onset) and math.isfinite(offset) and onset < offset):
            raise ArgumentError(f'events[{i}]: need finite times with onset < offset, got {onset!r}, {offset!r}')
        # Frame i's centre is frame_offset + (i + 0.5) * hop: the first centre at or after the onset
        # up to the first centre at or after the offset.
        start = math.ceil((onset - frame_offset_seconds) / frame_hop_seconds - 0.5)
        end = math.ceil((offset - frame_offset_seconds) / frame_hop_seconds - 0.5)
        if end <= start:
            start = math.floor(((onset + offset) / 2 - frame_offset_seconds) / frame_hop_seconds)
            end = start + 1
        targets[max(start, 0):max(min(end, num_frames), 0), column[label]] = 1.0
    return targets
