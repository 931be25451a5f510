"""Record EfficientAT's own front end and MobileNetV3 outputs under tests/data/efficientat/.

tests/test_efficientat.py compares our Paddle front end and network with these recordings.
EfficientAT's code (github.com/fschmid56/EfficientAT, MIT licence) is run from a checkout
given on the command line and never copied here. It needs PyTorch, torchvision (its
ConvNormActivation) and torchaudio (its Kaldi mel banks, pure Python), kept out of the
package's own environment:

    git clone https://github.com/fschmid56/EfficientAT /tmp/EfficientAT
    python -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install numpy torch==2.14.1 torchvision==0.29.1
    /tmp/torchenv/bin/pip install --no-deps torchaudio==2.9.1
    /tmp/torchenv/bin/python tests/data/make_efficientat_reference.py /tmp/EfficientAT

torchaudio 2.9.1 is built for torch 2.9.1; with another torch its compiled extension does not
load. Only torchaudio.compliance.kaldi and torchaudio.transforms are used, which are plain
Python, so the script imports torchaudio as if its extension were absent.

Writes:
  tiny_mn.pt      the state dict (torch.save, zip format) of EfficientAT's MobileNetV3 at
                  width_mult 0.1 with a 50-class head, weights seeded by `seed_weights`;
  reference.npz   waves      the input waveforms (`reference_waves`), int16 [3, 16000]: divided
                             by 32768, they are the float32 input;
                  features   AugmentMelSTFT's output in eval mode, transposed to our layout
                             [3, frames, 128];
                  logits     the model's logits on `features` [3, 50];
                  pooled     the model's second output (the last feature map averaged) [3, 96];
                  embedding  its head's first Linear + Hardswish on the same input [3, 128].
"""
import argparse
import contextlib
import io
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'efficientat')
SAMPLE_RATE = 32000
WIDTH = 0.1          # the smallest width: a fixture of a few hundred KB
NUM_CLASSES = 50     # a smaller head than AudioSet's 527 keeps the file small; the code path is the same


def reference_waves():
    """Three half-second 16-bit clips at 32 kHz (int16 [3, 16000]): a tone, a chirp and clicks,
    each over a noise floor (real recordings have one; without it, quiet mel bins are at the mercy
    of float32 rounding). As 16-bit samples they are stored exactly and compactly."""
    n = SAMPLE_RATE // 2
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(20240)
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(n)
    chirp = 0.1 * np.sin(2 * np.pi * (100.0 * t + 0.5 * 24000.0 * t ** 2)) + 0.03 * rng.standard_normal(n)
    clicks = 0.02 * rng.standard_normal(n)
    clicks[::SAMPLE_RATE // 13] += 0.9
    return np.round(np.stack([tone, chirp, clicks]) * 32768).astype(np.int16)


def seed_weights(model, features, torch, seed=0):
    """Weights under which the outputs depend on the input, as a trained network's do.

    Convolutions keep EfficientAT's own (seeded) He initialisation; BatchNorm scales and shifts
    and the Linear layers get seeded random values. The BatchNorm running statistics are then
    measured on `features` (as training would), so every layer sees normalised activations:
    with made-up statistics the clips' differences fade block by block, and the outputs being
    compared would be the same for every clip.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(0.8 + 0.4 * torch.rand(module.num_features, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=gen))
            elif isinstance(module, torch.nn.Linear):
                fan_in = module.in_features
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for module in norms:
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration pass
        model.train()
        model(features)
        model.eval()
        for module in norms:
            module.momentum = 0.01


def import_torchaudio():
    """torchaudio without its compiled extension, which only loads beside the torch it was built
    for: torchaudio asks importlib whether the extension exists, and is told it does not."""
    import importlib.util
    find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == 'torchaudio.lib._torchaudio' else find_spec(name, *a)
    try:
        import torchaudio
    finally:
        importlib.util.find_spec = find_spec
    return torchaudio


def import_efficientat(checkout):
    """EfficientAT's model builder and front end, imported from `checkout`."""
    checkout = os.path.abspath(checkout)
    sys.path.insert(0, checkout)
    here = os.getcwd()
    os.chdir(checkout)  # its helpers read metadata/ relative to the working directory when imported
    try:
        from models.mn.model import get_model
        from models.preprocess import AugmentMelSTFT
    finally:
        os.chdir(here)
    return get_model, AugmentMelSTFT


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkout', help='a checkout of github.com/fschmid56/EfficientAT')
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.checkout, 'models', 'mn', 'model.py')):
        sys.exit(f'{args.checkout}: not a checkout of EfficientAT (no models/mn/model.py)')

    import torch
    torchaudio = import_torchaudio()
    get_model, AugmentMelSTFT = import_efficientat(args.checkout)

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # get_model prints the whole network
        model = get_model(num_classes=NUM_CLASSES, width_mult=WIDTH, head_type='mlp', se_dims='c')
    # As EfficientAT's inference.py builds it; fmax=None means 15 kHz there.
    mel = AugmentMelSTFT(n_mels=128, sr=SAMPLE_RATE, win_length=800, hopsize=320)
    mel.eval()

    waves = reference_waves().astype(np.float32) / 32768
    with torch.no_grad():
        features = mel(torch.from_numpy(waves))                    # [batch, 128, frames]
    seed_weights(model, features.unsqueeze(1), torch)
    with torch.no_grad():
        logits, pooled = model(features.unsqueeze(1))
        fmap = model.features(features.unsqueeze(1))
        embedding = model.classifier[3](model.classifier[2](torch.flatten(model.classifier[0](fmap), 1)))

    os.makedirs(OUT, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(OUT, 'tiny_mn.pt'))
    np.savez_compressed(os.path.join(OUT, 'reference.npz'), waves=reference_waves(),
                        features=features.transpose(1, 2).numpy().astype(np.float32),
                        logits=logits.numpy().astype(np.float32), pooled=pooled.numpy().astype(np.float32),
                        embedding=embedding.numpy().astype(np.float32))
    print(f'torch {torch.__version__}, torchaudio {torchaudio.__version__}: wrote {OUT}/tiny_mn.pt and '
          f'reference.npz; features {tuple(features.shape)}, |logits| up to {logits.abs().max():.3f}')


if __name__ == '__main__':
    main()
