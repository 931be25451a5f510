"""PANNs CNN14 / CNN10 / CNN6 (Kong et al., 2020) in Paddle.

Parameter names and shapes are those of the official Paddle checkpoints
(`panns_cnn14.pdparams` from PaddleSpeech / PaddleHub), so they load unchanged.
Each backbone takes log-mel features [batch, 1, frames, n_mels] and returns the
embedding [batch, emb_size]; `fc_audioset` is the 527-class AudioSet layer.
"""
import paddle.nn as nn
import paddle.nn.functional as F

AUDIOSET_CLASSES = 527


def _conv(in_channels, out_channels, kernel):
    return nn.Conv2D(in_channels, out_channels, kernel_size=kernel, stride=1, padding=kernel // 2, bias_attr=False)


class ConvBlock(nn.Layer):
    """conv-bn-relu (twice for the 3x3 blocks, once for the 5x5 ones), then 2-D average pooling."""

    def __init__(self, in_channels, out_channels, kernel=3, num_convs=2):
        super().__init__()
        self.num_convs = num_convs
        self.conv1 = _conv(in_channels, out_channels, kernel)
        self.bn1 = nn.BatchNorm2D(out_channels)
        if num_convs == 2:
            self.conv2 = _conv(out_channels, out_channels, kernel)
            self.bn2 = nn.BatchNorm2D(out_channels)

    def forward(self, x, pool_size=2):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.num_convs == 2:
            x = F.relu(self.bn2(self.conv2(x)))
        if pool_size != 1:
            x = F.avg_pool2d(x, kernel_size=pool_size)
        return x


class PANNsBackbone(nn.Layer):
    """The shared CNN trunk: bn0 over mel bins, conv blocks, global pooling, fc1."""

    def __init__(self, channels, kernel, num_convs, last_pool, emb_size, n_mels=64):
        super().__init__()
        self.emb_size = emb_size
        self.num_blocks = len(channels)
        self.bn0 = nn.BatchNorm2D(n_mels)
        in_channels = 1
        for i, out_channels in enumerate(channels, start=1):
            self.add_sublayer(f'conv_block{i}', ConvBlock(in_channels, out_channels, kernel, num_convs))
            in_channels = out_channels
        self.pool_sizes = [2] * (len(channels) - 1) + [last_pool]
        self.fc1 = nn.Linear(in_channels, emb_size)
        self.fc_audioset = nn.Linear(emb_size, AUDIOSET_CLASSES)

    def blocks(self):
        return [getattr(self, f'conv_block{i}') for i in range(1, self.num_blocks + 1)]

    def forward(self, x):
        """x: [batch, 1, frames, n_mels] log-mel. Returns the embedding [batch, emb_size]."""
        # bn0 normalises each mel bin: move mel bins to the channel axis and back.
        x = self.bn0(x.transpose([0, 3, 2, 1])).transpose([0, 3, 2, 1])
        for block, pool in zip(self.blocks(), self.pool_sizes):
            x = F.dropout(block(x, pool), p=0.2, training=self.training)
        x = x.mean(axis=3)                       # over mel
        x = x.max(axis=2) + x.mean(axis=2)       # over time
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.fc1(x))
        return F.dropout(x, p=0.5, training=self.training)


def cnn14(n_mels=64):
    return PANNsBackbone([64, 128, 256, 512, 1024, 2048], kernel=3, num_convs=2, last_pool=1, emb_size=2048, n_mels=n_mels)


def cnn10(n_mels=64):
    return PANNsBackbone([64, 128, 256, 512], kernel=3, num_convs=2, last_pool=2, emb_size=512, n_mels=n_mels)


def cnn6(n_mels=64):
    return PANNsBackbone([64, 128, 256, 512], kernel=5, num_convs=1, last_pool=2, emb_size=512, n_mels=n_mels)


ARCHITECTURES = {'cnn14': cnn14, 'cnn10': cnn10, 'cnn6': cnn6}
