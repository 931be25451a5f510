"""`Predictor`: run an export directory on the CPU without the training stack."""
import os
import warnings

from .. import validate
from ..features.mel import logmel
from ..frames import FrameGeometry
from . import detection, exportdir, pipeline
from .engines import ENGINES, OnnxEngine, PaddleEngine, TFLiteEngine, check_threads
from .ensemble import EnsembleScorer, Member, check_members
from .events import EventConfig, merge_settings
from ..errors import ArgumentError, ExportError

PRECISIONS = ('fp32', 'int8')


class Predictor:
    """Classify or tag audio with an exported model.

    Args:
        model_dir: an export directory (see `paddle_soundcls.deploy.exportdir`).
        engine: 'onnxruntime' (model.onnx, the default and fastest on CPU), 'onnxruntime_int8'
            (model.int8.onnx, the int8-quantized model made by `export --quantize int8`), 'paddle'
            (Paddle Inference with oneDNN on inference.json + inference.pdiparams; imports paddle),
            'tflite' / 'tflite_int8' (the TFLite interpreter on model.tflite / model.int8.tflite,
            made by `export --format tflite`; needs neither Paddle nor onnxruntime), or 'auto'
            (onnxruntime, or paddle for an export without model.onnx); the names of
            deploy.engines.ENGINES ('dygraph' runs a Module, not an export).
        num_threads: CPU threads for the engine; None uses every CPU this process may run on.
        verify: check the model files against the sha256 recorded in export.json, so a file
            from another model is refused rather than run.
        precision: deprecated; precision='int8' is engine='onnxruntime_int8'. The front end is
            float32 either way.

    Attributes: labels, task ('sound-cls' or 'tagging'), multi_label, clip_seconds, frontend_cfg
    (FrontendConfig, as Module.frontend_cfg; `frontend` is its deprecated name), meta
    (export.json), precision, frames_precision: what event detection (score_frames) runs:
    'int8' (model.frames.int8.onnx) only with an int8 engine and an export whose int8 entry
    records that file, else 'fp32' (model.frames.onnx: with int8 clip scores when the frames
    graph was not quantized or failed its check); 'mixed' for an ensemble whose members differ.

    An ensemble export (export.json with an `ensemble` entry, written by export_static of an
    Ensemble) runs a Predictor per member (`members`), each with its own front end, and
    combines them as deploy/ensemble.py says; `engine` then applies to every member, and
    frontend_cfg is the first member's (the sample rate all members share).
    """

    def __init__(self, model_dir, engine='onnxruntime', num_threads=None, verify=True, precision=None):
        self.model_dir = os.fspath(model_dir)
        self.meta = exportdir.read_export(self.model_dir)
        requested = engine
        engine, precision = _runtime(engine, precision, self.meta)
        self.name = self.meta['model']
        self.labels = list(self.meta['labels'])
        self.task = self.meta['task']
        self.frontend_cfg = self.meta['frontend_cfg']
        self.min_seconds = float(self.meta['min_seconds'])
        self.multi_label = bool(self.meta['multi_label'])
        self.clip_seconds = self.meta['clip_seconds']
        self.event_config = EventConfig.from_dict(self.meta['events']) if self.meta['events'] else None
        self._frames_engine, self._embed_engine, self._verify = None, None, verify
        num_threads = check_threads(num_threads)  # before loading: a bad count is not a damaged export
        self.members, self._ensemble = None, None
        if self.meta.get('ensemble'):   # 'auto' is each member's choice
            self._load_members('auto' if requested == 'auto' else 'onnxruntime_int8' if precision == 'int8' else engine,
                               num_threads, verify)
            return
        if engine == 'onnxruntime':
            files = [exportdir.require_file(self.model_dir, self.meta, self._onnx_file(precision), verify)]
        elif engine == 'tflite':
            files = [exportdir.require_file(self.model_dir, self.meta, self._tflite_graph('scores', precision), verify)]
        else:
            files = [exportdir.require_file(self.model_dir, self.meta, name, verify)
                     for name in (exportdir.STATIC_MODEL, exportdir.STATIC_PARAMS)]
        try:
            self.engine = (OnnxEngine(files[0], num_threads) if engine == 'onnxruntime' else
                           TFLiteEngine(files[0], num_threads) if engine == 'tflite' else
                           PaddleEngine(os.path.join(self.model_dir, exportdir.STATIC_PREFIX), num_threads))
        except ImportError:
            raise  # engine='paddle' without Paddle: its message says what to install
        except Exception as exc:  # each runtime raises its own types for a damaged model file
            raise ExportError(f'cannot load {" / ".join(files)}: {str(exc).strip().splitlines()[-1][:300]}. '
                                        f'The export is damaged: export the model again') from None
        if engine != 'paddle':
            self._check_onnx_io(files[0])
        self.engine_name = engine
        self.precision = precision
        # The frames graph: int8 only where an int8 ONNX frames graph was made and checked; TFLite
        # detection runs the float model.frames.tflite (only the scores graph is made int8 there).
        self._frames_name = (self._frames_file(precision) if engine == 'onnxruntime' else
                             self._tflite_graph('frames') if engine == 'tflite' else exportdir.FRAMES_FILE)
        self.frames_precision = 'int8' if self._frames_name == exportdir.FRAMES_INT8_FILE else 'fp32'

    def _load_members(self, engine, num_threads, verify):
        """An ensemble export: a Predictor per member (members/N), combined by deploy.ensemble."""
        records = self.meta['ensemble']['members']
        export_file = os.path.join(self.model_dir, exportdir.EXPORT_FILE)
        self.members = []
        for record in records:
            path = os.path.join(self.model_dir, record['dir'])
            if not os.path.isdir(path):
                raise ExportError(f'{path} is missing: {export_file} lists it as a member of the ensemble; export the '
                                  f'ensemble again')
            member = Predictor(path, engine, num_threads, verify)
            if member.members is not None:
                raise ExportError(f'{path} is itself an ensemble export, listed as a member in {export_file}; an '
                                  f'ensemble\'s members are single models: export the ensemble again')
            member.name = f'{record["dir"]} ({member.meta["model"]})'
            self.members.append(member)
        check_members(self.members)
        first = self.members[0]
        # What the ensemble's export.json says of all its members must be what they say (a hand edit would
        # change how scores combine or how clips are cut).
        recorded = {'labels': (self.labels, first.labels), 'multi_label': (self.multi_label, first.multi_label),
                    'clip_seconds': (self.clip_seconds, first.clip_seconds),
                    'min_seconds': (self.min_seconds, max(m.min_seconds for m in self.members)),
                    'frontend.sample_rate': (self.frontend_cfg.sample_rate, first.frontend_cfg.sample_rate)}
        for field, (ensemble_value, members_value) in recorded.items():
            if ensemble_value != members_value:
                raise ExportError(f'{export_file}: {field} is {validate.shown(ensemble_value)}, but its members say '
                                  f'{validate.shown(members_value)}: export the ensemble again')
        self._ensemble = EnsembleScorer(
            [Member(m.name, m.score_batch, m.score_frames, m.frame_geometry_or_none(), m.frontend_cfg, r['weight'])
             for m, r in zip(self.members, records)], self.multi_label)
        self.engine = None   # each member has its own
        self.engine_name, self.precision = self.members[0].engine_name, self.members[0].precision
        kinds = {m.frames_precision for m in self.members}   # each member's frames check is its own
        self.frames_precision = kinds.pop() if len(kinds) == 1 else 'mixed'

    @property
    def frontend(self):
        """Deprecated name of frontend_cfg (on a Module, `frontend` is the Layer that computes features)."""
        warnings.warn('Predictor.frontend is deprecated: use Predictor.frontend_cfg (a FrontendConfig, the name '
                      'Module uses)', DeprecationWarning, stacklevel=2)
        return self.frontend_cfg

    def _onnx_file(self, precision):
        """The ONNX file for `precision`; an int8 model must have been made from this export's model.onnx."""
        if precision == 'fp32':
            return exportdir.ONNX_FILE
        int8 = self.meta.get('int8')
        source = self.meta['files'].get(exportdir.ONNX_FILE, {}).get('sha256')
        if int8 is not None and int8.get('source_sha256') != source:
            raise ExportError(
                f'{os.path.join(self.model_dir, exportdir.INT8_FILE)} was made from another model.onnx than the one '
                f'in this export; quantize it again (`paddle-soundcls export --model-dir {self.model_dir} '
                f'--quantize int8 --calibration CLIPS --check OTHER_CLIPS`)')
        return exportdir.INT8_FILE

    def _tflite_graph(self, graph, precision='fp32'):
        """The TFLite file of `graph` ('scores', 'frames', 'embed'; int8 for scores only), after
        checking that export.json records it as converted from this export's ONNX graph."""
        onnx_file, name = exportdir.TFLITE_GRAPHS[graph]
        key = 'tflite_int8' if precision == 'int8' else 'tflite'
        name = exportdir.TFLITE_INT8_FILE if precision == 'int8' else name
        export_file = os.path.join(self.model_dir, exportdir.EXPORT_FILE)
        convert = (f'convert it again (`paddle-soundcls export --model-dir {self.model_dir} --format tflite'
                   f'{" --quantize int8 --calibration CLIPS --check OTHER_CLIPS" if precision == "int8" else ""}`)')
        entry = self.meta.get(key)
        if entry is None:
            if name in self.meta['files']:
                raise ExportError(f'{export_file} lists {name} but has no "{key}" entry saying what it was converted '
                                  f'from: {convert}')
            return name   # not converted: require_file says how to make it
        sources = entry.get('source_sha256') if isinstance(entry, dict) else None
        if not isinstance(sources, dict):
            raise ExportError(f'{export_file}: "{key}" must be an object with a "source_sha256" object, as the '
                              f'conversion writes them; the export is damaged: {convert}')
        if sources.get(onnx_file) != self.meta['files'].get(onnx_file, {}).get('sha256'):
            raise ExportError(f'{os.path.join(self.model_dir, name)} was converted from another {onnx_file} than the '
                              f'one in this export; {convert}')
        return name

    def _frames_file(self, precision):
        """The frame-scores graph for `precision`: model.frames.int8.onnx when int8 was asked for and
        export.json records one made from this export's model.frames.onnx, else model.frames.onnx
        (an export quantized before the frames graph was, or whose frames check failed)."""
        frames = (self.meta.get('int8') or {}).get('frames') or {}
        if precision == 'fp32' or frames.get('file') != exportdir.FRAMES_INT8_FILE:
            return exportdir.FRAMES_FILE
        source = self.meta['files'].get(exportdir.FRAMES_FILE, {}).get('sha256')
        if frames.get('source_sha256') != source:
            raise ExportError(
                f'{os.path.join(self.model_dir, exportdir.FRAMES_INT8_FILE)} was made from another model.frames.onnx '
                f'than the one in this export; quantize it again (`paddle-soundcls export --model-dir '
                f'{self.model_dir} --quantize int8 --calibration CLIPS --check OTHER_CLIPS`), or run in float32 '
                f'(engine onnxruntime)')
        return exportdir.FRAMES_INT8_FILE

    def _check_onnx_io(self, path):
        """The ONNX (or TFLite) graph must take [batch, frames, n_mels] and give [batch, len(labels)]."""
        n_mels, num_classes = self.frontend_cfg.n_mels, len(self.labels)
        got_in, got_out = self.engine.input_shape(), self.engine.output_shape()
        if len(got_in) != 3 or got_in[2] != n_mels:
            raise ExportError(f'{path} takes input of shape {got_in}, but export.json says log-mel '
                                        f'features [batch, frames, {n_mels}]: the file belongs to another model')
        if len(got_out) != 2 or got_out[1] != num_classes:
            raise ExportError(f'{path} outputs shape {got_out}, but export.json lists {num_classes} '
                                        f'labels: the file belongs to another model')

    def features(self, waveforms):
        """waveforms [batch, samples] at frontend_cfg.sample_rate -> log-mel [batch, frames, n_mels]."""
        return logmel(waveforms, self.frontend_cfg)

    def score_batch(self, waveforms):
        """waveforms [batch, samples] (equal lengths) -> scores [batch, classes]."""
        if self._ensemble is not None:
            return self._ensemble.score_batch(waveforms)
        scores = self.engine(self.features(waveforms))
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise ExportError(f'{self.model_dir}: the model gave scores of shape {list(scores.shape)}, '
                                        f'expected [batch, {len(self.labels)}]; export the model again')
        return scores

    def scores(self, data, sample_rate=None, batch_size=8, window=None, hop=None, workers=0):
        """Raw scores: per input an array [classes], or (spans, [windows, classes]) when windowed."""
        hop = pipeline.check_args(batch_size, None, window, hop)
        sources = pipeline.as_sources(data)
        return pipeline.run(sources, self.score_batch, sample_rate, self.frontend_cfg.sample_rate, self.min_seconds,
                            batch_size, window, hop, self.clip_seconds, workers=workers)

    def predict(self, data, sample_rate=None, batch_size=8, top_k=None, window=None, hop=None, reduce='mean',
                threshold=None, topk=None, workers=0):
        """Classify or tag audio; the same results as `Module.predict`.

        data: an audio file path (read at its own rate), a numpy waveform ([samples] or
            [channels, samples] at `sample_rate` Hz), or a list of them.
        batch_size: clips (or windows) per engine call.
        top_k: keep the best k labels of every result (`topk` is its deprecated spelling).
        window, hop: seconds; slide a `window`-second window every `hop` seconds (default:
            hop = window) over each input, in batches, and return per input
            {'scores': clip-level OrderedDict, 'timeline': [{'start', 'end', 'scores'}, ...]}.
        reduce: 'mean' or 'max' over windows for the clip-level scores.
        threshold: keep only labels scoring at least this (multi-label models: every label
            that applies, possibly none).
        Without window, clips are treated as in training: padded to the training clip length,
        or, when longer, scored as the mean over consecutive windows of it (export.json's
        clip_seconds; exports of models without one score every clip whole).
        workers: processes decoding audio files while the engine scores (pipeline.load_inputs).
        Returns one OrderedDict(label -> score) per input, best first (whole-clip calls).
        """
        top_k = validate.renamed('topk', topk, 'top_k', top_k)
        pipeline.check_args(batch_size, top_k, window, hop, reduce, threshold)
        raw = self.scores(data, sample_rate, batch_size, window, hop, workers)
        return pipeline.format_results(raw, self.labels, top_k, reduce, threshold)

    # ----- embeddings -----
    def embed_batch(self, waveforms):
        """waveforms [batch, samples] (equal lengths) -> the backbone's clip embeddings [batch,
        embedding_size] (model.embed.onnx, float32 whatever the engine's precision; with engine
        'paddle', inference.embed.json)."""
        embeddings = self._load_embed_engine()(self.features(waveforms))
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ExportError(f'{self.model_dir}: the embeddings graph gave shape {list(embeddings.shape)}, expected '
                              f'[batch, {self.embedding_size}] (export.json embedding_size); export the model again')
        return embeddings

    @property
    def embedding_size(self):
        """The length of this export's embeddings (export.json embedding_size)."""
        if self.members is not None:
            raise ExportError(f'{self.model_dir} is an ensemble export: its members\' embeddings differ in size and '
                              f'meaning, so it has none of its own; embed with one member, e.g. '
                              f'Predictor({os.path.join(self.model_dir, self.meta["ensemble"]["members"][0]["dir"])!r})')
        if self.meta['embedding_size'] is None:
            raise ExportError(f'{os.path.join(self.model_dir, exportdir.EXPORT_FILE)} records no embedding_size '
                              f'(an export of an earlier version, without an embeddings graph): export the model '
                              f'again (paddle-soundcls export --checkpoint CKPT_DIR --output DIR) to embed with it')
        return int(self.meta['embedding_size'])

    @property
    def embedding_digest(self):
        """What identifies this export's embedding network: the sha256 of its weights file (the same
        whichever engine runs it)."""
        self.embedding_size   # an ensemble, or an export without an embeddings graph: refused first
        record = self.meta['files'].get(exportdir.EMBED_STATIC_PARAMS) or self.meta['files'].get(exportdir.EMBED_FILE)
        if record is None:
            raise ExportError(f'{self.model_dir}: export.json records no embeddings graph file; export the model again')
        return 'sha256:' + record['sha256']

    def _load_embed_engine(self):
        """The embeddings graph, loaded at the first embed: a missing or damaged file is an ExportError then."""
        if self._embed_engine is None:
            self.embedding_size   # an ensemble, or an export without an embeddings graph: refused first
            if self.engine_name in ('onnxruntime', 'tflite'):
                name = exportdir.EMBED_FILE if self.engine_name == 'onnxruntime' else self._tflite_graph('embed')
                path = exportdir.require_file(self.model_dir, self.meta, name, self._verify)
                engine_class = OnnxEngine if self.engine_name == 'onnxruntime' else TFLiteEngine
                load = lambda: engine_class(path, self.engine.num_threads)   # noqa: E731
            else:
                path = exportdir.require_file(self.model_dir, self.meta, exportdir.EMBED_STATIC_MODEL, self._verify)
                exportdir.require_file(self.model_dir, self.meta, exportdir.EMBED_STATIC_PARAMS, self._verify)
                load = lambda: PaddleEngine(os.path.join(self.model_dir, exportdir.EMBED_STATIC_PREFIX),  # noqa: E731
                                            self.engine.num_threads)
            try:
                self._embed_engine = load()
            except Exception as exc:  # each runtime's own types for a damaged file
                raise ExportError(f'cannot load {path}: {str(exc).strip().splitlines()[-1][:300]}. The export is '
                                  f'damaged: export the model again') from None
        return self._embed_engine

    def embed(self, data, sample_rate=None, batch_size=8, window=None, hop=None, workers=0):
        """The backbone's embeddings of audio, without Paddle; the same as `Module.embed`.

        data, sample_rate, batch_size, window, hop: as for predict, and clips are cut by the same
        rule: without window, one embedding per input, the mean over the segments predict
        scores (a clip padded to the training clip length, or consecutive windows of it); with
        window (and hop), one per window.
        workers: processes decoding audio files while the engine embeds (pipeline.load_inputs).
        Returns per input {'start': [rows], 'end': [rows] (seconds), 'embeddings': float32 [rows,
        embedding_size]}. An ensemble export has no embeddings of its own: embed with a member.
        """
        hop = pipeline.check_args(batch_size, None, window, hop)
        sources = pipeline.as_sources(data)
        self._load_embed_engine()
        raw = pipeline.run(sources, self.embed_batch, sample_rate, self.frontend_cfg.sample_rate, self.min_seconds,
                           batch_size, window, hop, self.clip_seconds, whole_span=True, workers=workers)
        return pipeline.embedding_results(raw)

    # ----- when sounds happen -----
    @property
    def frame_geometry(self):
        """Where the frames of model.frames.onnx sit in time (frames.FrameGeometry, from export.json)."""
        if self.meta['frame_geometry'] is None:
            raise ExportError(
                f'{os.path.join(self.model_dir, exportdir.EXPORT_FILE)} does not record where the network\'s frames '
                f'sit in time (frame_geometry; exports of earlier versions), so event times would be off by up to '
                f'a tenth of a second: export the model again (paddle-soundcls export --checkpoint CKPT_DIR '
                f'--output DIR) to detect events with it')
        return FrameGeometry.from_dict(self.meta['frame_geometry'])

    def frame_geometry_or_none(self):
        return None if self.meta['frame_geometry'] is None else self.frame_geometry

    def score_frames(self, waveforms):
        """waveforms [batch, samples] -> the network's frame scores [batch, frames', classes]
        (model.frames.onnx, or model.frames.int8.onnx when frames_precision is 'int8'; for an
        ensemble, the combined scores at the front end's frame rate)."""
        if self._ensemble is not None:
            return self._ensemble.score_frames(waveforms)
        return self.score_frames_of_features(self.features(waveforms))

    def score_frames_of_features(self, features):
        """log-mel features [batch, frames, n_mels] (features()) -> the network's frame scores, as
        score_frames (not for ensembles, whose members have their own front ends)."""
        return self._load_frames_engine()(features)

    def _load_frames_engine(self):
        """The frame-scores graph, loaded once: when the first scorer is made, so a missing or
        damaged file is an ExportError then (a server refuses events before a stream starts)."""
        if self._frames_engine is None:
            path = exportdir.require_file(self.model_dir, self.meta, self._frames_name, self._verify)
            engine_class = TFLiteEngine if self.engine_name == 'tflite' else OnnxEngine
            try:
                self._frames_engine = engine_class(path, self.engine.num_threads)
            except Exception as exc:  # onnxruntime's own types for a damaged file
                raise ExportError(f'cannot load {path}: {str(exc).strip().splitlines()[-1][:300]}. The export is '
                                  f'damaged: export the model again') from None
        return self._frames_engine

    def frame_scorer(self, window=None, hop=None, merge=True):
        """A detection.FrameScorer running this export's frame-scores graph (see score_frames);
        merge=False scores every window of offline detection on its own (see FrameScorer)."""
        frontend = self.frontend_cfg
        if self._ensemble is not None:
            for member in self.members:
                member.frame_geometry   # an export that records none cannot place its frames: refused here
            try:
                self._ensemble.check_frames()
            except ArgumentError as exc:   # a property of the export, not of the call
                raise ExportError(f'{self.model_dir}: {exc}') from None
            frontend = self._ensemble.frame_frontend()
        else:
            self.frame_geometry   # an export that records none cannot place its frames: refused before loading
            self._load_frames_engine()
        # One model: its windows are scored from their features, shared between overlapping windows.
        score_features = None if self._ensemble is not None else self.score_frames_of_features
        return detection.FrameScorer(self.score_frames, frontend, self.labels, self.frame_geometry, window, hop,
                                     self.min_seconds, self.clip_seconds, merge=merge, score_features=score_features)

    def detect(self, data, sample_rate=None, window=None, hop=None, config=None, batch_size=None):
        """When each sound happens, without Paddle; the same results as `Module.detect`.

        Returns per input {'frame_hop', 'frame_scores' [frames, classes], 'events': [{'label',
        'onset', 'offset', 'confidence'}]}. config: an EventConfig, or a dict of its fields that
        replace those saved with the export (events.merge_settings); default: the saved settings
        (thresholds tuned on a dev set), else EventConfig().
        batch_size: windows per network call, across the inputs (None: the scorer's default,
        detection.DEFAULT_BATCH_SIZE); the results do not depend on it, only speed and memory do.
        With an int8 engine the frame scores come from model.frames.int8.onnx when the export
        has one (frames_precision 'int8'), else from the float graph (frames_precision 'fp32').
        """
        return detection.detect_inputs(self.frame_scorer(window, hop), data, sample_rate, self._event_config(config),
                                       batch_size)

    def _event_config(self, config):
        return merge_settings(config, self.event_config, os.path.join(self.model_dir, exportdir.EXPORT_FILE))

    def stream(self, sample_rate=None, window=None, hop=None, config=None, channels=1):
        """A live stream: stream.push(chunk) -> events that started or ended, stream.close() ->
        the rest (see deploy.detection.EventStream). sample_rate: of the chunks (default the
        model's); window, hop: seconds (shorter windows answer sooner: latency_seconds);
        channels: of the chunks, which are [frames, channels] arrays ([frames] when mono)."""
        rate = self.frontend_cfg.sample_rate if sample_rate is None else sample_rate
        return detection.EventStream(self.frame_scorer(window, hop), rate, self._event_config(config), channels)

    def stream_pool(self, window=None, hop=None, config=None, batch_size=None):
        """Many live streams whose windows are scored together (deploy.detection.StreamPool):
        pool.open(sample_rate) -> a stream to feed(chunk); pool.score() -> {stream: events}."""
        return detection.StreamPool(self.frame_scorer(window, hop), self._event_config(config), batch_size)

    @property
    def num_threads(self):
        return (self.members[0] if self.members else self).engine.num_threads

    def __repr__(self):
        return (f'Predictor({self.model_dir!r}, model={self.meta["model"]}, task={self.task}, '
                f'classes={len(self.labels)}, engine={self.engine_name}, precision={self.precision}, '
                f'threads={self.num_threads})')


def _runtime(engine, precision, meta):
    """(runtime, precision) for an engine of deploy.engines.ENGINES, e.g. ('onnxruntime', 'int8')
    for 'onnxruntime_int8'; `precision` is the deprecated way to ask for int8."""
    validate.one_of('engine', engine, ENGINES)
    if engine == 'dygraph':
        raise ArgumentError("engine='dygraph' runs a Module (a checkpoint: load_module(dir).predict), not an export; "
                            "Predictor takes 'auto', 'onnxruntime', 'onnxruntime_int8', 'paddle', 'tflite' or 'tflite_int8'")
    if precision is not None:
        validate.one_of('precision', precision, PRECISIONS)
        warnings.warn("Predictor(precision=...) is deprecated: precision='int8' is engine='onnxruntime_int8'",
                      DeprecationWarning, stacklevel=3)
        if precision == 'int8':
            if engine not in ('onnxruntime', 'onnxruntime_int8'):
                raise ArgumentError(f"precision='int8' runs on engine='onnxruntime' (model.int8.onnx), not {engine!r}; "
                                    f"use engine='onnxruntime_int8'")
            engine = 'onnxruntime_int8'
        elif engine == 'onnxruntime_int8':
            raise ArgumentError("precision='fp32' contradicts engine='onnxruntime_int8': leave precision out")
    if engine == 'auto':
        engine = 'onnxruntime' if exportdir.ONNX_FILE in meta['files'] else 'paddle'
    if engine in ('onnxruntime_int8', 'tflite_int8'):
        return engine[:-len('_int8')], 'int8'
    return engine, 'fp32'
