"""Inference engines: log-mel features [batch, frames, n_mels] float32 -> scores [batch, classes].

`OnnxEngine` (onnxruntime) is the default everywhere. `PaddleEngine` (Paddle Inference with
oneDNN) imports paddle only when it is created, so this module stays Paddle-free; so does
`TFLiteEngine` (the TFLite interpreter), which needs neither Paddle nor onnxruntime.
"""
# The one vocabulary of engines (Module.predict, Predictor, the command line, the benchmark):
# onnxruntime and onnxruntime_int8 run model.onnx / model.int8.onnx, paddle runs Paddle Inference
# on an export's inference.json, tflite and tflite_int8 run model.tflite / model.int8.tflite,
# dygraph runs a Module; auto picks one (see each caller).
ENGINES = ('auto', 'onnxruntime', 'onnxruntime_int8', 'paddle', 'tflite', 'tflite_int8', 'dygraph')

import contextlib
import os
import sys
import threading
import warnings

import numpy as np
from .. import validate


def cpu_count():
    """CPUs this process may run on (respects taskset / cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_threads(num_threads):
    if num_threads is None:
        return cpu_count()
    return validate.positive_int('num_threads', num_threads, allow_none=True, hint='None: one per CPU')


@contextlib.contextmanager
def stdout_to_stderr(discard=False):
    """Send what C++ code prints to stdout (Paddle's oneDNN notes, paddle2onnx's progress) to
    stderr while it runs, so results printed on stdout (JSON lines) stay parseable; with
    discard=True, nowhere (the notes Paddle Inference prints at every run, such as
    "ReduceMeanCheckIfOneDNNSupport", say nothing to a user)."""
    target = None
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        target = os.open(os.devnull, os.O_WRONLY) if discard else 2
        os.dup2(target, 1)
    except (OSError, ValueError, AttributeError):  # no fd 1/2 (e.g. a service), or stdout replaced
        yield
        return
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if discard:
            os.close(target)


def onnx_session_options(num_threads=None):
    """The onnxruntime settings used by default.

    Measured on CNN14, 5-s clips, batch 8, 2 CPUs: all graph optimisations (level ALL adds
    the NCHWc convolution layout) beat BASIC / EXTENDED by ~15%; sequential execution beats
    parallel by ~50%, because the PANNs graph is a chain of convolutions with nothing to run
    side by side, so an inter-op pool only takes cores from the intra-op threads. One
    intra-op thread per CPU this process may use (onnxruntime's own default counts physical
    cores of the machine, which oversubscribes a container limited to fewer).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = check_threads(num_threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no notes about unused initializers on stderr
    # Threads that sleep when a run ends instead of spinning for more work: every call here is followed
    # by numpy work on the same cores (the next batch's log-mel, the event decisions), which spinning
    # threads would halve. mn04, 5-s clips, batch 8, 2 CPUs: the network alone 1.09 -> 1.49 ms a clip,
    # but features and network together 6.85 -> 3.68 ms; offline detection 128x -> 243x real time.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return options


class OnnxEngine:
    """An onnxruntime CPU session.

    model: path of a .onnx file, or its bytes.
    """
    name = 'onnxruntime'

    def __init__(self, model, num_threads=None, options=None):
        import onnxruntime as ort
        self.num_threads = check_threads(num_threads)
        self.session = ort.InferenceSession(model, options or onnx_session_options(self.num_threads),
                                            providers=['CPUExecutionProvider'])
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]

    def input_shape(self):
        return list(self.input.shape)

    def output_shape(self):
        return list(self.output.shape)

    def __call__(self, features):
        features = np.ascontiguousarray(features, dtype=np.float32)
        return self.session.run([self.output.name], {self.input.name: features})[0]


class PaddleEngine:
    """Paddle Inference on the CPU with oneDNN.

    model_prefix: path of the static model without suffix (`dir/inference` for
    inference.json + inference.pdiparams).
    """
    name = 'paddle'

    def __init__(self, model_prefix, num_threads=None):
        try:
            with warnings.catch_warnings():   # "No ccache found" on import: nothing for a user to do
                warnings.simplefilter('ignore', UserWarning)
                from paddle import inference
        except ImportError as exc:
            raise ImportError(f"engine='paddle' needs PaddlePaddle ({exc}); pip install paddlepaddle, or use "
                              f"engine='onnxruntime'", name='paddle') from None
        self.num_threads = check_threads(num_threads)
        config = inference.Config(model_prefix + '.json', model_prefix + '.pdiparams')
        config.disable_gpu()
        config.enable_mkldnn()
        # oneDNN keeps compiled kernels per input shape; clips of many lengths would grow
        # that cache without bound.
        config.set_mkldnn_cache_capacity(16)
        config.set_cpu_math_library_num_threads(self.num_threads)
        config.disable_glog_info()
        with stdout_to_stderr():
            self.predictor = inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, features):
        features = np.ascontiguousarray(features, dtype=np.float32)
        self.input.reshape(list(features.shape))
        self.input.copy_from_cpu(features)
        with stdout_to_stderr(discard=True):
            self.predictor.run()
        return self.output.copy_to_cpu()


def tflite_interpreter_class():
    """The TFLite Interpreter class of whichever runtime is installed: ai-edge-litert (the maintained
    one), tflite-runtime (its predecessor), or TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from tensorflow.lite import Interpreter
        return Interpreter
    except ImportError:
        raise ImportError("engine='tflite' needs a TFLite interpreter: pip install ai-edge-litert (or "
                          "tflite-runtime, or tensorflow)", name='ai_edge_litert') from None


class TFLiteEngine:
    """The TFLite interpreter on the CPU (XNNPACK).

    model: path of a .tflite file. Its input is resized to each call's [batch, frames, n_mels]
    (the graphs keep batch and frames dynamic). A full-integer model (int8 input and output)
    gets its input quantized and its output dequantized here, with the scales the file records,
    so callers see float32 either way. One interpreter runs one call at a time (a lock), as
    the TFLite interpreter is not safe to call from two threads at once.
    """
    name = 'tflite'

    def __init__(self, model, num_threads=None):
        self.num_threads = check_threads(num_threads)
        self.interpreter = tflite_interpreter_class()(model_path=os.fspath(model), num_threads=self.num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._shape = None
        self._lock = threading.Lock()

    @staticmethod
    def _shape_of(details):
        return [None if int(d) < 0 else int(d) for d in details.get('shape_signature', details['shape'])]

    def input_shape(self):
        return self._shape_of(self.input)

    def output_shape(self):
        return self._shape_of(self.output)

    def __call__(self, features):
        features = np.ascontiguousarray(features, dtype=np.float32)
        dtype = self.input['dtype']
        if dtype != np.float32:
            scale, zero = self.input['quantization']
            info = np.iinfo(dtype)
            features = np.clip(np.round(features / scale) + zero, info.min, info.max).astype(dtype)
        with self._lock:
            if features.shape != self._shape:
                self._shape = None   # a resize that fails must not leave the old shape recorded
                self.interpreter.resize_tensor_input(self.input['index'], list(features.shape))
                self.interpreter.allocate_tensors()
                self._shape = features.shape
            self.interpreter.set_tensor(self.input['index'], features)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self.output['index']).copy()
        if self.output['dtype'] != np.float32:
            scale, zero = self.output['quantization']
            out = (out.astype(np.float32) - zero) * np.float32(scale)
        return out
