"""`Module`: front end + a registered backbone + a head, built by name, and its inference API.

A Module is front end -> backbone.forward_features -> forward_head:
    features = module.frontend(waveforms)           # [batch, frames, n_mels], on the device
    embedding = module.forward_features(features)   # [batch, emb_size]
    logits = module.forward_head(embedding)         # [batch, classes]; module(features) does both
    scores = module.scores(logits)                  # softmax, or sigmoid for multi-label models
Weights come through models/builder.py (pretrained files, any checkpoint layout), what a
checkpoint or export records through checkpoints/schema.py; predict() runs Paddle dygraph or
onnxruntime on the graph export/onnx_cache.py keeps, and never changes Paddle's global device.
"""
import logging
import os
import weakref

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import fileio, validate
from .checkpoints import files, schema
from .deploy.engines import ENGINES
from .device import inference_place, place_of
from .errors import ArgumentError, CheckpointError
from .features.config import FrontendConfig
from .features.logmel import LogMel
from .models import builder, registry

logger = logging.getLogger(__name__)

TASKS = schema.TASKS
# How clip scores come from the network: 'embedding' pools the feature map over time before the
# head (the pretrained models); 'max' and 'linear_softmax' apply the head frame by frame and pool
# its outputs (decision-level pooling), so training with clip labels (weak labels) also trains
# the frame scores event detection uses.
POOLINGS = ('embedding', 'max', 'linear_softmax')
_PROB_EPS = 1e-6
PARTS = ('scores', 'features', 'head', 'frames')


def check_task(task):
    """'sound-cls' or 'tagging'; None is PaddleHub's name for the AudioSet tagger."""
    task = 'tagging' if task is None else task
    if task not in TASKS:
        raise ArgumentError(f"task must be 'sound-cls' (a new classification head) or 'tagging' / None (the "
                            f"pretrained AudioSet tags), got {task!r}")
    return task


def _labels_from(num_class, label_map):
    if label_map is None:
        if num_class is None:
            return None
        return [str(i) for i in range(validate.positive_int('num_class', num_class))]
    if isinstance(label_map, dict):  # PaddleHub style {index: label}
        if sorted(label_map) != list(range(len(label_map))):
            raise ArgumentError(f'label_map keys must be the class indices 0..{len(label_map) - 1}, '
                                f'got {sorted(label_map)}')
        labels = [str(label_map[i]) for i in range(len(label_map))]
    else:
        labels = [str(label) for label in label_map]
    if not labels:
        raise ArgumentError('label_map is empty')
    if len(set(labels)) != len(labels):
        raise ArgumentError('label_map has duplicate labels')
    if num_class is not None and num_class != len(labels):
        raise ArgumentError(f'num_class={num_class} disagrees with label_map, which has {len(labels)} labels')
    return labels


def _check_clip_seconds(value):
    return validate.positive_number('clip_seconds', value, unit='seconds', allow_none=True)


def _initial_weights(spec, load_checkpoint, pretrained):
    """(state, source, meta) a new Module loads: a checkpoint's, the official weights', or none."""
    if load_checkpoint is not None:
        return builder.read_checkpoint(load_checkpoint)  # Paddle or PyTorch, by content
    if not pretrained:
        return None, None, None
    if spec.weights is None:
        raise ArgumentError(f'{spec.name} has no pretrained weights; pass pretrained=False to train it from '
                            f'random weights, or load_checkpoint=...')
    state, source = builder.pretrained_state(spec)  # every task needs them: fetch (or fail offline) first
    return state, source, None


def _from_meta(meta, source, spec, args):
    """The settings of a Module loaded from a checkpoint with meta.json: the saved ones, where the
    caller's `args` (task, labels, label_map, multi_label, clip_seconds, pooling) leave them open;
    a contradiction is refused, saying what to leave out."""
    if meta['model'] != spec.name:
        raise CheckpointError(f'{source} was trained from {meta["model"]}, not {spec.name}; use name={meta["model"]!r}')
    saved, labels = meta['labels'] or [], args['labels']
    if meta['task'] == 'sound-cls' and labels is not None and len(labels) != len(saved):
        raise CheckpointError(f'{source} has {len(saved)} classes, but {len(labels)} were asked for; leave '
                              f'num_class and label_map out to use the saved ones')
    if meta['task'] == 'sound-cls' and args['label_map'] is not None and labels != saved:
        raise CheckpointError(f'label_map {labels[:5]}... differs from the labels saved with {source} '
                              f'({saved[:5]}...); leave label_map out to use the saved ones')
    multi_label = meta['multi_label'] if args['multi_label'] is None else args['multi_label']
    if multi_label != meta['multi_label']:
        raise CheckpointError(f'{source} was trained with multi_label={meta["multi_label"]}; leave multi_label '
                              f'out to use it')
    if args['pooling'] is not None and args['pooling'] != meta['pooling']:
        raise CheckpointError(f'{source} was trained with pooling={meta["pooling"]!r}; leave pooling out to use it')
    frontend = FrontendConfig.from_dict(meta['frontend'])
    if frontend != spec.frontend:
        raise CheckpointError(f'{source} records front-end settings {meta["frontend"]} that are not those of '
                              f'{spec.name} ({spec.frontend.to_dict()}); the checkpoint belongs to another model')
    clip_seconds = meta['clip_seconds'] if args['clip_seconds'] is None else args['clip_seconds']
    return dict(task=meta['task'], labels=saved if meta['task'] == 'sound-cls' else None, multi_label=multi_label,
                clip_seconds=clip_seconds, pooling=meta['pooling'], frontend=frontend)


def _check_settings(spec, task, labels, multi_label, pooling, head):
    """Complete and check what the task implies; returns (labels, multi_label, pooling)."""
    if task == 'tagging':
        if spec.audioset_head is None:
            raise ArgumentError(f"{spec.name} has no AudioSet tagging head (only its backbone is pretrained); use "
                                f"task='sound-cls' with num_class or label_map")
        if labels is not None:
            raise ArgumentError("task='tagging' predicts the 527 AudioSet labels; num_class and label_map go with "
                                "task='sound-cls'")
        if multi_label is False:
            raise ArgumentError("task='tagging' is multi-label (independent AudioSet tags); leave multi_label out")
        multi_label = True
    if task == 'sound-cls' and labels is None and f'{builder.HEAD}.weight' in head:
        labels = _labels_from(int(head[f'{builder.HEAD}.weight'].shape[1]), None)
    if task == 'sound-cls' and labels is None:
        raise ArgumentError("task='sound-cls' needs num_class or label_map (the classes of your data)")
    pooling = 'embedding' if pooling is None else pooling
    if pooling not in POOLINGS:
        raise ArgumentError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    if pooling == 'linear_softmax' and not multi_label:
        raise ArgumentError("pooling='linear_softmax' pools independent class probabilities: it needs "
                            "multi_label=True (or task='tagging'); use pooling='max' for single-label models")
    return (registry.audioset_labels() if task == 'tagging' else labels), bool(multi_label), pooling


class _Part(nn.Layer):
    """One function of a Module as a Layer of its own (parameters shared), for export and the
    frozen-backbone trainer: 'scores' (features -> scores), 'features' (features -> embedding),
    'head' (embedding -> logits; its parameters are the head's only), 'frames' (features ->
    frame scores [batch, frames', classes] at the network's own frame rate)."""

    def __init__(self, module, part):
        super().__init__()
        self.part = part
        if part == 'head':
            # Register the head's layers only, so a data-parallel wrapper syncs just those.
            self.dropout, self.fc = module.dropout, module.fc
        else:
            self.module = module

    def forward(self, x):
        if self.part == 'head':
            return self.fc(self.dropout(x))
        if self.part == 'features':
            return self.module.forward_features(x)
        if self.part == 'frames':
            return self.module.frame_scores(x)
        return self.module.scores(self.module(x))


class Module(nn.Layer):
    """A pretrained audio network, by name.

    Args:
        name: a registered model (see `list_models()`), e.g. 'panns_cnn14'.
        task: 'sound-cls' for a new classification head with `num_class` outputs, or 'tagging'
            (None, as in PaddleHub) for the 527 AudioSet tags of the pretrained head.
        num_class: classes of the 'sound-cls' head; or give `label_map`.
        label_map: class names, a list or a {index: name} dict (PaddleHub style).
        load_checkpoint: a checkpoint file or directory to load instead of the official
            weights (official names, ours, PaddleSpeech's or PaddleHub's layouts). A directory
            written by the Trainer also restores labels, front end, multi_label and clip length.
        pretrained: load the official AudioSet weights (downloaded once to the cache).
            False builds random weights.
        multi_label: several labels per clip: independent sigmoid scores (trained with BCE)
            instead of a softmax over the classes. Always True for 'tagging'.
        clip_seconds: the clip length the model is trained on (the Trainer sets it from the
            training data). predict() pads shorter clips to it and scores longer ones as the
            mean over consecutive windows of it; None scores every clip whole.
        seed: seeds the initial weights that are not loaded (the new head; everything with
            pretrained=False), so two runs start from the same network.
        pooling: 'embedding' (default: the clip embedding goes through the head), or
            decision-level pooling of the head's frame-by-frame outputs: 'max' (the largest
            frame logit of each class) or 'linear_softmax' (sum p^2 / sum p over frames of the
            frame probabilities, multi-label models; Wang et al., 2019). With decision-level
            pooling, fine-tuning on clip labels trains the frame scores of detect() directly.

    forward(features [batch, frames, n_mels]) -> logits [batch, classes].
    """

    def __init__(self, name, task='sound-cls', num_class=None, label_map=None, load_checkpoint=None,
                 pretrained=True, multi_label=None, clip_seconds=None, seed=None, pooling=None, **kwargs):
        super().__init__()
        if kwargs:
            raise ArgumentError(f'Module() got unexpected arguments: {sorted(kwargs)}')
        spec = registry.get_spec(name)
        args = dict(task=check_task(task), labels=_labels_from(num_class, label_map), label_map=label_map,
                    multi_label=multi_label, clip_seconds=_check_clip_seconds(clip_seconds), pooling=pooling,
                    frontend=spec.frontend)
        validate.flag('multi_label', multi_label, allow_none=True)
        if seed is not None:
            paddle.seed(seed)
        state, source, meta = _initial_weights(spec, load_checkpoint, pretrained)
        if meta is not None:
            args = _from_meta(meta, source, spec, args)
        head = {} if state is None else builder.split_head(spec, state)[0]
        self.labels, self.multi_label, self.pooling = _check_settings(spec, args['task'], args['labels'],
                                                                      args['multi_label'], args['pooling'], head)
        self.name, self.spec, self.task, self.frontend_cfg = name, spec, args['task'], args['frontend']
        self.clip_seconds = args['clip_seconds']
        # How detect() turns frame scores into events (deploy.events.EventConfig); None: the
        # defaults. Set it to thresholds tuned on a dev set (events.tune_thresholds): it is
        # saved with checkpoints and exports, so the runtime makes the same decisions.
        self.event_config = None if meta is None or not meta.get('events') else _event_config(meta['events'])
        self.backbone = spec.build(audioset_head=self.task == 'tagging')
        if self.task == 'sound-cls':
            self.dropout = nn.Dropout(spec.head_dropout)
            self.fc = nn.Linear(self.backbone.emb_size, len(self.labels))
        self.frontend = LogMel(self.frontend_cfg)
        if state is not None:
            builder.load_module_state(self, state, source)
        else:
            logger.info('%s: random weights (pretrained=False)', name)
        self.eval()

    @property
    def num_class(self):
        return len(self.labels)

    @property
    def embedding_size(self):
        """The length of forward_features' clip embedding (what embed returns)."""
        return self.backbone.emb_size

    @property
    def embedding_digest(self):
        """What identifies the network embed runs: a digest of the backbone's weights."""
        from .export.onnx_cache import weights_digest
        return 'backbone:' + weights_digest(self.backbone)

    @property
    def min_seconds(self):
        return self.spec.min_seconds

    @property
    def frame_geometry(self):
        """Where the frames of frame_logits / frame_scores sit in time (frames.FrameGeometry)."""
        return self.spec.frame_geometry

    # ------------------------------------------------------------------ network
    def forward_features(self, features):
        """features: [batch, frames, n_mels] log-mel. Returns the embedding [batch, emb_size]."""
        return self.backbone.forward_features(features)

    def forward_head(self, embedding):
        """embedding [batch, emb_size] -> logits [batch, classes]."""
        if self.task == 'tagging':
            return self.backbone.forward_head(embedding)
        return self.fc(self.dropout(embedding))

    def forward(self, features):
        """features: [batch, frames, n_mels] log-mel. Returns logits [batch, classes]."""
        if self.pooling == 'embedding':
            return self.forward_head(self.forward_features(features))
        frame_logits = self.frame_logits(features)
        if self.pooling == 'max':
            return frame_logits.max(axis=1)
        probabilities = F.sigmoid(frame_logits)
        pooled = (probabilities * probabilities).sum(axis=1) / paddle.clip(probabilities.sum(axis=1), min=_PROB_EPS)
        pooled = paddle.clip(pooled, _PROB_EPS, 1 - _PROB_EPS)
        return paddle.log(pooled / (1 - pooled))  # the logit of the pooled probability

    def frame_logits(self, features):
        """features [batch, frames, n_mels] -> frame logits [batch, frames', classes]: the head
        applied to the backbone's time-resolved embeddings (before pooling over time)."""
        return self.forward_head(self.backbone.forward_frames(features))

    def frame_scores(self, features):
        """features [batch, frames, n_mels] -> frame scores [batch, frames', classes]."""
        return self.scores(self.frame_logits(features))

    def scores(self, logits):
        """Logits -> scores: independent sigmoids for multi-label models, else a softmax over classes."""
        return F.sigmoid(logits) if self.multi_label else F.softmax(logits, axis=-1)

    def part(self, name):
        """One function of this Module as a Layer sharing its parameters: 'scores' (features ->
        scores), 'features' (features -> embedding), 'head' (embedding -> logits, sound-cls) or
        'frames' (features -> frame scores)."""
        if name not in PARTS or (name == 'head' and self.task != 'sound-cls'):
            raise ArgumentError(f"part must be one of {PARTS} ('head' for task='sound-cls'), got {name!r}")
        return _Part(self, name)

    # ------------------------------------------------------------------ files
    def meta(self):
        """What a checkpoint needs to rebuild this Module (saved as meta.json; checkpoints.schema)."""
        return schema.checkpoint_meta(self)

    def export_settings(self):
        """What an export records besides the graph (export.json; checkpoints.schema, deploy.exportdir)."""
        return schema.export_settings(self)

    def save(self, directory):
        """Write model.pdparams + meta.json to `directory`, replacing it only once complete.

        `Module(name, load_checkpoint=directory)` rebuilds this Module with its labels.
        """
        def build(tmp):
            paddle.save(self.state_dict(), os.path.join(tmp, files.PARAMS_FILE))
            fileio.write_json(os.path.join(tmp, schema.META_FILE), self.meta())
        fileio.replace_dir(build, directory)
        return directory

    # ------------------------------------------------------------------ inference
    @paddle.no_grad()
    def predict(self, data, sample_rate=None, batch_size=1, feat_type='mel', use_gpu=False, top_k=None,
                window=None, hop=None, reduce='mean', engine='auto', threshold=None, topk=None, workers=0):
        """Classify or tag audio.

        data: an audio file path (read at its own rate), a numpy waveform ([samples] or
            [channels, samples] at `sample_rate` Hz), or a list of them.
        batch_size: clips (or windows) per forward pass.
        top_k: keep the best k labels of every result (`topk` is its deprecated spelling).
        threshold: keep only labels scoring at least this (multi-label models: every label
            that applies, possibly none).
        window, hop: seconds; slide a `window`-second window every `hop` seconds (default:
            hop = window) over each input, streaming windows in batches, for audio of any length.
            Without them, clips are treated as in training (see clip_seconds).
        reduce: 'mean' or 'max' over windows for the clip-level scores of windowed calls.
        engine: 'auto' runs onnxruntime (the Module exported once per set of weights and cached)
            for 4 or more inputs or any windowed call, and Paddle dygraph otherwise or with
            use_gpu=True; 'onnxruntime' or 'dygraph' force one. Both give the same scores (~1e-5).
            ('paddle', 'onnxruntime_int8', 'tflite' and 'tflite_int8' run exports: Predictor(export_dir,
            engine=...).)
        use_gpu: run dygraph on a GPU (this Module is moved to one if it is on the CPU); False runs
            where its parameters are. Paddle's global device (paddle.get_device()) never changes.
        workers: processes decoding audio files while the network scores (0: decode here;
            deploy.pipeline.load_inputs).
        Returns one OrderedDict(label -> score) per input, best first; for windowed calls one
        {'scores': OrderedDict, 'timeline': [{'start': s, 'end': e, 'scores': OrderedDict}, ...]}
        per input (seconds; see paddle_soundcls.deploy.pipeline).
        """
        from .deploy import pipeline
        if feat_type != 'mel':
            raise ArgumentError(f"feat_type must be 'mel' (the model's own front end), got {feat_type!r}")
        top_k = validate.renamed('topk', topk, 'top_k', top_k, stacklevel=4)  # past @paddle.no_grad()
        _check_engine(engine, use_gpu)
        hop = pipeline.check_args(batch_size, top_k, window, hop, reduce, threshold)
        sources = pipeline.as_sources(data)
        self.eval()
        score_fn = _scorer(self, engine, use_gpu, windowed=window is not None, inputs=len(sources))
        raw = pipeline.run(sources, score_fn, sample_rate, self.frontend_cfg.sample_rate, self.min_seconds,
                           batch_size, window, hop, self.clip_seconds, workers=workers)
        return pipeline.format_results(raw, self.labels, top_k, reduce, threshold)

    @paddle.no_grad()
    def embed(self, data, sample_rate=None, batch_size=1, window=None, hop=None, engine='auto', use_gpu=False,
              workers=0):
        """The backbone's embeddings (forward_features) of audio, cut as predict cuts it.

        data, sample_rate, batch_size, window, hop, engine, use_gpu: as for predict (the
        onnxruntime engine runs the backbone's graph from the ONNX cache).
        Without window, one embedding per input: the mean over the segments predict scores (a
        clip padded to the training clip length, or consecutive windows of it); with window
        (and hop), one per window. workers: processes decoding audio files meanwhile.
        Returns per input {'start': [rows], 'end': [rows] (seconds), 'embeddings': float32 [rows,
        embedding_size]}, as Predictor.embed does with this Module's export.
        """
        from .deploy import pipeline
        _check_engine(engine, use_gpu)
        hop = pipeline.check_args(batch_size, None, window, hop)
        sources = pipeline.as_sources(data)
        self.eval()
        embed_fn = _scorer(self, engine, use_gpu, windowed=window is not None, inputs=len(sources), part='features')
        raw = pipeline.run(sources, embed_fn, sample_rate, self.frontend_cfg.sample_rate, self.min_seconds,
                           batch_size, window, hop, self.clip_seconds, whole_span=True, workers=workers)
        return pipeline.embedding_results(raw)

    @paddle.no_grad()
    def detect(self, data, sample_rate=None, window=None, hop=None, config=None, use_gpu=False, batch_size=None):
        """When each sound happens: frame scores and events of every input.

        data, sample_rate: as for predict.
        window, hop: seconds; long audio is scored window by window (default: the training
            clip length, or 10 s, and half of it; see deploy.detection).
        config: an events.EventConfig (thresholds, median filter, durations), or a dict of its
            fields that replace those saved with the model (events.merge_settings); default: the
            one saved with the model (thresholds tuned on a dev set), else EventConfig().
        batch_size: windows per forward pass (default deploy.detection.DEFAULT_BATCH_SIZE); the
            windows of all inputs are batched together, and the results do not depend on it.
        Returns per input {'frame_hop': seconds, 'frame_scores': [frames, classes] numpy,
        'events': [{'label', 'onset', 'offset', 'confidence'}]}; no events is an empty list.
        """
        from .deploy import detection
        self.eval()
        inference_place(self, use_gpu)
        return detection.detect_inputs(self.frame_scorer(window, hop), data, sample_rate, self._merged_events(config),
                                       batch_size)

    def tune_event_thresholds(self, audio_files, strong_labels, window=None, hop=None, base_config=None):
        """Per-class event thresholds with the best event F1 on labelled dev recordings; they
        become this Module's event_config (saved with checkpoints and exports) and are returned.

        audio_files: the dev recordings. strong_labels: a CSV of filename,onset,offset,label (the
        DESED / URBAN-SED layout; file names as in audio_files, or their base names) or the dict
        datasets.strong.read_strong_labels gives. base_config: median filter and durations.
        """
        from .datasets.strong import read_strong_labels
        from .deploy.events import tune_thresholds
        truth = strong_labels if isinstance(strong_labels, dict) else read_strong_labels(strong_labels, self.labels)
        paths = [os.fspath(f) for f in audio_files]
        missing = [f for f in paths if f not in truth and os.path.basename(f) not in truth]
        if missing:
            raise ArgumentError(f'strong_labels lists no events for {len(missing)} dev recordings, e.g. '
                                f'{missing[:3]}; give every dev file a row (a file without events: filename with '
                                f'empty times)')
        results = self.detect(paths, window=window, hop=hop, config=base_config)
        references = [truth.get(f, truth.get(os.path.basename(f))) for f in paths]
        self.event_config = tune_thresholds([r['frame_scores'] for r in results], results[0]['frame_hop'], references,
                                            self.labels, base_config)
        return self.event_config

    def stream(self, sample_rate=None, window=None, hop=None, config=None, channels=1):
        """A live stream in Paddle dygraph, as Predictor.stream: push(chunk) -> events that started or
        ended, close() -> the rest (deploy.detection.EventStream); chunks are [frames, channels]
        arrays ([frames] when mono)."""
        from .deploy import detection
        self.eval()
        rate = self.frontend_cfg.sample_rate if sample_rate is None else sample_rate
        return detection.EventStream(self.frame_scorer(window, hop), rate, self._merged_events(config), channels)

    def stream_pool(self, window=None, hop=None, config=None, batch_size=None):
        """Many live streams whose windows are scored together (deploy.detection.StreamPool):
        pool.open(sample_rate) -> a stream to feed(chunk); pool.score() -> {stream: events}."""
        from .deploy import detection
        self.eval()
        return detection.StreamPool(self.frame_scorer(window, hop), self._merged_events(config), batch_size)

    def _merged_events(self, config):
        from .deploy.events import merge_settings
        return merge_settings(config, self.event_config, 'this Module\'s event_config')

    def frame_scorer(self, window=None, hop=None, merge=True):
        """A deploy.detection.FrameScorer running this Module in Paddle dygraph; merge=False scores
        every window of offline detection on its own (see FrameScorer)."""
        from .deploy import detection
        net = self.part('frames')

        def score_frames(waves):
            with paddle.no_grad():   # streams call it outside detect's no_grad: no graph for backward
                return net(self.frontend(paddle.to_tensor(waves, place=place_of(self)))).numpy()
        return detection.FrameScorer(score_frames, self.frontend_cfg, self.labels, self.frame_geometry, window, hop,
                                     self.min_seconds, self.clip_seconds, merge=merge)

    def to_dict(self, scores, top_k=None, topk=None):
        """scores [classes] -> OrderedDict(label -> score), best first, the best `top_k` only."""
        from .deploy import pipeline
        return pipeline.to_dict(scores, self.labels, validate.renamed('topk', topk, 'top_k', top_k))


def _event_config(data):
    from .deploy.events import EventConfig
    return EventConfig.from_dict(data)


def load_module(checkpoint_dir=None, model=None, task='sound-cls'):
    """The Module of a checkpoint directory, or a registered tagger.

    checkpoint_dir: a fine-tuned checkpoint directory (model.pdparams + meta.json, written
        by the Trainer or `Module.save`). paddle_soundcls.load_module (ensemble.load_module)
        also takes an ensemble's directory. A directory without meta.json needs `model` (and
        task='tagging' for an AudioSet tagger).
    model: a registry name; without checkpoint_dir it must be task='tagging' (the official
        pretrained tagger, whose weights must be in the cache or downloadable).
    """
    task = check_task(task)
    if model is not None:
        registry.get_spec(model)  # an unknown name fails here, listing the known ones
    if checkpoint_dir is None:
        if model is None:
            raise ArgumentError('pass a fine-tuned checkpoint directory, or a model name with task=tagging')
        if task != 'tagging':
            raise ArgumentError(f'{model} without a checkpoint has no trained classification head; pass a '
                                f'fine-tuned checkpoint directory, or task=tagging for the pretrained AudioSet tagger')
        return Module(name=model, task='tagging')
    path = os.fspath(checkpoint_dir)
    if not os.path.isdir(path):
        raise CheckpointError(f'checkpoint directory not found: {path}')
    if os.path.isfile(os.path.join(path, schema.ENSEMBLE_FILE)):
        raise CheckpointError(f'{path} holds an ensemble (ensemble.json), not one model: load it with '
                              f'paddle_soundcls.load_module (ensemble.load_module)')
    meta = schema.read_meta(path)
    if meta is None:
        if model is None:
            raise CheckpointError(
                f'{path} has no {schema.META_FILE} (written by the Trainer or Module.save), so the model and '
                f'its labels are unknown. Pass the model name (--model NAME, one of '
                f'{", ".join(registry.list_models())}) and, for an AudioSet tagger, --task tagging; or point to a '
                f'directory written by the Trainer, e.g. ckpt/best_model.')
        return Module(name=model, task=task, load_checkpoint=path)
    if model is not None and model != meta['model']:
        raise CheckpointError(f'{path} holds a {meta["model"]} model, not {model}; drop --model or '
                              f'pass --model {meta["model"]}')
    return Module(name=meta['model'], load_checkpoint=path)


# Module.predict engines. The onnxruntime engine needs a one-off export (about a second for
# CNN6/CNN10, ten for CNN14), which pays off from a few clips on.
_PREDICT_ENGINES = ('auto', 'onnxruntime', 'dygraph')
_FAST_MIN_INPUTS = 4
# Module -> {part: (ONNX path, OnnxEngine)}. Kept beside the Module rather than on it, so copying or
# pickling a Module never meets an onnxruntime session.
_ONNX_ENGINES = weakref.WeakKeyDictionary()


def _check_engine(engine, use_gpu):
    validate.one_of('engine', engine, ENGINES)
    if engine not in _PREDICT_ENGINES:
        raise ArgumentError(f"engine={engine!r} runs an export directory: export the Module (Module.export or "
                            f"`paddle-soundcls export`) and use Predictor(export_dir, engine={engine!r}); "
                            f"Module.predict takes engine {', '.join(map(repr, _PREDICT_ENGINES))}")
    if use_gpu and engine == 'onnxruntime':
        raise ArgumentError("engine='onnxruntime' runs on the CPU; use engine='dygraph' (or 'auto') with use_gpu=True")


def _scorer(module, engine, use_gpu, windowed, inputs, part='scores'):
    """waveforms [batch, samples] -> scores [batch, classes] (part 'scores') or embeddings [batch,
    embedding_size] (part 'features'), on the engine predict() or embed() was asked for (see
    Module.predict): onnxruntime where asked or worth it, Paddle dygraph otherwise."""
    if engine == 'onnxruntime':
        return _onnx_scorer(module, part)
    if engine == 'auto' and not use_gpu and (windowed or inputs >= _FAST_MIN_INPUTS):
        try:
            return _onnx_scorer(module, part)
        except Exception as exc:  # e.g. onnxruntime missing, or an op paddle2onnx cannot convert
            logger.warning('%s: the onnxruntime engine is unavailable (%s); running Paddle dygraph', module.name, exc)
    inference_place(module, use_gpu)
    net = module.part(part)
    return lambda waves: net(module.frontend(paddle.to_tensor(waves, place=place_of(module)))).numpy()


def _onnx_scorer(module, part='scores'):
    """waveforms [batch, samples] -> the outputs of `module.part(part)` with onnxruntime and the
    numpy front end.

    The graph comes from the ONNX cache (exported once per set of weights); the session is
    kept for the next call with the same weights.
    """
    from .deploy.engines import OnnxEngine
    from .export.onnx_cache import module_onnx
    from .features.mel import logmel

    path = module_onnx(module, part)
    sessions = _ONNX_ENGINES.setdefault(module, {})
    cached = sessions.get(part)
    if cached is None or cached[0] != path:
        cached = sessions[part] = (path, OnnxEngine(path))
    engine, cfg = cached[1], module.frontend_cfg
    return lambda waves: engine(logmel(waves, cfg))
