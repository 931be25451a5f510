"""Deployment formats: Paddle static graph (Paddle Inference), ONNX, int8, TFLite and SavedModel,
and the parity check.

    from paddle_soundcls import load_module
    from paddle_soundcls.export import export_static, export_onnx, check_parity
    module = load_module('ckpt/best_model')
    export_static(module, 'exported')                  # inference.json + inference.pdiparams + export.json
    export_onnx('exported')                            # + model.onnx
    check_parity('exported', 'data/ESC-50-master')     # Paddle Inference vs onnxruntime
    export_tensorflow('exported', ('tflite',))         # + model.tflite, ... (converted from the ONNX graphs)

The names are imported on first use: the int8 tooling and the parity check run without
Paddle being imported (the Paddle-free command line uses them on export directories).
What measures a model rather than exporting it (complexity, benchmark) is in paddle_soundcls.analysis.
"""
import importlib

_NAMES = {'DEFAULT_OPSET': 'onnx', 'export_onnx': 'onnx', 'check_parity': 'parity',
          'list_labelled_files': 'parity', 'export_static': 'static', 'export_tensorflow': 'tflite'}
__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f'{__name__}.{_NAMES[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
