"""Layers against the recording device: normalisations along frequency, and gradient reversal.

A recording device (a phone, a headset) acts on a scene mostly as a filter: a gain per frequency,
which on a log-mel spectrogram is an offset per mel band, the same at every frame. A network
trained on few devices learns those offsets as cues, and does worse on devices it has not heard.
Three ways to take them away, each a small block any family can use on a feature map laid out
[batch, channels, frequency, time] (the layout of CP-Mobile and the other CNNs here):

SubSpectralNorm (SSN; Chang et al., "Subspectral normalization for neural audio data
    processing", ICASSP 2021): BatchNorm with its own statistics and affine weights for each of
    S equal sub-bands of the frequency axis, i.e. BatchNorm over C x S channels. Low and high
    bands, whose levels differ by device and by nature, are no longer pooled into one mean.
    It keeps running statistics (evaluation uses them, as BatchNorm does) and adds
    2 x C x (S - 1) learnt parameters over the BatchNorm it replaces.

RelaxedFreqNorm (RFN; Kim et al., "Domain generalization with relaxed instance frequency-wise
    normalization for multi-device acoustic scene classification", Interspeech 2022):
        RFN(x) = lam * LN(x) + (1 - lam) * IFN(x)
    IFN, the instance frequency-wise normalisation, standardises each (clip, frequency) over
    channels and time: it removes a clip's per-band offset and scale, the device's filter with
    them. Alone it also removes what the band levels say about the scene; LN, the same clip
    standardised over channels, frequency and time at once, keeps the bands' relative levels, and
    lam mixes the two (0: IFN alone, 1: LN alone; 0.5 in the paper). No parameters, no running
    statistics: the same computation in training and inference, clip by clip.

ResidualFreqNorm (ResNorm; Kim et al., "Domain generalization on efficient acoustic scene
    classification using residual normalization", DCASE 2021 workshop, the earlier form of RFN):
        ResNorm(x) = IFN(x) + lam * x
    the shortcut path keeps a scaled copy of the input beside its frequency-wise normalisation.

GradientReversal and DeviceClassifier (Ganin & Lempitsky, "Unsupervised domain adaptation by
    backpropagation", ICML 2015; DANN): a device classifier on the embedding, behind a layer that
    is the identity forward and multiplies the gradient by -lam backward. Minimising the device
    loss through it trains the classifier to recognise the device and the backbone to make that
    impossible. `dann_weight` is DANN's schedule for lam over training. These are training-only:
    in evaluation mode the reversal is the identity, and no exported graph contains them (the
    exporter exports the scores network, which does not include a device classifier).

SSN and RFN use only reshapes, means and BatchNorm, so networks using them export with
paddle.jit.save / paddle.jit.to_static and convert to ONNX.
"""
import math

import paddle
import paddle.nn as nn

from .. import validate
from ..errors import ArgumentError

EPSILON = 1e-5


# --- normalisations along frequency ---------------------------------------------------------------

def _check_map(x, name):
    if len(x.shape) != 4:
        raise ArgumentError(f'{name} takes a feature map [batch, channels, frequency, time], got shape {list(x.shape)}')


def _standardise(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over `axes` of each clip, with the biased variance. The variance
    is the mean of the squared deviations (not paddle.var) so the graph converts to ONNX as
    plain reductions."""
    centred = x - x.mean(axis=axes, keepdim=True)
    return centred / paddle.sqrt((centred * centred).mean(axis=axes, keepdim=True) + eps)


# The defaults are literals: to_static rewrites these functions in a module of its own, where a
# default naming a global of this module is not defined.
def instance_freq_norm(x, eps=1e-5):
    """IFN: each (clip, frequency) of a map [batch, channels, frequency, time] standardised over
    channels and time."""
    _check_map(x, 'instance_freq_norm')
    return _standardise(x, [1, 3], eps)


def layer_norm(x, eps=1e-5):
    """LN: each clip of a map [batch, channels, frequency, time] standardised over all three axes."""
    _check_map(x, 'layer_norm')
    return _standardise(x, [1, 2, 3], eps)


class SubSpectralNorm(nn.Layer):
    """SSN: BatchNorm of each of `sub_bands` equal frequency bands of a map [batch, channels,
    frequency, time] with statistics and affine weights of its own.

    The map is viewed as [batch, channels x sub_bands, frequency / sub_bands, time] (band s of
    channel c is channel c x sub_bands + s, the layout of the paper's reference code) and
    batch-normalised there. `momentum` and `epsilon` are Paddle's BatchNorm2D's (momentum 0.9
    is PyTorch's 0.1). The frequency axis must divide into `sub_bands` bands.
    """

    def __init__(self, channels, sub_bands, momentum=0.9, epsilon=EPSILON):
        super().__init__()
        self.channels = validate.positive_int('channels', channels)
        self.sub_bands = validate.positive_int('sub_bands', sub_bands)
        self.bn = nn.BatchNorm2D(self.channels * self.sub_bands, momentum=momentum, epsilon=epsilon)

    def forward(self, x):
        _check_map(x, 'SubSpectralNorm')
        channels, bins = x.shape[1], x.shape[2]
        if channels != self.channels:
            raise ArgumentError(f'SubSpectralNorm was built for {self.channels} channels, got a map of {channels}')
        if bins < 0:   # a frequency axis of unknown size in a static graph: its bands cannot be laid out
            raise ArgumentError('SubSpectralNorm needs the size of the frequency axis; give the input spec a fixed '
                                'number of mel bins')
        if bins % self.sub_bands:
            raise ArgumentError(f'SubSpectralNorm: {bins} frequency bins do not split into {self.sub_bands} equal '
                                f'sub-bands; choose sub_bands dividing {bins}')
        # 0 keeps the batch size and -1 the number of frames, either of which may be dynamic.
        bands = x.reshape([0, self.channels * self.sub_bands, bins // self.sub_bands, -1])
        return self.bn(bands).reshape([0, self.channels, bins, -1])

    def extra_repr(self):
        return f'channels={self.channels}, sub_bands={self.sub_bands}'


class RelaxedFreqNorm(nn.Layer):
    """RFN(x) = lam * LN(x) + (1 - lam) * IFN(x) on a map [batch, channels, frequency, time]
    (see the module docstring); lam in [0, 1], 0.5 as in the paper. No parameters."""

    def __init__(self, lam=0.5, eps=EPSILON):
        super().__init__()
        self.lam = validate.probability('lam', lam, hint='0: frequency-wise instance norm alone, 1: layer norm alone')
        self.eps = validate.positive_number('eps', eps)

    def forward(self, x):
        return self.lam * layer_norm(x, self.eps) + (1.0 - self.lam) * instance_freq_norm(x, self.eps)

    def extra_repr(self):
        return f'lam={self.lam}, eps={self.eps}'


class ResidualFreqNorm(nn.Layer):
    """ResNorm(x) = IFN(x) + lam * x on a map [batch, channels, frequency, time] (see the module
    docstring); lam >= 0 weighs the shortcut. No parameters."""

    def __init__(self, lam, eps=EPSILON):
        super().__init__()
        self.lam = validate.non_negative_number('lam', lam, hint='the weight of the shortcut')
        self.eps = validate.positive_number('eps', eps)

    def forward(self, x):
        return instance_freq_norm(x, self.eps) + self.lam * x

    def extra_repr(self):
        return f'lam={self.lam}, eps={self.eps}'


# --- gradient reversal ------------------------------------------------------------------------

def dann_weight(progress, gamma=10.0):
    """DANN's schedule for the reversal weight: 2 / (1 + exp(-gamma * progress)) - 1, rising from 0
    at the start of training (progress 0) towards 1 (0.9866 halfway, 0.99991 at the end with
    gamma 10), so the device classifier is trained a while before its gradient reaches the
    backbone at full weight."""
    progress = validate.probability('progress', progress, hint='the fraction of training done')
    gamma = validate.non_negative_number('gamma', gamma)
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class _ReverseGradient(paddle.autograd.PyLayer):
    """Identity forward; the gradient times -lam backward."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.clone()   # a new tensor, so the reversal applies to this path only

    @staticmethod
    def backward(ctx, grad):
        return grad * -ctx.lam


class GradientReversal(nn.Layer):
    """Gradient reversal: the identity forward; backward, the gradient times -lam (training mode
    only: in evaluation mode it is the identity both ways and adds nothing to a graph).

    lam can be set at any time (`layer.lam = 0.3`), or from the training progress with DANN's
    schedule (`layer.set_progress(step / total_steps)`: lam = scale * dann_weight(progress, gamma)).
    """

    def __init__(self, lam=1.0):
        super().__init__()
        self.lam = lam

    @property
    def lam(self):
        return self._lam

    @lam.setter
    def lam(self, value):
        self._lam = validate.non_negative_number('lam', value, hint='the weight of the reversed gradient')

    def set_progress(self, progress, gamma=10.0, scale=1.0):
        """Set lam to scale * dann_weight(progress, gamma); returns it."""
        self.lam = validate.non_negative_number('scale', scale) * dann_weight(progress, gamma)
        return self.lam

    def forward(self, x):
        if not self.training:
            return x
        return _ReverseGradient.apply(x, self._lam)

    def extra_repr(self):
        return f'lam={self._lam:g}'


class DeviceClassifier(nn.Layer):
    """Device logits from a clip embedding, through a gradient reversal: GradientReversal(lam),
    then an MLP (Linear -> ReLU [-> Dropout] for each width in `hidden`), then Linear to
    `num_devices`.

    Trained with a cross-entropy on the device labels added to the scene loss, it learns to tell
    the devices apart while the reversed gradient pushes the backbone to make them
    indistinguishable. `lam` and `set_progress` are the reversal's.
    """

    def __init__(self, embedding_dim, num_devices, hidden=(128,), dropout=0.0, lam=1.0):
        super().__init__()
        embedding_dim = validate.positive_int('embedding_dim', embedding_dim)
        num_devices = validate.integer('num_devices', num_devices, 2, hint='a classifier needs two devices or more')
        hidden = (hidden,) if isinstance(hidden, int) and not isinstance(hidden, bool) else tuple(hidden)
        widths = [validate.positive_int(f'hidden[{i}]', width) for i, width in enumerate(hidden)]
        dropout = validate.number('dropout', dropout, 0, 1, high_open=True)
        self.grl = GradientReversal(lam)
        layers, width = [], embedding_dim
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            width = out
        layers.append(nn.Linear(width, num_devices))
        self.mlp = nn.Sequential(*layers)
        self.num_devices = num_devices

    @property
    def lam(self):
        return self.grl.lam

    @lam.setter
    def lam(self, value):
        self.grl.lam = value

    def set_progress(self, progress, gamma=10.0, scale=1.0):
        return self.grl.set_progress(progress, gamma, scale)

    def forward(self, embedding):
        """Embedding [..., embedding_dim] -> device logits [..., num_devices]."""
        return self.mlp(self.grl(embedding))
