"""Deployment formats: Paddle static graph (Paddle Inference), ONNX, and the parity check.

    from paddle_soundcls.export import load_module, export_static, export_onnx, check_parity
    module = load_module('ckpt/best_model')
    export_static(module, 'exported')                  # inference.json + inference.pdiparams + export.json
    export_onnx('exported')                            # + model.onnx
    check_parity('exported', 'data/ESC-50-master')     # Paddle Inference vs onnxruntime
"""
from .onnx import DEFAULT_OPSET, export_onnx
from .parity import check_parity, list_labelled_files
from .static import export_static, load_module

__all__ = ['DEFAULT_OPSET', 'check_parity', 'export_onnx', 'export_static', 'list_labelled_files', 'load_module']
