"""What a checkpoint's meta.json and an export's export.json record, and how older files are read.

Both describe a Module with the same fields (`module_settings`):
    model        registry name, e.g. 'panns_cnn14'
    task         'sound-cls' (a classification head) or 'tagging' (the 527 AudioSet tags)
    labels       class names in output order (meta.json: null for 'tagging', whose labels are AudioSet's)
    multi_label  independent sigmoid scores (true) or a softmax over the classes (false)
    clip_seconds the clip length the model was trained on, or null (clips scored whole)
    pooling      how clip scores come from the network (Module.POOLINGS)
    frontend     FrontendConfig.to_dict(): the log-mel settings the network expects
    events       the EventConfig.to_dict() the model was saved with (tuned thresholds), or null
meta.json adds `format` (META_FORMAT); export.json (deploy/exportdir.py lists the rest) adds
`min_seconds`, `frame_geometry` and `embedding_size`, which a runtime without the registry needs.

Files written by earlier versions lack the fields added since; reading fills them with the value
that reproduces how those files were used (the migrations below, one table per file).
Paddle-free: the deployment runtime reads export.json through here.
"""
import json
import math
import os
import posixpath

from ..errors import ArgumentError, CheckpointError, ExportError
from ..features.config import FrontendConfig
from ..frames import FrameGeometry

META_FILE = 'meta.json'
META_FORMAT = 'paddle_soundcls/1'
EXPORT_FORMAT = 'paddle_soundcls-export/1'
# An ensemble checkpoint (paddle_soundcls.ensemble): ensemble.json beside members/0, members/1, ...
ENSEMBLE_FILE = 'ensemble.json'
ENSEMBLE_FORMAT = 'paddle_soundcls-ensemble/1'
TASKS = ('sound-cls', 'tagging')

# Fields added after the first version of each file -> their value in files that lack them (a
# function of the file's other fields, or a constant).
_META_ADDED = {
    'multi_label': lambda meta: meta['task'] == 'tagging',   # only the tagger was multi-label
    'clip_seconds': None, 'events': None, 'pooling': 'embedding',
}
_EXPORT_ADDED = {
    'multi_label': lambda meta: meta['output'].get('activation') == 'sigmoid',   # the activation says it
    'clip_seconds': None, 'events': None, 'pooling': 'embedding',
    'frame_geometry': None,   # detection refuses such exports
    'embedding_size': None,   # no embeddings graph: Predictor.embed refuses such exports
}
_META_REQUIRED = ('model', 'task', 'labels', 'frontend')
_EXPORT_REQUIRED = ('model', 'task', 'labels', 'frontend', 'min_seconds', 'input', 'output', 'files')


def module_settings(module):
    """The fields meta.json and export.json share, for `module` (a Module)."""
    return {'model': module.name, 'task': module.task, 'labels': list(module.labels),
            'multi_label': module.multi_label, 'clip_seconds': module.clip_seconds, 'pooling': module.pooling,
            'frontend': module.frontend_cfg.to_dict(),
            'events': None if module.event_config is None else module.event_config.to_dict()}


def checkpoint_meta(module):
    """meta.json of `module`: what `Module(name, load_checkpoint=directory)` needs to rebuild it."""
    meta = {'format': META_FORMAT, **module_settings(module)}
    if module.task != 'sound-cls':
        meta['labels'] = None
    return meta


def export_settings(module):
    """What an export of `module` records besides the graph and its files (see deploy.exportdir)."""
    return {**module_settings(module), 'min_seconds': module.min_seconds,
            'frame_geometry': module.frame_geometry.to_dict(), 'embedding_size': module.embedding_size}


def _read(path, expected_format, error, fix):
    """The JSON object in `path`, checked to be of `expected_format`; `error` (with `fix`) otherwise."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise error(f'cannot read {path}: {exc}. {fix}') from None
    found = data.get('format') if isinstance(data, dict) else None
    if found != expected_format:
        raise error(f'{path} has format {found!r}, not {expected_format!r}: it is not a paddle_soundcls file of '
                    f'this kind, or one of another version. {fix}')
    return data


def _migrate(data, required, added, path, error, fix):
    missing = [key for key in required if key not in data]
    if missing:
        raise error(f'{path} lacks {missing}. {fix}')
    for key, default in added.items():
        if key not in data:
            data[key] = default(data) if callable(default) else default
    if data['task'] not in TASKS:
        raise error(f"{path}: unknown task {data['task']!r}, expected one of {TASKS}. {fix}")
    return data


def read_meta(directory):
    """meta.json of a checkpoint directory as a dict (fields of earlier versions filled in), or None
    when the directory has none."""
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return None
    fix = 'The checkpoint directory is damaged: use another one (an earlier epoch_N) or save the model again.'
    meta = _read(path, META_FORMAT, CheckpointError, fix)
    if meta.get('task', '') is None:   # the first version wrote the tagger's task as null
        meta['task'] = 'tagging'
    return _migrate(meta, _META_REQUIRED, _META_ADDED, path, CheckpointError, fix)


def read_ensemble(directory):
    """ensemble.json of an ensemble checkpoint directory, checked: {'members': [{'dir', 'model',
    'weight'}], 'events'}."""
    path = os.path.join(directory, ENSEMBLE_FILE)
    fix = 'The ensemble directory is damaged: save the ensemble again (Ensemble.save or paddle-soundcls ensemble).'
    data = _read(path, ENSEMBLE_FORMAT, CheckpointError, fix)
    check_ensemble_members(data.get('members'), path, CheckpointError, fix)
    return data


def check_ensemble_members(members, path, error, fix, field='members'):
    """The member list of ensemble.json or of an ensemble export's export.json (`field` names it in
    messages): relative folders inside the directory, each with its weight."""
    if not isinstance(members, list) or len(members) < 2:
        raise error(f'{path}: `members` must list two or more members. {fix}')
    for record in members:
        if not (isinstance(record, dict) and isinstance(record.get('dir'), str)
                and isinstance(record.get('weight'), (int, float)) and not isinstance(record.get('weight'), bool)):
            raise error(f'{path}: a member must be {{"dir": "members/N", "model": ..., "weight": number}}, got '
                        f'{str(record)[:120]}. {fix}')
        parts = record['dir'].replace('\\', '/').split('/')
        if os.path.isabs(record['dir']) or '..' in parts:
            raise error(f'{path}: member folder {record["dir"]!r} lies outside the ensemble\'s directory. {fix}')
        if posixpath.normpath(record['dir'].replace('\\', '/') or '.') == '.':   # the ensemble itself
            raise error(f'{path}: member folder {record["dir"]!r} is the ensemble\'s own directory; a member lies in '
                        f'a sub-folder (members/N). {fix}')
    for i, record in enumerate(members):
        if not (record['weight'] >= 0 and _finite(record['weight'])):
            raise error(f'{path}: {field}[{i}].weight must be a finite number >= 0, got {record["weight"]!r}. {fix}')
    from ..deploy.ensemble import check_weights   # the rule Ensemble(weights=...) applies to the whole list
    try:
        check_weights([record['weight'] for record in members], len(members))
    except ArgumentError as exc:
        raise error(f'{path}: {field}: {str(exc).removeprefix("weights: ")}. {fix}') from None


def _finite(number):
    try:
        return math.isfinite(number)
    except OverflowError:   # an integer beyond any float
        return False


def read_export_json(path, model_dir):
    """export.json at `path` (in export directory `model_dir`) as a dict, checked, fields of earlier
    versions filled in, with 'frontend_cfg' (a FrontendConfig) added."""
    fix = (f'Export the model again (paddle-soundcls export --checkpoint CKPT_DIR --output {model_dir}).')
    meta = _migrate(_read(path, EXPORT_FORMAT, ExportError, fix), _EXPORT_REQUIRED, _EXPORT_ADDED, path,
                    ExportError, fix)
    if meta['frame_geometry'] is not None:
        try:
            FrameGeometry.from_dict(meta['frame_geometry'])
        except ValueError as exc:
            raise ExportError(f'{path}: {exc}; export the model again') from None
    int8 = meta.get('int8')
    if int8 is not None and not (isinstance(int8, dict) and isinstance(int8.get('frames', {}), (dict, type(None)))):
        raise ExportError(f'{path}: "int8" must be an object (and its "frames" an object), as quantizing writes '
                          f'them; quantize the export again (paddle-soundcls export --model-dir {model_dir} '
                          f'--quantize int8 --calibration CLIPS), or delete the "int8" entry to run in float32')
    if meta.get('ensemble') is not None:
        check_ensemble_members(meta['ensemble'].get('members') if isinstance(meta['ensemble'], dict) else None,
                               path, ExportError, fix, field='ensemble.members')
    meta['frontend_cfg'] = FrontendConfig.from_dict(meta['frontend'])
    return meta
