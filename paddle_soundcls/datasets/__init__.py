"""Datasets of labelled audio clips, served as fixed-length mono waveforms (no features)."""
from .base import AudioDataset, DatasetError
from .demo import make_demo_dataset
from .esc50 import ESC50
from .folder import AudioFolder, CSVDataset
from .gtzan import GTZAN
from .scenes import make_scenes
from .sed import StrongLabelDataset
from .strong import read_strong_labels
from .tau22 import TAU22, make_tau22_demo
from .urbansound8k import UrbanSound8K

__all__ = ['AudioDataset', 'AudioFolder', 'CSVDataset', 'DatasetError', 'ESC50', 'GTZAN', 'StrongLabelDataset',
           'TAU22', 'UrbanSound8K', 'make_demo_dataset', 'make_scenes', 'make_tau22_demo', 'read_strong_labels']
