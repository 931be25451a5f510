"""Record EfficientAT's own dynamic MobileNet (DyMN) outputs under tests/data/dymn/.

tests/test_dymn.py compares our Paddle DyMN with these recordings. EfficientAT's code
(github.com/fschmid56/EfficientAT, MIT licence) is run from a checkout given on the command
line and never copied here; the clips, the weight seeding and the imports of PyTorch-side
packages are make_efficientat_reference.py's (see its docstring for the environment):

    git clone https://github.com/fschmid56/EfficientAT /tmp/EfficientAT
    /tmp/torchenv/bin/python tests/data/make_dymn_reference.py /tmp/EfficientAT

The network is EfficientAT's `get_model(width_mult=0.1, num_classes=50, T_max=1.0)`: the
smallest width (every channel count at its floor of 8 up to block 9) with a 50-class head, and
the kernel-mixing temperature 1 that `get_model` gives its pretrained AudioSet taggers. Its
weights are seeded by `seed_weights` (BatchNorm and Linear layers; the dynamic kernels keep their
seeded He initialisation), the dynamic coefficients damped (`damp_dynamic_coefficients`) and
all rounded to float16 values, and the BatchNorm statistics measured
again in evaluation mode (`calibrate_in_eval`) and rounded too: the state dict is stored in half
precision (half the size) while the recorded float32 outputs are exactly those of its weights.

Writes:
  tiny_dymn.pt    the state dict (torch.save, zip format, float16 tensors);
  reference.npz   waves          the input waveforms, int16 [3, 16000] (divide by 32768);
                  features       AugmentMelSTFT's output in eval mode, our layout [3, frames, 128];
                  logits         the model's logits on the batch of the three clips [3, 50];
                  logits_single  the logits of each clip run alone (batch of 1), stacked [3, 50];
                  logits_t30     the batch's logits with every DynamicConv at temperature 30 [3, 50];
                  pooled         the model's second output (the last feature map averaged) [3, 96];
                  embedding      its head's first Linear + Hardswish on the same input [3, 128];
                  attention      the kernel attention of layers.4.depth_conv (softmax over its
                                 K = 4 kernels) for each clip of the batch [3, 4];
                  attention_exp  the same for layers.11.exp_conv [3, 4].
"""
import argparse
import contextlib
import io
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_efficientat_reference as efficientat_reference  # noqa: E402  (its clips, seeding and imports)

OUT = os.path.join(HERE, 'dymn')
WIDTH = 0.1
NUM_CLASSES = 50
TEMPERATURE = 1.0
DYNAMIC_SCALE = 0.3
ATTENTION_OF = {'attention': (4, 'depth_conv'), 'attention_exp': (11, 'exp_conv')}


def calibrate_in_eval(model, features, torch):
    """Set every BatchNorm's running statistics to those of its input in evaluation mode, in one
    pass (a pre-hook writes them just before the layer normalises with them).

    seed_weights measures them in training mode, where each layer sees its predecessors normalised
    with batch statistics. In DyMN the last blocks' feature maps are 4 x 2 for these clips, so the
    two differ by a few per cent per layer, and the dynamic ReLUs and kernel mixtures amplify the
    differences block by block: in evaluation mode the last blocks' activations would reach 1e4.
    Measured in evaluation mode, every layer sees normalised activations.
    """
    def measure(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(measure) for m in norms]
    model.eval()
    with torch.no_grad():
        model(features)
    for hook in hooks:
        hook.remove()


def damp_dynamic_coefficients(model, torch, scale=DYNAMIC_SCALE):
    """Scale the seeded weights of the Linears that give the kernel-mixing logits (`residuals`) and
    the DyReLU coefficients (`coef_net`) by `scale`.

    At seed_weights' full scale this random network is chaotic: float32 rounding grows about
    twofold per block, to 1e-2 at the logits, so that even upstream's own code gives a clip's
    logits 1e-2 apart alone and in a batch (in float64 they agree to 1e-11), and no other
    implementation could be compared with it at 1e-4. Damped, the rounding stays near 1e-5 while
    the kernel mixtures still differ from clip to clip.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(('.residuals.0', '.coef_net.0')):
                module.weight.mul_(scale)
                module.bias.mul_(scale)


def round_to_half(model, torch):
    """Every floating-point tensor of the state dict rounded to a float16 value (kept in float32)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def kernel_attention(model, features, torch):
    """The softmax over kernels that the named dynamic convolutions compute for each clip, from their
    block's context (the first element of ContextGen's output, caught by a forward hook)."""
    contexts = {}
    hooks = [model.layers[index].context_gen.register_forward_hook(
        lambda module, args, output, index=index: contexts.__setitem__(index, output[0]))
        for index, _ in ATTENTION_OF.values()]
    with torch.no_grad():
        model(features)
        out = {}
        for key, (index, conv_name) in ATTENTION_OF.items():
            conv = getattr(model.layers[index], conv_name)
            logits = conv.residuals(contexts[index].view(features.shape[0], -1))
            out[key] = torch.softmax(logits / conv.temperature, dim=-1).numpy()
    for hook in hooks:
        hook.remove()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkout', help='a checkout of github.com/fschmid56/EfficientAT')
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.checkout, 'models', 'dymn', 'model.py')):
        sys.exit(f'{args.checkout}: not a checkout of EfficientAT (no models/dymn/model.py)')

    import torch
    torchaudio = efficientat_reference.import_torchaudio()
    _, AugmentMelSTFT = efficientat_reference.import_efficientat(args.checkout)
    from models.dymn.model import get_model
    from models.dymn.dy_block import DynamicConv

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # get_model prints the whole network
        model = get_model(num_classes=NUM_CLASSES, width_mult=WIDTH, T_max=TEMPERATURE)
    mel = AugmentMelSTFT(n_mels=128, sr=efficientat_reference.SAMPLE_RATE, win_length=800, hopsize=320)
    mel.eval()

    waves = efficientat_reference.reference_waves().astype(np.float32) / 32768
    with torch.no_grad():
        features = mel(torch.from_numpy(waves)).unsqueeze(1)          # [batch, 1, 128, frames]
    efficientat_reference.seed_weights(model, features, torch)
    damp_dynamic_coefficients(model, torch)
    round_to_half(model, torch)
    calibrate_in_eval(model, features, torch)
    round_to_half(model, torch)
    with torch.no_grad():
        logits, pooled = model(features)
        single = torch.cat([model(features[i:i + 1])[0] for i in range(len(features))])
        embedding = model.classifier[3](model.classifier[2](pooled))
    attention = kernel_attention(model, features, torch)
    convs = [m for m in model.modules() if isinstance(m, DynamicConv)]
    for conv in convs:
        conv.temperature = 30.0
    with torch.no_grad():
        logits_t30 = model(features)[0]
    for conv in convs:
        conv.temperature = TEMPERATURE

    os.makedirs(OUT, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(OUT, 'tiny_dymn.pt'))
    as32 = lambda t: t.numpy().astype(np.float32)  # noqa: E731
    np.savez_compressed(os.path.join(OUT, 'reference.npz'), waves=efficientat_reference.reference_waves(),
                        features=features[:, 0].transpose(1, 2).numpy().astype(np.float32),
                        logits=as32(logits), logits_single=as32(single), logits_t30=as32(logits_t30),
                        pooled=as32(pooled), embedding=as32(embedding),
                        **{k: v.astype(np.float32) for k, v in attention.items()})
    print(f'torch {torch.__version__}, torchaudio {torchaudio.__version__}: wrote {OUT}/tiny_dymn.pt and '
          f'reference.npz; features {tuple(features.shape)}, |logits| up to {logits.abs().max():.3f}, '
          f'batch vs alone up to {(logits - single).abs().max():.2e}, attention {attention["attention"].round(3)}')


if __name__ == '__main__':
    main()
