"""ResNet-18 and ResNet-34 from paddle.vision.models on log-mel: ImageNet networks as audio backbones.

The recipe of the GTZAN music-genre experiments: an ImageNet-pretrained ResNet reads the
log-mel spectrogram as a one-channel image. Three things are adapted, nothing else:
- the first convolution takes one input channel instead of three (RGB);
- the log-mel (PANNs front end, FrontendConfig() defaults: 32 kHz, 64 mel bins, dB) is
  standardised by fixed constants to the scale of the ImageNet-normalised pixels the weights
  were trained on, and laid out as [batch, 1, n_mels, frames];
- the ImageNet classifier `fc` is removed: the embedding is the 512-d output of the last
  residual stage averaged over frequency and time (paddle.vision's global average pooling).

Only the backbone is pretrained (on ImageNet images, paddle.vision's own weights); there is no
AudioSet head, so these models are fine-tuned with a new head (task='sound-cls').
Parameter names are paddle.vision's (`conv1.weight`, `bn1._mean`, `layer3.1.conv2.weight`,
...), so its state dicts load with two changes, both declared in the weights' PretrainedCfg and
made by the builder: conv1 reduced to one input channel (`first_conv`) and the ImageNet
classifier `fc.*` dropped (`classifier`).
"""
import functools

import paddle
import paddle.nn as nn
from paddle.vision.models.resnet import BasicBlock, ResNet, model_urls

from ..errors import ArgumentError, CheckpointError
from ..features.config import FrontendConfig
from ..frames import FrameGeometry
from .base import Backbone
from .registry import ModelSpec, PretrainedCfg, register_model

FAMILY = 'resnet'

# --- the network ------------------------------------------------------------------------------

EMB_SIZE = 512   # channels of the last residual stage of ResNet-18/34 (BasicBlock, expansion 1)

# PANNs log-mel values are 10*log10 of mel power: for recordings at ordinary levels most of
# them lie between about -80 and 0 dB (noise at -20 dBFS gives about -10 dB, digital silence
# the floor of -100 dB). (x + 40) / 20 maps that range to about [-2, 2], the range of ImageNet
# pixels after paddle.vision's mean/std normalisation, so the pretrained conv1 and bn1 see
# inputs of the scale they were trained on. The constants are a fixed part of the network
# (like conv1's shape), not learnt; fine-tuning adapts the BatchNorms to the data.
LOGMEL_MEAN_DB = -40.0
LOGMEL_STD_DB = 20.0


class ResNetOnMel(Backbone, ResNet):
    """paddle.vision's ResNet with BasicBlocks (depth 18 or 34), one input channel, no classifier.

    forward_features(log-mel [batch, frames, n_mels]) -> embedding [batch, 512].
    """

    def __init__(self, depth):
        # Backbone defines no __init__: this is ResNet's. num_classes=0: no fc.
        super().__init__(BasicBlock, depth, num_classes=0, with_pool=False)
        # The one-channel stem replaces the RGB one (built by the parent, then dropped here), with
        # the same kernel, stride and padding so ImageNet's summed kernels fit it.
        self.conv1 = nn.Conv2D(1, 64, kernel_size=7, stride=2, padding=3, bias_attr=False)
        self.depth = depth
        self.emb_size = EMB_SIZE

    def feature_map(self, features):
        """log-mel [batch, frames, n_mels] -> the last stage's output [batch, 512, n_mels / 32, frames / 32]."""
        x = (features - LOGMEL_MEAN_DB) / LOGMEL_STD_DB
        # Frequency as the image height and time as its width: the spectrogram as it is drawn,
        # the layout the GTZAN recipes feed to ImageNet networks (and EfficientAT uses). The
        # embedding is pooled over both axes, so nothing downstream depends on the choice.
        x = x.unsqueeze(1).transpose([0, 1, 3, 2])      # [batch, 1, n_mels, frames]
        return ResNet.forward(self, x)                   # the ImageNet trunk without pooling and fc

    def forward_features(self, features):
        """log-mel [batch, frames, n_mels] -> embedding [batch, 512]: global average pooling."""
        return self.feature_map(features).mean(axis=[2, 3])

    def forward_frames(self, features):
        """Time-resolved embeddings [batch, frames / 32, 512]: the last stage averaged over frequency
        only. Their mean over time is forward_features."""
        return self.feature_map(features).mean(axis=2).transpose([0, 2, 1])


def build(arch, audioset_head=False):
    """A ResNetOnMel of depth `arch` (18 or 34). There is no AudioSet head to build."""
    depth = arch
    if audioset_head:
        raise ArgumentError(f'resnet{depth}_mel has no AudioSet head (only its backbone is pretrained, on '
                            f'ImageNet); build it with audioset_head=False')
    return ResNetOnMel(depth)


# --- checkpoints ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def parameter_names(depth):
    """The state-dict names of ResNetOnMel(depth), read from a network built without weights."""
    with paddle.LazyGuard():
        return frozenset(ResNetOnMel(depth).state_dict())


def checkpoint_filter(state, source, depth):
    """A ResNet-`depth` state dict -> ResNetOnMel's names: paddle.vision's own (`resnet18(pretrained=True)`'s
    ImageNet file, or any `paddle.vision.models.resnet18().state_dict()`) and ours use the same names,
    so they pass as they are, once the builder has dropped the ImageNet classifier and summed conv1's
    RGB kernels (see builder.backbone_state). A name that is not a parameter of ResNet-`depth` is
    refused, naming the source and the key. (Our `backbone.*` prefix is removed before this.)
    """
    own = parameter_names(depth)
    for key in state:
        if key not in own:
            raise CheckpointError(
                f'{source}: {key!r} is not a parameter of ResNet-{depth} (paddle.vision names: conv1.*, bn1.*, '
                f'layer1.* to layer4.*, fc.*); is it a checkpoint of another model or of another depth?')
    return dict(state)


# --- registered models ------------------------------------------------------------------------

def _context(depth):
    """Half the receptive field over time of ResNet-`depth` (435 frames for ResNet-18, 899 for ResNet-34,
    so 217 and 449 front-end frames), from the layer stack: conv1 (7x7) and the 3x3 max pooling, then
    two 3x3 convolutions per BasicBlock, each widening it by 2 x the stride so far; the same as
    measured with random weights in eval mode (tests/test_overlap.py)."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    size = 1 + 6 + 2 * 2   # conv1 at stride 1, the max pooling at stride 2
    step = 4
    for stage, count in enumerate(blocks):
        for block in range(count):
            for conv in range(2):
                size += 2 * step
                if stage and block == 0 and conv == 0:
                    step *= 2   # the stage's first 3x3 convolution strides: later ones widen twice as much
    return (size - 1) // 2


def _imagenet(depth, params, macs_10s):
    """A row of MODELS: ResNet-`depth` with paddle.vision's own ImageNet file, fetched into our cache under
    its own name and checked against the md5 paddle.vision publishes for it (model_urls)."""
    url, md5 = model_urls[f'resnet{depth}']
    weights = PretrainedCfg(
        url=url, filename=f'resnet{depth}.pdparams', file_format='pdparams', md5=md5, license='Apache-2.0',
        frontend=FrontendConfig(),
        # conv1 (7x7, stride 2, padding 3), the 3x3 max pooling (stride 2, padding 1) and the first
        # block of stages 2-4 (3x3 and 1x1 stride-2 convolutions) each centre output j on input 2j.
        frame_geometry=FrameGeometry(stride=32, offset=0, context=_context(depth)),
        labels='imagenet-1k', classifier='fc', first_conv='conv1.weight',
        description='backbone only, on ImageNet-1k (paddle.vision); no AudioSet head')
    return depth, weights, {'params': params, 'macs_10s': macs_10s}


# name: (depth, pretrained weights, published figures). The parameters are paddle.vision's (11,689,512
# and 21,797,672) minus its fc (512 x 1000 + 1000) and minus two of conv1's three input channels
# (2 x 64 x 7 x 7); BatchNorm running statistics are not counted. The MACs are counted by our
# complexity report on the log-mel of a 10-s clip (1001 frames x 64 mel bins): Conv and Linear
# layers, front end excluded.
MODELS = {
    'resnet18_mel': _imagenet(18, 11170240, 2.24e9),
    'resnet34_mel': _imagenet(34, 21278400, 4.62e9),
}


def _register_all():
    for name, (depth, weights, published) in MODELS.items():
        register_model(ModelSpec(
            name=name, family=FAMILY, build=functools.partial(build, depth), emb_size=EMB_SIZE,
            checkpoint_filter=functools.partial(checkpoint_filter, depth=depth), weights=weights,
            # Every convolution and the max pooling are padded, so the network takes any clip of one
            # frame or more; the front end's reflect padding needs more than n_fft / 2 samples.
            min_seconds=0.1, audioset_head=None, published=published))


_register_all()
