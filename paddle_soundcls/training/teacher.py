"""Teachers for knowledge distillation: their outputs on a dataset's clips, computed once and cached.

A teacher is a Module, a checkpoint directory, an export directory, a saved ensemble
(paddle_soundcls.Ensemble, its directory or its export: its members with their weights), or a
list of them (an ensemble: the weighted mean of their logits, each listed teacher counting once:
a saved ensemble's member weights are divided by their sum). Each clip is scored as `predict`
scores it (the whole clip: padded to the teacher's training clip length, or the mean over
windows of it), so the teacher sees every clip whole while the student trains on random crops
of it; the teacher's targets are therefore clip-level, the same for every crop of a clip.

Outputs are stored as logits, member by member: the scores predict gives turned back (log p
for a softmax, whose softmax at any temperature they reproduce; log p - log(1 - p) for sigmoids),
so Modules, checkpoints and exports are one kind of teacher, and a member shared by several
ensembles is computed once. The teacher's targets are the weighted mean of its members' logits
(deploy.ensemble.weighted_mean, the combination an exported ensemble uses). Layout of the cache
(`<cache_dir()>/teachers` by default):

    <member key>/settings.json     what the outputs below depend on (for people reading the cache)
    <member key>/<sha256>.npy      the member's logits (float32 [classes]) for the file with that content

The key hashes everything a member's outputs depend on: its weights digest (or the sha256 of an
export's files) and the settings an export records (Module.export_settings(): model, task,
labels, multi_label, pooling, clip length, shortest input, front end, frame geometry; not the
event thresholds, which do not change scores), and the versions of the resampler and of
libsndfile's decoders (cache.decoding_settings). A clip is found by the sha256 of its file, so
an edited file, other teacher weights or another way of pooling are never served stale
outputs. Each output is written as soon as it is computed, so an interrupted pass resumes where
it stopped.
"""
import os

import numpy as np

from .. import cache, fileio
from ..deploy.ensemble import to_logits, weighted_mean
from ..progress import progress_bar
from ..errors import ArgumentError

FORMAT = 3   # 3: one cache entry per member (2 cached the combined logits of an ensemble)
# What an export or Module records that does not change its scores: left out of the cache key
# (tuning the event thresholds must not recompute the teacher's outputs).
_NOT_OUTPUTS = ('events', 'files', 'frontend_cfg', 'format')
CLIPS_PER_CALL = 16


def cache_root():
    return os.path.join(cache.cache_dir(), 'teachers')


class Teacher:
    """One or several teacher models with the same labels: scores(paths) -> [clips, classes].
    A saved ensemble (an Ensemble, its checkpoint directory or its export) adds its members with
    their weights; in a list of teachers, those weights are divided by their sum, so every listed
    teacher weighs as much as any other."""

    def __init__(self, spec, use_gpu=False):
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        if not specs:
            raise ArgumentError('teacher: an empty list; give a Module, a checkpoint directory or an export directory')
        groups = [_load(one, use_gpu) for one in specs]
        if len(groups) > 1:   # each listed teacher counts once, however its ensemble's weights are scaled
            groups = [_weights_summing_to_one(group) for group in groups]
        loaded = [pair for group in groups for pair in group]
        self.members, self.weights = [m for m, _ in loaded], [w for _, w in loaded]
        first = self.members[0]
        for other in self.members[1:]:
            if other['labels'] != first['labels'] or other['multi_label'] != first['multi_label']:
                raise ArgumentError(f'the teachers of an ensemble must share their labels and multi_label setting: '
                                 f'{first["name"]} has {first["labels"][:5]}..., {other["name"]} '
                                 f'{other["labels"][:5]}...')
        self.labels, self.multi_label = first['labels'], first['multi_label']

    def settings(self):
        """What the teacher's targets depend on besides the audio."""
        out = {'format': FORMAT, 'members': [m['identity'] for m in self.members], 'labels': self.labels,
               'multi_label': self.multi_label, **cache.decoding_settings()}
        if len(set(self.weights)) > 1:
            out['weights'] = self.weights
        return out

    def member_settings(self, member):
        """The cache key of one member's outputs."""
        return {'format': FORMAT, 'member': member['identity'], 'labels': self.labels, 'multi_label': self.multi_label}

    def member_logits(self, member, paths):
        """One member's logits on the clips `paths` [clips, classes] (float64)."""
        scores = [[s[label] for label in self.labels] for s in member['predict'](paths)]
        return to_logits(scores, self.multi_label)

    def logits(self, paths):
        """Weighted mean over the members of their logits on the clips `paths` [clips, classes]."""
        return self.combine([self.member_logits(m, paths) for m in self.members])

    def combine(self, member_logits):
        """The teacher's targets from its members' logits (deploy.ensemble: the exported ensemble's rule)."""
        return weighted_mean(member_logits, self.weights).astype(np.float32)


def _weights_summing_to_one(pairs):
    total = sum(weight for _, weight in pairs)
    return [(member, weight / total) for member, weight in pairs]


def _load(spec, use_gpu=False):
    """[(member, weight)] of one teacher spec; a member: {'name', 'labels', 'multi_label', 'identity', 'predict'}."""
    from ..deploy import exportdir
    from ..ensemble import Ensemble, is_ensemble_dir, load_ensemble
    if isinstance(spec, Ensemble):
        return [(_module_member(m, 'Ensemble member', use_gpu), w) for m, w in zip(spec.members, spec.weights)]
    if hasattr(spec, 'predict') and hasattr(spec, 'state_dict'):   # a Module
        return [(_module_member(spec, 'Module', use_gpu), 1.0)]
    path = os.fspath(spec)
    if exportdir.is_export_dir(path):
        from ..deploy import Predictor
        predictor = Predictor(path)
        if predictor.members:
            return [(_export_member(m, os.path.join(path, r['dir'])), r['weight'])
                    for m, r in zip(predictor.members, predictor.meta['ensemble']['members'])]
        return [(_export_member(predictor, path), 1.0)]
    if is_ensemble_dir(path):
        return _load(load_ensemble(path), use_gpu)
    if os.path.isdir(path):
        from .. import load_module
        return [(_module_member(load_module(path), path, use_gpu), 1.0)]
    raise ArgumentError(f'teacher {spec!r}: expected a Module, a checkpoint directory (with meta.json) or an export '
                     f'directory (with export.json)')


def _export_member(predictor, path):
    files = {name: record['sha256'] for name, record in predictor.meta['files'].items()}
    recorded = {k: v for k, v in predictor.meta.items() if k not in _NOT_OUTPUTS}
    return {'name': path, 'labels': list(predictor.labels), 'multi_label': predictor.multi_label,
            'identity': {'export': files, 'settings': recorded},
            'predict': lambda paths: predictor.predict(paths, batch_size=8)}


def _module_member(module, name, use_gpu):
    from ..export.onnx_cache import weights_digest
    module.eval()
    settings = {k: v for k, v in module.export_settings().items() if k not in _NOT_OUTPUTS}
    return {'name': f'{name} ({module.name})', 'labels': list(module.labels), 'multi_label': module.multi_label,
            'identity': {'weights': weights_digest(module), 'settings': settings},
            'predict': lambda paths: module.predict(paths, batch_size=8, use_gpu=use_gpu)}


def teacher_logits(teacher, dataset, root=None, progress=True):
    """The teacher's logits for every clip of `dataset` [clips, classes], from the cache,
    computing what is missing. The dataset must be an AudioDataset (files and labels)."""
    items = getattr(dataset, 'items', None)
    if items is None:
        raise ArgumentError(f'distillation caches the teacher\'s outputs per audio file, so it needs a paddle_soundcls '
                        f'AudioDataset (items of (path, label)); got {type(dataset).__name__}')
    if list(dataset.labels) != list(teacher.labels):
        raise ArgumentError(f'the teacher\'s labels differ from the data\'s, in names or in order:\n'
                         f'  teacher: {teacher.labels[:12]}{" ..." if len(teacher.labels) > 12 else ""}\n'
                         f'  data:    {list(dataset.labels)[:12]}{" ..." if len(dataset.labels) > 12 else ""}\n'
                         f'Distil from a teacher trained on these classes (label_map=dataset.labels).')
    if bool(getattr(dataset, 'multi_label', False)) != teacher.multi_label:
        raise ArgumentError(f'the teacher is {"multi" if teacher.multi_label else "single"}-label but the data is '
                         f'not; use a teacher trained on data of the same kind')
    paths = [path for path, _ in items]
    return teacher.combine([_member_outputs(teacher, member, paths, root, progress) for member in teacher.members])


def _member_outputs(teacher, member, paths, root, progress):
    """One member's logits for every path [clips, classes], from the cache, computing what is missing."""
    files, todo = cache.content_cache(root or cache_root(), teacher.member_settings(member), paths)
    desc = 'Teacher outputs' if len(teacher.members) == 1 else f'Teacher outputs ({member["name"]})'
    with progress_bar(total=len(todo), desc=desc, unit='clip', show=progress and bool(todo)) as bar:
        for start in range(0, len(todo), CLIPS_PER_CALL):
            batch = todo[start:start + CLIPS_PER_CALL]
            for i, row in zip(batch, teacher.member_logits(member, [paths[i] for i in batch])):
                fileio.write_npy(files[i], row.astype(np.float32))
            bar.update(len(batch))
    return np.stack([np.load(file) for file in files]).astype(np.float64)
