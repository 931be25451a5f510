"""The PyTorch eager baseline of bench_train.py: full fine-tuning steps of CNN14 in PyTorch.

Run with a Python that has PyTorch (the package's own environment does not need it):

    /path/to/torch/python benchmarks/torch_cnn14_train.py --batch-size 8 --seconds 5 --steps 10

or through `python benchmarks/bench_train.py --model panns_cnn14 --torch-python /path/to/torch/python`,
which runs both in one go. The network is CNN14 as this package builds it (bn0 over mel bins,
six blocks of two 3x3 conv-BN-ReLU with 2x2 average pooling and dropout, max + mean over time,
fc1 2048 with ReLU, a new classification head), fed by a front end of the same cost (STFT
n_fft 1024, hop 320, power spectrum, a 513 x 64 mel matrix, log); the data are random
waveforms of 32 kHz, already in memory. Prints one JSON object: clips/s from the end of the
first step to the end of the last, as bench_train.py measures the Trainer.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x, pool):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class CNN14(nn.Module):
    def __init__(self, classes, n_mels=64, n_fft=1024, hop=320):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer('window', torch.hann_window(n_fft))
        self.register_buffer('mel', torch.rand(n_fft // 2 + 1, n_mels) / n_mels)
        self.bn0 = nn.BatchNorm2d(n_mels)
        channels = [1, 64, 128, 256, 512, 1024, 2048]
        self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(channels, channels[1:]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc = nn.Linear(2048, classes)

    def forward(self, waves):
        spec = torch.stft(waves, self.n_fft, self.hop, window=self.window, center=True, pad_mode='reflect',
                          return_complex=True)
        x = torch.log10(torch.clamp((spec.abs() ** 2).transpose(1, 2) @ self.mel, min=1e-10)) * 10
        x = self.bn0(x.unsqueeze(1).transpose(1, 3)).transpose(1, 3)     # [batch, 1, frames, mels]
        for i, block in enumerate(self.blocks):
            x = F.dropout(block(x, 2 if i < len(self.blocks) - 1 else 1), 0.2, self.training)
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        x = F.relu(self.fc1(F.dropout(x, 0.5, self.training)))
        return self.fc(F.dropout(x, 0.1, self.training))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--seconds', type=float, default=5.0)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--classes', type=int, default=5)
    p.add_argument('--threads', type=int, default=None, help="torch.set_num_threads (default: PyTorch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CNN14(args.classes).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    waves = 0.1 * torch.randn(args.batch_size, int(args.seconds * 32000))
    target = torch.randint(0, args.classes, (args.batch_size,))
    ends = []
    for _ in range(args.steps):
        loss = F.cross_entropy(model(waves), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ends.append(time.perf_counter())
    print(json.dumps({'clips_per_s': round((len(ends) - 1) * args.batch_size / (ends[-1] - ends[0]), 3),
                      'steps': args.steps, 'threads': torch.get_num_threads(), 'torch': torch.__version__}))


if __name__ == '__main__':
    main()
