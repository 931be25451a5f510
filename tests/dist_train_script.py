"""Run by test_distributed.py, alone or under `python -m paddle.distributed.launch`."""
import argparse
import json
import os

import numpy as np
import paddle
import paddle.distributed as dist

from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioFolder, StrongLabelDataset

p = argparse.ArgumentParser()
p.add_argument('--data')
p.add_argument('--init')
p.add_argument('--ckpt')
p.add_argument('--batch-size', type=int)
p.add_argument('--out')
p.add_argument('--full', action='store_true', help='train the whole network (backbone not frozen), one epoch')
p.add_argument('--strong', action='store_true', help='train the whole network on event times (data/events.csv), '
                                                     'one epoch of SGD')
args = p.parse_args()

if args.strong:
    model = Module('cpmobile', load_checkpoint=args.init)
    # BatchNorm normalises with its running statistics: each clip's gradient is then its own, so
    # two processes of 2 clips can agree with one process of 4 (batch statistics would differ).
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            layer._use_global_stats = True
    hop = model.frontend_cfg.hop_length / model.frontend_cfg.sample_rate
    dataset = StrongLabelDataset(os.path.join(args.data, 'events.csv'), labels=model.labels, mode='train',
                                 duration=1.0, frame_hop_seconds=hop)
    optimizer = paddle.optimizer.SGD(learning_rate=0.5, parameters=model.parameters())
    trainer = Trainer(model, optimizer, checkpoint_dir=args.ckpt, use_vdl=False)
    trainer.train(dataset, epochs=1, batch_size=args.batch_size, log_interval=1)
    np.savez(f'{args.out}.rank{dist.get_rank()}.npz', world_size=dist.get_world_size(),
             **{name: p.numpy() for name, p in model.named_parameters()})
    raise SystemExit(0)

model = Module('panns_cnn6', load_checkpoint=args.init)
model.dropout.p = 0.0  # no per-process randomness, so 1 and 2 processes can agree exactly
optimizer = paddle.optimizer.SGD(learning_rate=0.05, parameters=model.parameters())
dataset = AudioFolder(args.data, mode='train', duration=1.0)
trainer = Trainer(model, optimizer, checkpoint_dir=args.ckpt, freeze_backbone=not args.full)
state = trainer.train(dataset, epochs=1 if args.full else 2, batch_size=args.batch_size, log_interval=1)
out = f'{args.out}.rank{dist.get_rank()}.npz'
# Learnt weights (BatchNorm's running statistics are per process by design).
kept = ('fc.',) if not args.full else ('fc.', 'backbone.conv_block1.conv1.weight', 'backbone.fc1.weight')
np.savez(out, world_size=dist.get_world_size(), **{k: v.numpy() for k, v in model.state_dict().items()
                                                   if k.startswith(kept)})
