"""Train a CNN6 on generated clips in checkpoint_dir, as a user's training script would; the
fault suite kills it, fills its disk or poisons its loss at a chosen point (PSC_FAULT).

    python train_child.py DATA CKPT OUT [--epochs 2]

Writes OUT/result.json (the trainer state) when training ends, and OUT/snapshots.json: the
sha256 of every file in CKPT after each saved epoch (observed only, nothing changed).

Fault points (PSC_FAULT['at']): those of faultkit.install_dir_faults, and
    step:N                 before optimizer step N of this process
    save:<dir>/<file>      paddle.save of <file> into <dir> (epoch_2, best_model, ...): half of
                           the file is written, then the fault
Actions: 'kill' (wait for SIGKILL), 'enospc' (OSError ENOSPC), 'nan' (at step:N, the loss
becomes NaN).
"""
import argparse
import io
import json
import os

import numpy as np
import paddle

from faultkit import fault_point, fault_spec, install_dir_faults, target_of, tree
from helpers import calm, prime_batchnorm
from paddle_soundcls import Module, Trainer
from paddle_soundcls.datasets import AudioFolder
from paddle_soundcls.training import losses
from paddle_soundcls.training.schedules import warmup_cosine

SPEC = fault_spec()


def install_faults():
    install_dir_faults(SPEC)
    real_save = paddle.save

    def save(obj, path, *args, **kwargs):
        point = f'save:{target_of(os.path.dirname(path))}/{os.path.basename(path)}'
        if SPEC and SPEC['at'] == point:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(path, 'wb') as f:  # a write cut short
                f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            fault_point(point, SPEC, path)
        return real_save(obj, path, *args, **kwargs)
    paddle.save = save


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('data')
    parser.add_argument('ckpt')
    parser.add_argument('out')
    parser.add_argument('--epochs', type=int, default=2)
    args = parser.parse_args()
    install_faults()

    train_set = AudioFolder(os.path.join(args.data, 'train'), mode='train', duration=0.5)
    dev_set = AudioFolder(os.path.join(args.data, 'dev'), mode='dev', duration=0.5)
    model = calm(Module('panns_cnn6', label_map=train_set.labels, pretrained=False, seed=123))
    prime_batchnorm(model, np.stack([train_set[i][0] for i in range(len(train_set))]))
    steps = args.epochs * -(-len(train_set) // 4)
    schedule = warmup_cosine(1e-4, total_steps=steps, warmup_steps=1)
    optimizer = paddle.optimizer.Adam(learning_rate=schedule, parameters=model.parameters())

    count = [0]
    real_step = optimizer.step

    def step():
        count[0] += 1
        fault_point(f'step:{count[0]}', SPEC if SPEC and SPEC['action'] != 'nan' else None)
        return real_step()
    optimizer.step = step

    if SPEC and SPEC['action'] == 'nan':
        # The trainer's own loss, NaN on the training batch of step N (evaluation runs without gradients).
        real_build = losses.build_loss

        def build_loss(*a, **kw):
            real = real_build(*a, **kw)

            def loss(logits, target):
                value = real(logits, target)
                if paddle.is_grad_enabled() and f'step:{count[0] + 1}' == SPEC['at']:
                    return value * float('nan')
                return value
            return loss
        losses.build_loss = build_loss

    trainer = Trainer(model, optimizer, checkpoint_dir=args.ckpt, use_vdl=False, seed=7, keep_last=1,
                      compare_metrics='loss')
    snapshots = {}
    real_save = trainer.checkpoints.save

    def save(epoch, *rest):
        state = real_save(epoch, *rest)
        snapshots[epoch] = tree(args.ckpt)
        return state
    trainer.checkpoints.save = save

    os.makedirs(args.out, exist_ok=True)
    try:
        state = trainer.train(train_set, epochs=args.epochs, batch_size=4, eval_dataset=dev_set)
    finally:
        with open(os.path.join(args.out, 'snapshots.json'), 'w') as f:
            json.dump(snapshots, f)
    with open(os.path.join(args.out, 'result.json'), 'w') as f:
        json.dump(state, f, default=float)
    np.savez(os.path.join(args.out, 'weights.npz'), **{k: v.numpy() for k, v in model.state_dict().items()})


if __name__ == '__main__':
    main()
