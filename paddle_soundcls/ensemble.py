"""`Ensemble`: several Modules whose logits are averaged, each with its own front end.

    from paddle_soundcls import Ensemble, load_module
    tagger = Ensemble(['efficientat_dymn20', 'efficientat_mn40_ext', 'passt_s_kd_p16_128_ap486'])
    tagger.predict(['street.wav'], top_k=5)      # as Module.predict
    tagger.detect(['street.wav'])                # as Module.detect
    tagger.save('my_ensemble')                   # ensemble.json + members/0, members/1, ...
    load_module('my_ensemble')                   # the same Ensemble again
    Trainer(student, opt, teacher='my_ensemble') # a teacher by name
    export_static(tagger, 'exported_ensemble')   # an export Predictor runs (members/N inside)

Members are Modules, checkpoint directories, or registered names (their pretrained AudioSet
taggers); they must share labels, multi_label, sample rate and training clip length
(deploy/ensemble.py, which also holds the combination shared with the exported form).
"""
import os

from . import fileio
from .checkpoints import schema
from .deploy import detection, exportdir, pipeline
from .deploy.ensemble import FRONTEND_RATE, EnsembleScorer, Member, check_members, check_weights, member_dir
from .errors import ArgumentError, CheckpointError


def _as_module(member):
    from .module import Module
    from .models import registry
    if isinstance(member, Module):
        return member
    if isinstance(member, Ensemble):
        raise ArgumentError('an ensemble cannot be a member of another ensemble: list its members instead')
    if not isinstance(member, (str, os.PathLike)):
        raise ArgumentError(f'an ensemble member must be a Module, a checkpoint directory or a registered model name, '
                            f'got {type(member).__name__}')
    path = os.fspath(member)
    if exportdir.is_export_dir(path) and not os.path.isfile(os.path.join(path, schema.META_FILE)):
        raise ArgumentError(f'ensemble member {path} is an export directory; an ensemble is made of checkpoint '
                            f'directories or registered model names: give the checkpoint it was exported from (an '
                            f'ensemble of exports is exported from the ensemble of their checkpoints)')
    if os.path.isdir(path):
        loaded = load_module(path)
        if isinstance(loaded, Ensemble):
            raise ArgumentError(f'{path} is an ensemble; an ensemble cannot be a member of another one')
        return loaded
    if path in registry.list_models():
        return Module(path, task='tagging')
    raise ArgumentError(f'ensemble member {path!r} is neither a checkpoint directory nor a registered model name '
                        f'(registered: {", ".join(registry.list_models())})')


def _check_event_config(config):
    from .deploy.events import EventConfig
    if config is None or isinstance(config, EventConfig):
        return config
    if isinstance(config, dict):
        try:
            return EventConfig.from_dict(config)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f'event_config: {exc}') from None
    raise ArgumentError(f'event_config: give a deploy.events.EventConfig, a dict of its fields or None, got '
                        f'{type(config).__name__}')


class Ensemble:
    """Several Modules as one model: scores are the activation of the weighted mean of their logits.

    Args:
        members: Modules, checkpoint directories or registered model names (their AudioSet taggers).
        weights: one non-negative number per member (default: equal weights).
        event_config: how detect() turns frame scores into events (deploy.events.EventConfig, or a
            dict of its fields); saved with the ensemble and its exports. None: the defaults.
    """

    name = 'ensemble'

    def __init__(self, members, weights=None, event_config=None):
        if isinstance(members, (str, os.PathLike)) or not isinstance(members, (list, tuple)):
            raise ArgumentError('members: give a list of Modules, checkpoint directories or model names')
        self.members = [_as_module(m) for m in members]
        check_members(self.members)
        self.weights = check_weights(weights, len(self.members))
        first = self.members[0]
        self.labels, self.multi_label, self.task = list(first.labels), first.multi_label, first.task
        self.clip_seconds, self.frontend_cfg = first.clip_seconds, first.frontend_cfg
        self.min_seconds = max(m.min_seconds for m in self.members)
        self.event_config = _check_event_config(event_config)

    @property
    def num_class(self):
        return len(self.labels)

    @property
    def frame_geometry(self):
        """Where the frames of the combined frame scores sit: one per front-end frame (deploy.ensemble)."""
        return FRONTEND_RATE

    @property
    def embedding_size(self):
        """None of its own: the members' embeddings differ in size and meaning (embed with a member)."""
        raise ArgumentError(f'{self!r} has no embeddings of its own: its members\' differ in size and meaning; embed '
                            f'with one member (ensemble.members[0].embed, or a member\'s checkpoint directory)')

    def embed(self, *args, **kwargs):
        return self.embedding_size   # refused, as above

    def eval(self):
        for m in self.members:
            m.eval()
        return self

    def __repr__(self):
        parts = ', '.join(f'{m.name} x{w:g}' for m, w in zip(self.members, self.weights))
        return f'Ensemble([{parts}], task={self.task}, classes={len(self.labels)})'

    # ------------------------------------------------------------------ inference
    def _scorer(self, score_batch_of, score_frames_of=None):
        members = [Member(m.name, score_batch_of(m), None if score_frames_of is None else score_frames_of(m),
                          m.frame_geometry, m.frontend_cfg, w) for m, w in zip(self.members, self.weights)]
        return EnsembleScorer(members, self.multi_label)

    def predict(self, data, sample_rate=None, batch_size=1, top_k=None, window=None, hop=None, reduce='mean',
                engine='auto', threshold=None, use_gpu=False):
        """Classify or tag audio, as Module.predict (engine and use_gpu apply to every member)."""
        from .module import _check_engine, _scorer
        _check_engine(engine, use_gpu)
        hop = pipeline.check_args(batch_size, top_k, window, hop, reduce, threshold)
        sources = pipeline.as_sources(data)
        self.eval()
        scorer = self._scorer(lambda m: _scorer(m, engine, use_gpu, windowed=window is not None,
                                                inputs=len(sources)))
        raw = pipeline.run(sources, scorer.score_batch, sample_rate, self.frontend_cfg.sample_rate, self.min_seconds,
                           batch_size, window, hop, self.clip_seconds)
        return pipeline.format_results(raw, self.labels, top_k, reduce, threshold)

    def frame_scorer(self, window=None, hop=None, use_gpu=False):
        """A deploy.detection.FrameScorer of the combined frame scores (members in Paddle dygraph)."""
        from .device import inference_place
        self.eval()
        for m in self.members:
            inference_place(m, use_gpu)
        scorer = self._scorer(lambda m: None, lambda m: m.frame_scorer(window, hop).score_frames)
        scorer.check_frames()
        return detection.FrameScorer(scorer.score_frames, scorer.frame_frontend(), self.labels, FRONTEND_RATE,
                                     window, hop, self.min_seconds, self.clip_seconds)

    def detect(self, data, sample_rate=None, window=None, hop=None, config=None, use_gpu=False, batch_size=None):
        """When each sound happens, as Module.detect, from the combined frame scores."""
        return detection.detect_inputs(self.frame_scorer(window, hop, use_gpu), data, sample_rate,
                                       self._merged_events(config), batch_size)

    def stream(self, sample_rate=None, window=None, hop=None, config=None, channels=1):
        """A live stream, as Module.stream."""
        rate = self.frontend_cfg.sample_rate if sample_rate is None else sample_rate
        return detection.EventStream(self.frame_scorer(window, hop), rate, self._merged_events(config), channels)

    def stream_pool(self, window=None, hop=None, config=None, batch_size=None):
        """Many live streams whose windows are scored together, as Module.stream_pool."""
        return detection.StreamPool(self.frame_scorer(window, hop), self._merged_events(config), batch_size)

    def _merged_events(self, config):
        from .deploy.events import merge_settings
        return merge_settings(config, self.event_config, 'this ensemble\'s event_config')

    # ------------------------------------------------------------------ files
    def settings(self):
        """ensemble.json (and the `ensemble` entry of an export's export.json) without its members' files."""
        return {'members': [{'dir': member_dir(i), 'model': m.name, 'weight': w}
                            for i, (m, w) in enumerate(zip(self.members, self.weights))],
                'combine': 'weighted mean of logits'}

    def export_settings(self):
        """What an export of the ensemble records besides its members (see export.static)."""
        return {'model': self.name, 'task': self.task, 'labels': list(self.labels), 'multi_label': self.multi_label,
                'clip_seconds': self.clip_seconds, 'pooling': None, 'frontend': self.frontend_cfg.to_dict(),
                'events': None if self.event_config is None else self.event_config.to_dict(),
                'min_seconds': self.min_seconds, 'frame_geometry': FRONTEND_RATE.to_dict(),
                'embedding_size': None,   # members' embeddings differ in size and meaning: embed with a member
                'ensemble': self.settings()}

    def save(self, directory):
        """Write ensemble.json + members/N (each Module.save) to `directory`, replacing it only once
        complete; load_module(directory) rebuilds the Ensemble."""
        def build(tmp):
            for i, m in enumerate(self.members):
                m.save(os.path.join(tmp, member_dir(i)))
            events = None if self.event_config is None else self.event_config.to_dict()
            fileio.write_json(os.path.join(tmp, schema.ENSEMBLE_FILE),
                              {'format': schema.ENSEMBLE_FORMAT, **self.settings(), 'events': events})
        fileio.replace_dir(build, os.fspath(directory))
        return directory


def load_module(checkpoint_dir=None, model=None, task='sound-cls'):
    """module.load_module, or the Ensemble saved in `checkpoint_dir` (ensemble.json): what
    paddle_soundcls.load_module, the command line and distillation load a directory with."""
    from . import module
    if checkpoint_dir is not None and is_ensemble_dir(checkpoint_dir):
        if model is not None:
            raise CheckpointError(f'{checkpoint_dir} holds an ensemble (ensemble.json), not one {model} model; drop '
                                  f'--model')
        return load_ensemble(checkpoint_dir)
    return module.load_module(checkpoint_dir, model=model, task=task)


def is_ensemble_dir(path):
    return os.path.isfile(os.path.join(os.fspath(path), schema.ENSEMBLE_FILE))


def load_ensemble(directory):
    """The Ensemble saved in `directory` (Ensemble.save)."""
    from .deploy.events import EventConfig
    directory = os.fspath(directory)
    data = schema.read_ensemble(directory)
    members = []
    for record in data['members']:
        path = os.path.join(directory, record['dir'])
        if not os.path.isdir(path):
            raise CheckpointError(f'{path} is missing: the ensemble in {directory} lists it as a member; save the '
                                  f'ensemble again')
        members.append(load_module(path))
    events = EventConfig.from_dict(data['events']) if data.get('events') else None
    return Ensemble(members, [record['weight'] for record in data['members']], event_config=events)
