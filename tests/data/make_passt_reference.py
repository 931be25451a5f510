"""Record PaSST's own front end and transformer outputs under tests/data/passt/.

tests/test_passt.py compares our Paddle front end and network with these recordings. PaSST's
code (github.com/kkoutini/PaSST, Apache-2.0 licence: models/passt.py, models/preprocess.py,
models/helpers/vit_helpers.py) is run from a checkout given on the command line and never
copied here. It needs PyTorch and torchaudio's pure-Python Kaldi mel banks, kept out of the
package's own environment (see tests/data/make_efficientat_reference.py for that environment):

    git clone https://github.com/kkoutini/PaSST /tmp/PaSST
    /tmp/torchenv/bin/python tests/data/make_passt_reference.py /tmp/PaSST

Two adaptations let that code run with torch 2.x, and change none of its arithmetic:
  - models/passt.py and models/preprocess.py register sacred configuration through
    `ba3l.ingredients.ingredient.Ingredient` at import; a stand-in whose decorators return the
    decorated function is put in sys.modules (ba3l needs sacred and pytorch-lightning);
  - AugmentMelSTFT calls torch.stft(..., return_complex=False), which torch 2.x refuses: while
    the front end runs, torch.stft returns torch.view_as_real of the complex STFT, the very
    [..., 2] real/imaginary layout the old call returned.

The network is upstream's PaSST class at a tiny size (embed_dim 32, depth 2, 4 heads, with the
distillation token as the released models have) and the released models' geometry: 16x16
patches, stride 10 x 10, 128 mel bins. Its time positional embedding has 14 columns (input
size 128 x 148, 1.5 s) instead of 99 (10 s), so a 1.5-s clip fills it and a 0.5-s clip uses
its first 4 columns (upstream cuts it in eval mode).

Writes:
  tiny_passt.pt   the state dict (torch.save, zip format), weights seeded by `seed_weights`;
  reference.npz   waves_short    int16 [3, 16000]: make_efficientat_reference's
                                 `reference_waves` (0.5 s; divided by 32768, the float32 input);
                                 the 1.5-s input is `long_waves(waves_short)`: those three clips
                                 one after another in three orders (kept out of the file, which
                                 holds no noise twice);
                  features, features_short
                                 AugmentMelSTFT's output in eval mode with the settings of
                                 PaSST's AudioSet training (fmax_aug_range 2000: f_max 15 kHz),
                                 transposed to our layout [3, frames, 128];
                  logits, embedding, logits_short, embedding_short
                                 the model's two outputs on those features (upstream's forward
                                 returns head(features) and features = (x_cls + x_dist) / 2);
                  tokens         the output of the model's final norm on `features` (every token:
                                 cls, dist, then the 12 x 14 patches frequency-major) [3, 170, 32].
"""
import argparse
import contextlib
import io
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_efficientat_reference import import_torchaudio, reference_waves  # noqa: E402

OUT = os.path.join(HERE, 'passt')
EMBED_DIM, DEPTH, HEADS = 32, 2, 4   # tiny: the fixture stays at about 150 KB
TIME_FRAMES = 148                    # 14 time columns of positional embedding (1.5 s)
NUM_CLASSES = 10


def stub_ba3l():
    """A stand-in for ba3l.ingredients.ingredient: PaSST's modules only decorate with it."""
    class Ingredient:
        def __init__(self, *args, **kwargs):
            pass

        def add_config(self, *args, **kwargs):
            pass

        def command(self, function=None, **kwargs):
            return function if function is not None else (lambda f: f)

    for name in ('ba3l', 'ba3l.ingredients', 'ba3l.ingredients.ingredient'):
        sys.modules[name] = types.ModuleType(name)
    sys.modules['ba3l.ingredients.ingredient'].Ingredient = Ingredient


def import_passt(checkout):
    checkout = os.path.abspath(checkout)
    sys.path.insert(0, checkout)
    stub_ba3l()
    with contextlib.redirect_stdout(io.StringIO()):
        from models.passt import PaSST
        from models.preprocess import AugmentMelSTFT
    return PaSST, AugmentMelSTFT


@contextlib.contextmanager
def stft_as_before(torch):
    """torch.stft(return_complex=False) as torch 1.x answered it: view_as_real of the complex STFT."""
    stft = torch.stft

    def old_stft(*args, return_complex=None, **kwargs):
        out = stft(*args, return_complex=True, **kwargs)
        return torch.view_as_real(out) if return_complex is False else out
    torch.stft = old_stft
    try:
        yield
    finally:
        torch.stft = stft


def seed_weights(model, torch, seed=0):
    """Seeded weights of a scale under which every layer matters: Linear weights ~ N(0, 1/fan_in)
    (upstream's std 0.02 leaves the blocks close to the identity), LayerNorm scales near 1 with
    small shifts, the tokens and positional embeddings ~ N(0, 0.5) so cutting the time embedding
    changes the outputs. The patch convolution keeps PyTorch's own (seeded) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features ** 0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for p in (model.cls_token, model.dist_token, model.new_pos_embed, model.freq_new_pos_embed,
                  model.time_new_pos_embed):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        model.head[1].weight.mul_(4.0)   # logits that differ clearly between the clips


def long_waves(short):
    """int16 [3, 3 n]: the three clips of `short` one after another, starting with each in turn."""
    return np.concatenate([short, short[[1, 2, 0]], short[[2, 0, 1]]], axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkout', help='a checkout of github.com/kkoutini/PaSST')
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.checkout, 'models', 'passt.py')):
        sys.exit(f'{args.checkout}: not a checkout of PaSST (no models/passt.py)')

    import torch
    torchaudio = import_torchaudio()
    PaSST, AugmentMelSTFT = import_passt(args.checkout)

    torch.manual_seed(0)
    model = PaSST(img_size=(128, TIME_FRAMES), patch_size=16, stride=10, in_chans=1, num_classes=NUM_CLASSES,
                  embed_dim=EMBED_DIM, depth=DEPTH, num_heads=HEADS, distilled=True)
    seed_weights(model, torch)
    model.eval()
    # As PaSST's AudioSet experiment (ex_audioset.py) and hear21passt build it.
    with contextlib.redirect_stdout(io.StringIO()):
        mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                             htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
    mel.eval()

    short = reference_waves()
    waves = long_waves(short)
    out = {'waves_short': short}
    tokens = {}
    model.norm.register_forward_hook(lambda m, i, o: tokens.__setitem__('x', o))
    for suffix, pcm in (('', waves), ('_short', short)):
        with torch.no_grad(), stft_as_before(torch), contextlib.redirect_stdout(io.StringIO()):
            features = mel(torch.from_numpy(pcm.astype(np.float32) / 32768))     # [batch, 128, frames]
            logits, embedding = model(features.unsqueeze(1))
        out['features' + suffix] = features.transpose(1, 2).numpy().astype(np.float32)
        out['logits' + suffix] = logits.numpy().astype(np.float32)
        out['embedding' + suffix] = embedding.numpy().astype(np.float32)
        if suffix == '':
            out['tokens'] = tokens['x'].numpy().astype(np.float32)

    os.makedirs(OUT, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(OUT, 'tiny_passt.pt'))
    np.savez_compressed(os.path.join(OUT, 'reference.npz'), **out)
    print(f'torch {torch.__version__}, torchaudio {torchaudio.__version__}: wrote {OUT}/tiny_passt.pt and '
          f'reference.npz; features {out["features"].shape}, tokens {out["tokens"].shape}, '
          f'logits std over clips {out["logits"].std(axis=0).mean():.3f}')


if __name__ == '__main__':
    main()
