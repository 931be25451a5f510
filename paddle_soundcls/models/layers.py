"""Layers several families build from: 'same'-padded convolutions, conv-norm-activation, squeeze-excitation.

Sub-layers are numbered and named as in the PyTorch originals (torchvision's Conv2dNormActivation,
its SqueezeExcitation), so the checkpoints of those networks map onto ours name for name.
"""
import paddle.nn as nn
import paddle.nn.functional as F

ACTIVATIONS = {'relu': nn.ReLU, 'hardswish': nn.Hardswish}


def make_divisible(value, divisor=8):
    """Round a channel count to a multiple of `divisor`, never more than 10% below `value`
    (MobileNet's rule, which the EfficientAT and CP-Mobile widths follow)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def same_conv(in_channels, out_channels, kernel, stride=1, groups=1, weight_attr=None):
    """A Conv2D without bias, padded so that (odd) kernels keep the size at stride 1 and centre output j
    on input stride * j: the frame geometry each family states relies on it."""
    return nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                     weight_attr=weight_attr, bias_attr=False)


def conv_bn_act(in_channels, out_channels, kernel, stride=1, groups=1, activation=None, norm=nn.BatchNorm2D,
                weight_attr=None):
    """same_conv -> norm(out_channels) -> activation (a name of ACTIVATIONS, or None), numbered 0, 1, 2."""
    layers = [same_conv(in_channels, out_channels, kernel, stride, groups, weight_attr), norm(out_channels)]
    if activation is not None:
        layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Layer):
    """Channel squeeze-and-excitation: mean over frequency and time, two Linears, a sigmoid gate."""

    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze_channels)
        self.fc2 = nn.Linear(squeeze_channels, channels)

    def forward(self, x):
        scale = F.sigmoid(self.fc2(F.relu(self.fc1(x.mean(axis=[2, 3])))))
        return x * scale.unsqueeze([2, 3])
