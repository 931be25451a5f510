"""Record CPJKU's own CP-ResNet outputs under tests/data/cpresnet/.

tests/test_cpresnet.py compares our Paddle CP-ResNet with these recordings. CPJKU's code is run
from checkouts given on the command line and never copied here:

    git clone https://github.com/CPJKU/cpjku_dcase22 /tmp/cpjku_dcase22        # models/cp/cp_resnet.py
    git clone https://github.com/kkoutini/cpjku_dcase20 /tmp/cpjku_dcase20     # models/cp_resnet_freq_damp.py
    git clone https://github.com/fschmid56/cpjku_dcase23 /tmp/cpjku_dcase23    # models/cp_resnet.py, models/mel.py
    /tmp/torchenv/bin/python tests/data/make_cpresnet_reference.py \
        /tmp/cpjku_dcase22 /tmp/cpjku_dcase20 /tmp/cpjku_dcase23

The environment is make_efficientat_reference.py's (PyTorch, and torchaudio for the Kaldi mel
banks, imported as pure Python). The upstream modules import packages the networks do not use
(ba3l, sacred's ingredient; torch._six, shared_globals, utils_funcs and librosa in the 2020 code):
they are given empty stand-ins.

Networks, all built by the 2022 code's `get_model` (the 2023 teachers' `get_model` builds the same
network from its defaults; this script checks that name for name and shape for shape):
  cpresnet         get_model(rho=8, n_blocks=(2, 1, 1), s2_group=2, cut_channels_s3=36), the DCASE 2022
                   submission's arguments and the DCASE 2023 teachers' defaults, at half width for the
                   fixture (base_channels=16, cut_channels_s3=18: channels 16, 32, 46); 10 classes.
  cpresnet_damped  the same network with every convolution replaced, while get_model builds it, by the
                   2020 code's Conv2dDamped (frequency damping: the kernel scaled down linearly towards its
                   ends along the frequency axis, to 0.01 at the ends).
Their weights are seeded (`seed_weights`), rounded to float16 values, the BatchNorm statistics then
measured in evaluation mode (`calibrate_in_eval`) and rounded too: the state dicts are stored in half
precision while the recorded float32 outputs are exactly those of the stored weights.

Input: two 0.75-s 16-bit clips at 32 kHz and the 2023 teachers' front end on them (AugmentMelSTFT in
evaluation mode with run_teacher_validation.py's settings: 256 mel bins, n_fft 4096, window 3072,
hop 750, fmax 15.5 kHz).

Writes:
  cpresnet.npz, cpresnet_damped.npz   the state dicts in PyTorch's names (float16; num_batches_tracked int64)
  reference.npz   waves                  int16 [2, 24000] (divide by 32768)
                  features               the front end's output in our layout [2, frames, 256]
                  logits_<model>         the network's logits on features [2, 10]
                  embedding_<model>      the last stage's feature map averaged over frequency and time [2, 46]
                  frames_<model>         the same map averaged over frequency [2, frames', 46]
  reference.json  the fixture's settings, versions, the parameter counts of the full-width networks
                  (PyTorch's parameters(), with and without the 10-class feed_forward head), torchinfo's
                  parameters and multiply-adds of the full-width `cpresnet` for 1 s (the DCASE count), and for
                  every rho from 0 to 12 the kernel shapes of the full-width network's convolutions.
"""
import argparse
import collections.abc
import contextlib
import importlib.util
import io
import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_efficientat_reference as efficientat_reference  # noqa: E402  (torchaudio without its extension)

OUT = os.path.join(HERE, 'cpresnet')
SAMPLE_RATE = 32000
NUM_CLASSES = 10
SUBMISSION = dict(rho=8, n_blocks=(2, 1, 1), s2_group=2, cut_channels_s3=36, base_channels=32, n_classes=NUM_CLASSES)
FIXTURE = dict(SUBMISSION, base_channels=16, cut_channels_s3=18)
TEACHER_MEL = dict(n_mels=256, sr=SAMPLE_RATE, win_length=3072, hopsize=750, n_fft=4096, fmax=None,
                   fmax_aug_range=1000, fmin=0, fmin_aug_range=1)
RHOS = range(0, 13)


def reference_waves():
    """Two 0.75-s clips (int16 [2, 24000]): a tone with a chirp and clicks over noise, and a noise
    burst in the middle over a quieter floor."""
    n = SAMPLE_RATE * 3 // 4
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(2022)
    first = (0.3 * np.sin(2 * np.pi * 660.0 * t) + 0.1 * np.sin(2 * np.pi * (200.0 * t + 0.5 * 9000.0 * t ** 2))
             + 0.03 * rng.standard_normal(n))
    first[::SAMPLE_RATE // 9] += 0.8
    second = 0.01 * rng.standard_normal(n)
    second[n // 3:2 * n // 3] += 0.3 * rng.standard_normal(n // 3)
    return np.round(np.clip(np.stack([first, second]), -1, 1) * 32767).astype(np.int16)


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_modules():
    """Empty stand-ins for what the upstream files import but the networks never use."""
    class Ingredient:
        def __init__(self, *args, **kwargs):
            pass

        def add_config(self, *args, **kwargs):
            pass

        def command(self, function):
            return function

    ba3l = types.ModuleType('ba3l')
    ingredients = types.ModuleType('ba3l.ingredients')
    ingredient = types.ModuleType('ba3l.ingredients.ingredient')
    ingredient.Ingredient = Ingredient
    six = types.ModuleType('torch._six')
    six.container_abcs = collections.abc
    librosa = types.ModuleType('librosa')
    filters = types.ModuleType('librosa.filters')
    filters.mel = None
    stubs = {'ba3l': ba3l, 'ba3l.ingredients': ingredients, 'ba3l.ingredients.ingredient': ingredient,
             'torch._six': six, 'shared_globals': types.ModuleType('shared_globals'),
             'utils_funcs': types.ModuleType('utils_funcs'), 'librosa': librosa, 'librosa.filters': filters}
    stubs['utils_funcs'].update_dict = None
    for name, module in stubs.items():
        sys.modules.setdefault(name, module)


def quiet(function, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):   # the upstream code prints the network and shapes
        return function(*args, **kwargs)


def build_damped(cp22, damp20, torch, **kwargs):
    """get_model's network with Conv2dDamped in place of every nn.Conv2d while it is built."""
    original = torch.nn.Conv2d
    torch.nn.Conv2d = damp20.Conv2dDamped
    try:
        return quiet(cp22.get_model, **kwargs)
    finally:
        torch.nn.Conv2d = original


def seed_weights(model, torch, seed):
    """He-normal convolutions (PyTorch's fan-in of a grouped conv: in_channels / groups x kernel area;
    CP-ResNet's own Fixup initialisation zeroes every block's second conv, which would hide it from
    the comparison), random BatchNorm scales and shifts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.conv._ConvNd):
                fan_in = int(np.prod(module.weight.shape[1:]))
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(0.8 + 0.4 * torch.rand(module.num_features, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=gen))


def round_to_half(model, torch, buffers=False):
    with torch.no_grad():
        for tensor in (model.buffers() if buffers else model.parameters()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def calibrate_in_eval(model, features, torch):
    """Every BatchNorm's running statistics set to those of its input in evaluation mode, in one pass
    (a pre-hook writes them just before the layer normalises with them), so each layer sees
    normalised activations and the clips' differences survive to the logits."""
    def measure(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    hooks = [m.register_forward_pre_hook(measure) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    with torch.no_grad():
        quiet(model, features)
    for hook in hooks:
        hook.remove()


def record(model, features, torch):
    """logits, embedding, frames of `model` (eval mode) on features [batch, 1, mels, frames]."""
    with torch.no_grad():
        fmap = quiet(model._forward_conv, features)             # [batch, channels, mels', frames']
        logits = quiet(model, features)
    return (logits.numpy().astype(np.float32), fmap.mean(dim=(2, 3)).numpy().astype(np.float32),
            fmap.mean(dim=2).transpose(1, 2).numpy().astype(np.float32))


def n_params(model, without=None):
    return sum(p.numel() for name, p in model.named_parameters() if without is None or not name.startswith(without))


def shapes(model):
    return {name: list(value.shape) for name, value in model.state_dict().items()}


def kernel_shapes(model, torch):
    return {name + '.weight': list(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.conv._ConvNd)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('dcase22', help='a checkout of github.com/CPJKU/cpjku_dcase22')
    parser.add_argument('dcase20', help='a checkout of github.com/kkoutini/cpjku_dcase20')
    parser.add_argument('dcase23', help='a checkout of github.com/fschmid56/cpjku_dcase23')
    args = parser.parse_args()
    paths = {'cp22': (args.dcase22, 'models/cp/cp_resnet.py'),
             'damp20': (args.dcase20, 'models/cp_resnet_freq_damp.py'),
             'cp23': (args.dcase23, 'models/cp_resnet.py'), 'mel23': (args.dcase23, 'models/mel.py')}
    for checkout, path in paths.values():
        if not os.path.isfile(os.path.join(checkout, path)):
            sys.exit(f'{checkout}: no {path}; give the checkouts in the order dcase22 dcase20 dcase23')

    import torch
    torchaudio = efficientat_reference.import_torchaudio()
    stub_modules()
    modules = {name: load_module(f'upstream_{name}', os.path.join(checkout, path))
               for name, (checkout, path) in paths.items()}
    cp22, damp20, cp23, mel23 = (modules[k] for k in ('cp22', 'damp20', 'cp23', 'mel23'))

    # The full-width networks: parameter counts, and the 2023 teachers' network is the 2022 one.
    full = quiet(cp22.get_model, **SUBMISSION)
    teacher = quiet(cp23.get_model)
    if shapes(full) != shapes(teacher):
        sys.exit('the 2022 get_model with the submission arguments differs from the 2023 teachers\' get_model()')
    full_damped = build_damped(cp22, damp20, torch, **SUBMISSION)
    assert shapes(full_damped) == shapes(full)
    counts = {'cpresnet': n_params(full), 'cpresnet_backbone': n_params(full, without='feed_forward.'),
              'cpresnet_teacher_2023': n_params(teacher), 'cpresnet_damped': n_params(full_damped),
              'cpresnet_damped_backbone': n_params(full_damped, without='feed_forward.')}
    kernels = {str(rho): kernel_shapes(quiet(cp22.get_model, **dict(SUBMISSION, rho=rho)), torch) for rho in RHOS}
    # As the DCASE organisers count (helpers/nessi.py of the 2022 code: torchinfo's summary), for 1 s of
    # the teachers' front end: [1, 1, 256, 43].
    import torchinfo
    frames_1s = 1 + (SAMPLE_RATE - 1) // TEACHER_MEL['hopsize']
    summary = quiet(torchinfo.summary, full, input_size=(1, 1, TEACHER_MEL['n_mels'], frames_1s), verbose=0)
    nessi = {'input_size': [1, 1, TEACHER_MEL['n_mels'], frames_1s], 'macs': int(summary.total_mult_adds),
             'params': int(summary.total_params), 'torchinfo': torchinfo.__version__}

    mel = quiet(mel23.AugmentMelSTFT, **TEACHER_MEL)
    mel.eval()
    waves = reference_waves()
    with torch.no_grad():
        features = mel(torch.from_numpy(waves.astype(np.float32) / 32768))     # [batch, 256, frames]
    x = features.unsqueeze(1)

    os.makedirs(OUT, exist_ok=True)
    outputs = {'waves': waves, 'features': features.transpose(1, 2).numpy().astype(np.float32)}
    torch.manual_seed(0)
    networks = {'cpresnet': quiet(cp22.get_model, **FIXTURE),
                'cpresnet_damped': build_damped(cp22, damp20, torch, **FIXTURE)}
    for seed, (name, model) in enumerate(networks.items()):
        seed_weights(model, torch, seed)
        round_to_half(model, torch)
        calibrate_in_eval(model, x, torch)
        round_to_half(model, torch, buffers=True)
        model.eval()
        logits, embedding, frames = record(model, x, torch)
        outputs.update({f'logits_{name}': logits, f'embedding_{name}': embedding, f'frames_{name}': frames})
        state = {k: (v.numpy() if v.dtype == torch.int64 else v.half().numpy()) for k, v in model.state_dict().items()}
        np.savez_compressed(os.path.join(OUT, f'{name}.npz'), **state)
        print(f'{name}: {n_params(model)} parameters at the fixture width, logits {np.round(logits, 3).tolist()}')
    np.savez_compressed(os.path.join(OUT, 'reference.npz'), **outputs)
    meta = {'torch': torch.__version__, 'torchaudio': torchaudio.__version__, 'fixture': FIXTURE,
            'full_width': SUBMISSION, 'mel': TEACHER_MEL, 'params_full_width': counts, 'nessi_1s': nessi,
            'conv_kernels_by_rho': kernels}
    with open(os.path.join(OUT, 'reference.json'), 'w') as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write('\n')
    print(f'features {tuple(features.shape)}; full width: {counts}')


if __name__ == '__main__':
    main()
