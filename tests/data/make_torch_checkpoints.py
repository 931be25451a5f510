"""Make the PyTorch checkpoints under tests/data/torch/ that tests/test_converter.py reads.

Needs PyTorch, numpy and librosa, kept out of the package's own environment:

    python -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy librosa==0.11.0
    /tmp/torchenv/bin/python tests/data/make_torch_checkpoints.py

Writes to tests/data/torch/:
  tiny_cnn14.pth   a small network shaped like PANNs Cnn14 (3x3 blocks of two convolutions, no
                   pooling after the last block), saved as the official checkpoints are
                   ({'model': state_dict, 'iteration': ...}), with the front-end buffers under
                   their real names (short stand-ins for the STFT kernels; the real librosa
                   mel filters for 4 mel bins) and one stored non-contiguous, one at an offset;
  tiny_cnn6.pth    the same for Cnn6 (5x5 blocks of one convolution), without front-end buffers;
  tensors.pth      tensors of every dtype the reader supports, and strided views;
  hostile.pth      a zip-format file whose pickle would run `touch converter_hostile_marker`;
  *_legacy.pth     tiny_cnn14.pth ({'model': state_dict} only), tensors.pth and hostile.pth in
                   the legacy format of PyTorch < 1.6 (`_use_new_zipfile_serialization=False`);
  reference.npz    what the tests compare against: the model outputs PyTorch computes on seeded
                   log-mel features, a checksum of every checkpoint tensor, and tensors.pth's values.
"""
import collections
import os
import pickle
import zipfile

import librosa
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch')
HOSTILE_MARKER = 'converter_hostile_marker'

# Small versions of the official networks: few channels, a 4-dim embedding, 4 mel bins.
TINY = {
    'cnn14': dict(channels=[4, 8], kernel=3, pools=[2, 1], emb_size=4, n_mels=4),
    'cnn6': dict(channels=[4, 8], kernel=5, pools=[2, 2], emb_size=4, n_mels=4),
}
FRAMES = 16
BATCH = 2


class ConvBlock(nn.Module):
    """PANNs ConvBlock: (conv 3x3, BN, ReLU) x 2, then average pooling."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x, pool_size):
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool_size)


class ConvBlock5x5(nn.Module):
    """PANNs ConvBlock5x5: conv 5x5, BN, ReLU, then average pooling."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x, pool_size):
        return F.avg_pool2d(F.relu_(self.bn1(self.conv1(x))), kernel_size=pool_size)


class Holder(nn.Module):
    """Carries front-end buffers under torchlibrosa's attribute names."""


class TinyPANNs(nn.Module):
    """PANNs Cnn14 / Cnn6 from the log-mel input on, with the official attribute names."""

    def __init__(self, channels, kernel, pools, emb_size, n_mels, frontend):
        super().__init__()
        if frontend:
            # torchlibrosa: Spectrogram.stft.conv_{real,imag} (Conv1d, no bias) and LogmelFilterBank.melW.
            self.spectrogram_extractor = Holder()
            self.spectrogram_extractor.stft = Holder()
            self.spectrogram_extractor.stft.conv_real = nn.Conv1d(1, 3, 4, bias=False)
            self.spectrogram_extractor.stft.conv_imag = nn.Conv1d(1, 3, 4, bias=False)
            self.logmel_extractor = Holder()
            melw = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=n_mels, fmin=50, fmax=14000).T
            self.logmel_extractor.melW = nn.Parameter(torch.from_numpy(melw), requires_grad=False)
        self.bn0 = nn.BatchNorm2d(n_mels)
        block = ConvBlock if kernel == 3 else ConvBlock5x5
        in_channels = 1
        for i, out_channels in enumerate(channels, start=1):
            setattr(self, f'conv_block{i}', block(in_channels, out_channels))
            in_channels = out_channels
        self.pools = pools
        self.fc1 = nn.Linear(in_channels, emb_size, bias=True)
        self.fc_audioset = nn.Linear(emb_size, 527, bias=True)

    def forward(self, x):
        """x: log-mel [batch, 1, frames, mel]. Returns (clipwise sigmoid output, embedding)."""
        x = x.transpose(1, 3)
        x = self.bn0(x)
        x = x.transpose(1, 3)
        for i, pool in enumerate(self.pools, start=1):
            x = getattr(self, f'conv_block{i}')(x, pool_size=(pool, pool))
            x = F.dropout(x, p=0.2, training=self.training)
        x = torch.mean(x, dim=3)
        (x1, _) = torch.max(x, dim=2)
        x2 = torch.mean(x, dim=2)
        x = x1 + x2
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu_(self.fc1(x))
        embedding = F.dropout(x, p=0.5, training=self.training)
        clipwise_output = torch.sigmoid(self.fc_audioset(x))
        return clipwise_output, embedding


def randomize(model, seed):
    """Non-trivial values everywhere, BN running statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == 'logmel_extractor.melW':
                continue
            if name.split('.')[-2].startswith('bn') and name.endswith('weight'):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith('bias'):
                p.copy_(0.2 * torch.randn(p.shape, generator=g) + (0.3 if name.startswith('fc1') else 0.0))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in ** 0.5))
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(0.5 * torch.randn(b.shape, generator=g))
            elif name.endswith('running_var'):
                b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=g))
            elif name.endswith('num_batches_tracked'):
                b.fill_(12345)


def checksums(state, prefix):
    """Per tensor: its shape, its plain sum and a position-weighted sum (which catches layout mistakes)."""
    keys = list(state)
    sums = np.zeros((len(keys), 2))
    shapes = np.full((len(keys), 4), -1, dtype=np.int64)
    for i, key in enumerate(keys):
        t = state[key]
        a = t.detach().numpy().astype(np.float64).ravel()
        sums[i] = a.sum(), (a * np.linspace(1.0, 2.0, a.size)).sum()
        shapes[i, :t.dim()] = t.shape
    return {f'{prefix}/keys': np.array(keys), f'{prefix}/sums': sums, f'{prefix}/shapes': shapes}


def make_model_checkpoint(arch, seed, frontend, legacy=False):
    cfg = TINY[arch]
    model = TinyPANNs(frontend=frontend, **cfg)
    randomize(model, seed)
    model.eval()
    features = np.random.default_rng(seed).standard_normal((BATCH, 1, FRAMES, cfg['n_mels'])).astype(np.float32)
    with torch.no_grad():
        clipwise, embedding = model(torch.from_numpy(features))
    # Seeds are chosen so that most of the embedding survives the ReLU: a zero embedding
    # would leave only fc_audioset's bias to compare.
    assert (embedding > 0).float().mean() >= 0.75, 'pick another seed'

    sd = model.state_dict()
    # Store two tensors the way views are stored: fc_audioset.weight transposed twice (same
    # values, column-major strides) and fc1.bias as a slice at an offset into a longer storage.
    sd['fc_audioset.weight'] = sd['fc_audioset.weight'].t().contiguous().t()
    bias = sd['fc1.bias']
    sd['fc1.bias'] = torch.cat([torch.full((3,), -7.0), bias, torch.full((2,), 9.0)])[3:3 + bias.numel()]
    assert not sd['fc_audioset.weight'].is_contiguous() and sd['fc1.bias'].storage_offset() == 3
    torch.save({'model': sd, 'iteration': 0}, os.path.join(OUT, f'tiny_{arch}.pth'))
    if legacy:
        torch.save({'model': sd}, os.path.join(OUT, f'tiny_{arch}_legacy.pth'), _use_new_zipfile_serialization=False)

    ref = {f'{arch}/features': features, f'{arch}/clipwise': clipwise.numpy(), f'{arch}/embedding': embedding.numpy(),
           f'{arch}/channels': np.array(cfg['channels']), f'{arch}/emb_size': np.array(cfg['emb_size']),
           f'{arch}/n_mels': np.array(cfg['n_mels'])}
    ref.update(checksums(sd, arch))
    return ref


def make_tensor_file():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
    tensors = collections.OrderedDict([
        ('float32', base),
        ('transposed', base.t()),                       # strides (1, 6)
        ('sliced', base[1:3, 2:5]),                     # offset 8, strides (6, 1)
        ('stepped', base[::2, ::3]),                    # strides (12, 3)
        ('float64', torch.linspace(-1, 1, 5, dtype=torch.float64) / 3),
        ('float16', torch.tensor([0.5, -2.25, 65504.0], dtype=torch.float16)),
        ('bfloat16', torch.tensor([1.5, -3.0, 0.1], dtype=torch.bfloat16)),
        ('int64', torch.tensor([-(2 ** 40), 0, 12345], dtype=torch.int64)),
        ('int32', torch.tensor([[-7, 8], [9, -10]], dtype=torch.int32)),
        ('uint8', torch.tensor([0, 127, 255], dtype=torch.uint8)),
        ('bool', torch.tensor([True, False, True])),
        ('scalar', torch.tensor(3.25)),
        ('empty', torch.zeros(0, 3)),
        ('parameter', nn.Parameter(torch.tensor([1.0, 2.0]))),
    ])
    torch.save(tensors, os.path.join(OUT, 'tensors.pth'))
    # In the legacy format too: the views of `base` share its storage there as well.
    torch.save(tensors, os.path.join(OUT, 'tensors_legacy.pth'), _use_new_zipfile_serialization=False)
    return {f'tensors/{k}': (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
            for k, v in tensors.items()}


class RunsShell:
    """Unpickling this calls os.system: what an unrestricted torch.load would do."""

    def __reduce__(self):
        return os.system, (f'touch {HOSTILE_MARKER}',)


def make_hostile_files():
    state = collections.OrderedDict([('fc1.bias', RunsShell())])
    obj = {'model': state, 'iteration': 0}
    with zipfile.ZipFile(os.path.join(OUT, 'hostile.pth'), 'w') as zf:
        zf.writestr('hostile/data.pkl', pickle.dumps(obj, protocol=2))
        zf.writestr('hostile/byteorder', 'little')
        zf.writestr('hostile/version', '3\n')
    # The legacy stream: magic number, format version, machine facts, the object, its (no) storage keys.
    sys_info = {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {'short': 2, 'int': 4, 'long': 8}}
    with open(os.path.join(OUT, 'hostile_legacy.pth'), 'wb') as f:
        for part in (0x1950a86a20f9469cfc6c, 1001, sys_info, obj, []):
            pickle.dump(part, f, protocol=2)


def main():
    os.makedirs(OUT, exist_ok=True)
    ref = {}
    ref.update(make_model_checkpoint('cnn14', seed=4, frontend=True, legacy=True))
    ref.update(make_model_checkpoint('cnn6', seed=5, frontend=False))
    ref.update(make_tensor_file())
    make_hostile_files()
    np.savez_compressed(os.path.join(OUT, 'reference.npz'), **ref)
    for name in sorted(os.listdir(OUT)):
        print(f'{name}: {os.path.getsize(os.path.join(OUT, name))} bytes')


if __name__ == '__main__':
    main()
