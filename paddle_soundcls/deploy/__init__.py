"""Paddle-free deployment runtime: run an export directory with onnxruntime (or Paddle Inference).

    from paddle_soundcls.deploy import Predictor
    predictor = Predictor('export_dir')                    # engine='onnxruntime'
    predictor.predict(['dog.wav'], top_k=3)                # [OrderedDict(label -> score)], best first
    predictor.predict(['long.wav'], window=5.0, hop=2.5)   # [{'scores': ..., 'timeline': [...]}]

Imports numpy, soundfile, onnxruntime and the Paddle-free parts of paddle_soundcls only;
paddle is imported only for engine='paddle'.
"""
from .exportdir import ExportError, read_export
from .predictor import ENGINES, Predictor

__all__ = ['ENGINES', 'ExportError', 'Predictor', 'read_export']
