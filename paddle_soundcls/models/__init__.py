from .panns import ARCHITECTURES, AUDIOSET_CLASSES, PANNsBackbone

__all__ = ['ARCHITECTURES', 'AUDIOSET_CLASSES', 'PANNsBackbone']
