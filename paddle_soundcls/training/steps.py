"""What one training step runs, in every mode, through one Layer that the Trainer wraps once in
paddle.DataParallel: ordinary and distillation steps (clip logits), the contrastive step
(embeddings and logits) and the strong-label step (frame logits). A step that called the
model itself would skip the wrapper, and its gradients would not be averaged over the
processes of a data-parallel run.
"""
import numpy as np
import paddle
import paddle.nn as nn

from ..frames import for_frontend

OUTPUTS = ('logits', 'frames', 'embeddings')


class TrainingNet(nn.Layer):
    """A Module as the training loop runs it: forward(features, output) ->
        'logits':     clip logits [batch, classes] (Module.forward: the model's pooling)
        'frames':     frame logits [batch, frames', classes] (Module.frame_logits)
        'embeddings': (clip embeddings [batch, emb_size], their logits [batch, classes])
    Its parameters are the Module's."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, features, output='logits'):
        if output == 'logits':
            return self.module(features)
        if output == 'frames':
            return self.module.frame_logits(features)
        if output == 'embeddings':
            embeddings = self.module.forward_features(features)
            return embeddings, self.module.forward_head(embeddings)
        raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')


def network_targets(module, frame_targets, count, place=None):
    """Targets at the front end's frame rate [batch, frames, classes] (datasets.strong.frame_targets:
    frame i covers [i * hop, (i + 1) * hop)), a tensor or an array -> a tensor on `place` of the
    targets of the network's `count` frames [batch, count, classes]: each the maximum over the
    front-end frames of its span, placed by the family's frame geometry (frames.FrameGeometry)."""
    geometry = for_frontend(module.spec.frame_geometry, module.frontend_cfg)
    fine = frame_targets.numpy() if isinstance(frame_targets, paddle.Tensor) else np.asarray(frame_targets)
    return paddle.to_tensor(geometry.pool_targets(fine.astype(np.float32), count), place=place)
