"""paddle_soundcls: fine-tune, tag, export and deploy pretrained sound classifiers with PaddlePaddle.

Public API: Module, Ensemble, Trainer, create_model, list_models, load_module. Paddle is imported on
first use, so the Paddle-free deployment runtime (`paddle_soundcls.deploy`) can import this package.
"""
__version__ = '0.1.0'
__all__ = ['Ensemble', 'Module', 'Trainer', 'create_model', 'list_models', 'load_module']


def list_models():
    from .models.registry import list_models as _list
    return _list()


def create_model(name, **kwargs):
    """Same as Module(name, **kwargs)."""
    from .module import Module
    return Module(name, **kwargs)


def __getattr__(name):
    if name == 'Module':
        from .module import Module
        return Module
    if name == 'load_module':   # checkpoints and saved ensembles
        from .ensemble import load_module
        return load_module
    if name == 'Ensemble':
        from .ensemble import Ensemble
        return Ensemble
    if name == 'Trainer':
        from .training.trainer import Trainer
        return Trainer
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
