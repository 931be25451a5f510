"""Training: the Trainer, losses, metrics, augmentation and learning-rate schedules."""
from .augment import AugmentConfig
from .trainer import Trainer

__all__ = ['Trainer', 'AugmentConfig']
