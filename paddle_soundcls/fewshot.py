"""A classifier from a handful of labelled clips, without training: the nearest class centroid of
the backbone's embeddings, as a Module with a classification head, saved and exported like any other.

    from paddle_soundcls import Module
    from paddle_soundcls.fewshot import centroid_classifier

    classifier = centroid_classifier(Module('efficientat_mn10', task='tagging'), 'my_sounds/')
    classifier.save('ckpt_fewshot')       # then: paddle-soundcls export --checkpoint ckpt_fewshot ...

Each clip is embedded as predict cuts it (Module.embed, whole clip); the centre of all clips'
embeddings is taken off (the backbone's embeddings follow a ReLU: uncentred, every pair of clips
has about the same, high cosine similarity), the rest scaled to unit length, and each class's
centroid is the mean of its clips' unit vectors, scaled to unit length again. The head is a
Linear layer with logits scale * |e - centre| / (mean of that over the clips) * cos(e - centre,
centroid): the best label is the class whose centroid is nearest in cosine similarity (|e - centre|
is the same for every class), and the scores are a softmax over them. The backbone is the base
Module's, unchanged.
"""
import numpy as np
import paddle

from .errors import ArgumentError

DEFAULT_SCALE = 10.0   # logits of about +-10 at the mean distance from the centre: confident, not saturated


def class_centroids(embeddings, targets, num_classes):
    """(centre [d], unit-length class centroids [classes, d], the mean distance of the clips from the
    centre): each clip's embedding less the centre of all clips, scaled to unit length, averaged per
    class and scaled to unit length again."""
    embeddings = np.asarray(embeddings, np.float64)
    if not np.all(np.isfinite(embeddings)):
        raise ArgumentError('an embedding is not finite (a broken clip?); leave that clip out')
    centre = embeddings.mean(axis=0)
    offsets = embeddings - centre
    norms = np.linalg.norm(offsets, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ArgumentError('a clip\'s embedding is the centre of all clips (identical clips in every class?); give '
                            'clips that differ')
    unit = offsets / norms
    targets = np.asarray(targets)
    centroids = []
    for c in range(num_classes):
        members = unit[targets == c]
        if len(members) == 0:
            raise ArgumentError(f'class {c} has no clips; give at least one clip per class')
        mean = members.mean(axis=0)
        centroids.append(mean / max(np.linalg.norm(mean), 1e-12))
    return centre, np.stack(centroids), float(norms.mean())


def centroid_classifier(base, data, labels=None, scale=DEFAULT_SCALE, batch_size=8, engine='auto'):
    """A sound-cls Module: `base`'s backbone and a nearest-centroid head fitted on `data`.

    base: a Module (a pretrained tagger, or a fine-tuned classifier: only its backbone is used).
    data: a folder with one sub-folder of clips per class (datasets.AudioFolder), or a list of
        audio file paths with `labels` (one class name per path).
    scale: the logit of a clip at the clips' mean distance from their centre, in the direction of a
        centroid (softmax temperature).
    Returns a new Module (clip length and front end of `base`) in eval mode.
    """
    from .datasets.folder import AudioFolder
    from .features.logmel import LogMel
    from .module import Module
    from . import validate
    validate.positive_number('scale', scale)
    if isinstance(data, (list, tuple)):
        if labels is None or len(labels) != len(data):
            raise ArgumentError(f'labels: give one class name per clip ({len(data)} clips, '
                                f'{"no" if labels is None else len(labels)} labels)')
        classes = sorted(set(labels))
        paths, targets = [str(p) for p in data], [classes.index(label) for label in labels]
    else:
        if labels is not None:
            raise ArgumentError('labels: the class folders of data name the classes; leave labels out')
        folder = AudioFolder(data)
        classes, paths = list(folder.labels), [path for path, _ in folder.items]
        targets = [target for _, target in folder.items]
    if len(classes) < 2:
        raise ArgumentError(f'data holds clips of {len(classes)} class; a classifier needs at least 2')
    results = base.embed(paths, batch_size=batch_size, engine=engine)
    embeddings = np.concatenate([r['embeddings'] for r in results])
    centre, centroids, mean_distance = class_centroids(embeddings, targets, len(classes))
    module = Module(base.name, task='sound-cls', label_map=classes, pretrained=False,
                    clip_seconds=base.clip_seconds)
    module.frontend_cfg, module.frontend = base.frontend_cfg, LogMel(base.frontend_cfg)
    # The backbone without base's AudioSet head (a tagger's), which the new Module has no place for.
    wanted, given = module.backbone.state_dict(), base.backbone.state_dict()
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise ArgumentError(f'base ({base.name}) lacks backbone weights {missing[:3]}: give a Module of that model')
    module.backbone.set_state_dict({name: given[name] for name in wanted})
    # logits = scale / mean_distance * centroids . (e - centre): a Linear layer ([in, out] in Paddle).
    weight = scale / mean_distance * centroids.T
    module.fc.weight.set_value(paddle.to_tensor(weight.astype(np.float32)))
    module.fc.bias.set_value(paddle.to_tensor((-centre @ weight).astype(np.float32)))
    return module.eval()
