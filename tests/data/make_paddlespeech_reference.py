"""Record PaddleSpeech's own CNN14 / CNN10 / CNN6 outputs as tests/data/paddlespeech_reference.npz.

PaddleSpeech is too heavy to install for the tests, so its model file is taken from the wheel:

    pip download paddlespeech==1.5.0 --no-deps -d /tmp/ps
    python tests/data/make_paddlespeech_reference.py --wheel /tmp/ps/paddlespeech-1.5.0-py3-none-any.whl

`paddlespeech/cls/models/panns/panns.py` is run on its own, with its two imports that are only
needed for downloading (load_state_dict_from_url, MODEL_HOME) stubbed. Each model gets the weights
`seeded_weights` makes and runs in eval mode on `seeded_features`; tests/test_converter.py builds
our backbones with the same weights and features and compares.

The .npz holds, per architecture: `<arch>/scores` (sigmoid AudioSet scores, extract_embedding=False)
and `<arch>/embedding` (extract_embedding=True), float32 [2, 527] and [2, emb_size].
"""
import argparse
import os
import sys
import types
import zipfile

import numpy as np

ARCHS = ('cnn14', 'cnn10', 'cnn6')
PANNS_PY = 'paddlespeech/cls/models/panns/panns.py'
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'paddlespeech_reference.npz')


def seeded_weights(shapes, seed):
    """Deterministic weights {name: float32 array} for {name: shape}, drawn in sorted name order.

    Scaled so that activations keep a useful size through every block (He-style for
    convolutions and Linear layers, BatchNorm near identity with positive variances);
    weights of a plain 0.05 scale would shrink CNN14's output to nothing worth comparing.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        noise = rng.standard_normal(shape, dtype=np.float32)
        attr = name.rsplit('.', 1)[-1]
        layer = name.rsplit('.', 2)[-2]
        if layer.startswith('bn'):
            value = {'weight': 1 + 0.1 * noise, 'bias': 0.1 * noise, '_mean': 0.1 * noise,
                     '_variance': 1 + 0.1 * np.abs(noise)}[attr]
        elif attr == 'bias':
            value = 0.1 * noise
        else:
            # Conv weights [out, in, kh, kw] and Paddle Linear weights [in, out].
            fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
            value = noise * np.float32(np.sqrt(2.0 / fan_in))
        out[name] = value
    return out


def seeded_features(seed):
    """Log-mel-like input [2, 1, 101, 64] (about one second at the PANNs frame rate)."""
    return np.random.default_rng(seed).standard_normal((2, 1, 101, 64)).astype(np.float32)


def load_paddlespeech_panns(wheel):
    """Import PaddleSpeech's panns.py from the wheel, without PaddleSpeech installed."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(PANNS_PY).decode('utf-8')
    stubs = {
        'paddlespeech': {}, 'paddlespeech.audio': {}, 'paddlespeech.audio.utils': {},
        'paddlespeech.audio.utils.download': {'load_state_dict_from_url': None},
        'paddlespeech.utils': {}, 'paddlespeech.utils.env': {'MODEL_HOME': '/nonexistent'},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    module = types.ModuleType('paddlespeech_panns')
    exec(compile(source, PANNS_PY, 'exec'), module.__dict__)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--wheel', required=True, help='the paddlespeech wheel')
    parser.add_argument('--output', default=OUT)
    args = parser.parse_args()

    import paddle
    paddle.set_device('cpu')
    panns = load_paddlespeech_panns(args.wheel)
    ref = {}
    for index, arch in enumerate(ARCHS):
        model = getattr(panns, arch)(pretrained=False, extract_embedding=True)
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        model.set_state_dict(seeded_weights(shapes, index))
        model.eval()
        x = paddle.to_tensor(seeded_features(100 + index))
        with paddle.no_grad():
            ref[f'{arch}/embedding'] = model(x).numpy()
            model.extract_embedding = False
            ref[f'{arch}/scores'] = model(x).numpy()
        emb, scores = ref[f'{arch}/embedding'], ref[f'{arch}/scores']
        print(f'{arch}: embedding mean {emb.mean():.3f}, nonzero {np.mean(emb > 0):.2f}; '
              f'scores {scores.min():.3f}..{scores.max():.3f}')
    np.savez_compressed(args.output, **{k: v.astype(np.float32) for k, v in ref.items()})
    print(f'wrote {args.output} ({os.path.getsize(args.output)} bytes)')


if __name__ == '__main__':
    main()
