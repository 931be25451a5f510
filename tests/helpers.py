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


def prime_batchnorm(module, waves):
    """Set every BatchNorm's running statistics from one batch, as a pretrained network would
    have them: with random weights and a few training steps, eval-mode outputs would
    otherwise reflect the initial statistics (mean 0, variance 1) rather than the data."""
    norms = [layer for layer in module.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    saved = [layer._momentum for layer in norms]
    for layer in norms:
        layer._momentum = 0.0
    module.train()
    with paddle.no_grad():
        module(module.frontend(paddle.to_tensor(waves)))
    for layer, momentum in zip(norms, saved):
        layer._momentum = momentum
    module.eval()
    return module


# Prepended to code run in a subprocess to show it works with PaddlePaddle unimportable.
BLOCK_PADDLE = '''import json, sys


class NoPaddle:
    blocked = ('paddle', 'paddle2onnx')

    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in self.blocked:   # what Python raises when the package is not installed
            raise ModuleNotFoundError(f'No module named {name!r}', name=top)
        return None


sys.meta_path.insert(0, NoPaddle())
'''


def spec_with_url(name, url):
    """The registered spec of `name`, its pretrained weights published at `url` instead."""
    import dataclasses

    from paddle_soundcls.models import registry
    spec = registry.get_spec(name)
    return dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, url=url))


def loudness_weights(module):
    """Set a CNN6 Module's backbone so that its embedding measures loudness: every convolution
    averages its inputs, batch norms pass values through, bn0 subtracts a -30 dB floor (quiet
    noise gives an all-zero embedding, loud sound a positive one) and fc1 averages the channels.
    The head is left to the caller. Returns the module in eval mode."""
    import numpy as np
    state = {}
    for key, value in module.state_dict().items():
        shape = list(value.shape)
        if key.endswith('conv1.weight'):
            v = np.full(shape, 1.0 / np.prod(shape[1:]))
        elif key.endswith('_variance') or key.endswith('bn0.weight') or '.bn1.weight' in key:
            v = np.ones(shape)
        elif key == 'backbone.bn0._mean':
            v = np.full(shape, -30.0)
        elif key == 'backbone.fc1.weight':
            v = np.full(shape, 1.0 / shape[0])
        elif key.startswith('backbone.'):
            v = np.zeros(shape)
        else:
            continue
        state[key] = v.astype('float32')
    module.set_state_dict(state)
    module.eval()
    return module


# Registered models that are another registered model's network with other weights files (the
# ImageNet-initialised DyMNs, the other PaSST-S releases): the tests generated for every model
# run the same code for them as for their twin, so there they are slow tests; their own family's
# tests (tests/test_dymn.py, tests/test_passt.py) still run them by default.
WEIGHTS_ONLY_TWINS = {'efficientat_dymn04_im': 'efficientat_dymn04', 'efficientat_dymn10_im': 'efficientat_dymn10',
                      'efficientat_dymn20_im': 'efficientat_dymn20',
                      'passt_s_swa_p16_128_ap4761': 'passt_s_swa_p16_128_ap476',
                      'passt_s_p16_128_ap472': 'passt_s_swa_p16_128_ap476'}
