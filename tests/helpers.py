"""Small models for tests: random weights, but with bn0 statistics set to those of
log-mel input so activations (and scores) are not saturated."""
import paddle

from paddle_soundcls import Module


def calm(module):
    bn0 = module.backbone.bn0
    bn0._mean.set_value(paddle.full(bn0._mean.shape, -40.0))
    bn0._variance.set_value(paddle.full(bn0._variance.shape, 400.0))
    return module


def small_module(name='panns_cnn6', **kwargs):
    kwargs.setdefault('pretrained', False)
    return calm(Module(name, **kwargs))
