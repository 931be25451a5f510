"""The backbone contract, as the base class every family's network derives from.

A Backbone takes log-mel features [batch, frames, n_mels] (the front end of its spec) and has
    emb_size                     int
    forward_features(features)   -> clip embedding [batch, emb_size]
    forward_frames(features)     -> time-resolved embeddings [batch, frames', emb_size] (the feature
                                 map before pooling over time, for event detection); where the
                                 frames sit in time is the spec's frame_geometry
    forward_head(embedding)      -> AudioSet logits [batch, 527] (also on [..., emb_size]); a backbone
                                 built without its AudioSet head (or of a family without one)
                                 raises errors.NoHeadError
    forward(features)            -> forward_head(forward_features(features)): logits
A family implements forward_features, forward_frames and, where it has an AudioSet head,
audioset_logits; it sets emb_size and has_audioset_head.
"""
import paddle.nn as nn

from ..errors import NoHeadError


class Backbone(nn.Layer):
    """Base of every registered network (see the module docstring). It defines no __init__, so a
    family may also derive from another Layer (ResNetOnMel from paddle.vision's ResNet)."""

    emb_size = None
    has_audioset_head = False

    def forward_features(self, features):
        raise NotImplementedError(f'{type(self).__name__} must define forward_features')

    def forward_frames(self, features):
        raise NotImplementedError(f'{type(self).__name__} must define forward_frames')

    def audioset_logits(self, embedding):
        """The AudioSet head on an embedding; only called when has_audioset_head."""
        raise NotImplementedError(f'{type(self).__name__} sets has_audioset_head but defines no audioset_logits')

    def forward_head(self, embedding):
        """Embedding [..., emb_size] -> AudioSet logits [..., 527]."""
        if not self.has_audioset_head:
            raise NoHeadError(f"this {type(self).__name__} has no AudioSet head (built with audioset_head=False, or "
                              f"only its backbone is pretrained): use Module(..., task='sound-cls', num_class=...) "
                              f"for a new classification head")
        return self.audioset_logits(embedding)

    def forward(self, features):
        """Log-mel [batch, frames, n_mels] -> AudioSet logits [batch, 527]."""
        return self.forward_head(self.forward_features(features))
