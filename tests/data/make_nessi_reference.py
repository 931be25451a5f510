"""Record the DCASE task 1 organisers' complexity figures of their baseline under tests/data/nessi/.

tests/test_complexity_dcase.py compares our DCASE counting (analysis/complexity.py,
counting='dcase') with these recordings, layer by layer and in total. The DCASE 2024 task 1
baseline (github.com/CPJKU/dcase2024_task1_baseline) is run from a checkout given on the
command line and never copied here; its helpers/nessi.py, the organisers' counter, calls
torchinfo.summary. It needs PyTorch, torchvision (its Conv2dNormActivation), torchaudio (for
the input shape, as run_training.py gets it) and torchinfo, kept out of the package's own
environment:

    git clone https://github.com/CPJKU/dcase2024_task1_baseline /tmp/dcase2024_task1_baseline
    /tmp/torchenv/bin/pip install torch torchvision torchinfo
    /tmp/torchenv/bin/pip install --no-deps torchaudio
    /tmp/torchenv/bin/python tests/data/make_nessi_reference.py /tmp/dcase2024_task1_baseline

Writes reference.json: {'torchinfo', 'torch': versions, 'limits': nessi's MAX_PARAMS_MEMORY
(bytes) and MAX_MACS, 'models': {name: {'settings': get_model's arguments, 'classifier'
('baseline' or 'linear', see MODELS), 'seconds', 'input_size', 'macs', 'params'
(nessi.get_torch_size's figures), 'layers': [{'name', 'type', 'input_size', 'output_size',
'params', 'macs'}, ...]}}}, the layers being torchinfo's leaf layers with parameters, in
forward order, named by their PyTorch module path (e.g. 'stages.s1.b3.block.1.0').
"""
import argparse
import contextlib
import io
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'nessi')

# The baseline's run_training.py: 1-s clips of the TAU22 development set at 44.1 kHz, resampled
# to 32 kHz, then its log-mel front end.
ORIG_SAMPLE_RATE = 44100
MEL = dict(sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256, f_min=0, f_max=None)

BASELINE = dict(n_classes=10, base_channels=32, channels_multiplier=1.8, expansion_rate=2.1)
WIDE = dict(n_classes=10, base_channels=32, channels_multiplier=2.3, expansion_rate=3.0)

# name: (get_model's arguments, clip seconds, classifier). baseline: run_training.py's defaults
# (what the README's 61,148 / 29,419,156 are for); wide: get_model's own defaults, the DCASE 2023
# CP-Mobile widths. Classifier 'baseline': the baseline's own (1x1 conv without bias + BatchNorm
# at every position, then the average); 'linear': the average, then a Linear with bias, the
# classifier of paddle_soundcls's cpmobile models (a Module's head).
MODELS = {
    'baseline': (BASELINE, 1, 'baseline'),
    'baseline_10s': (BASELINE, 10, 'baseline'),
    'wide': (WIDE, 1, 'baseline'),
    'baseline_linear_head': (BASELINE, 1, 'linear'),
    'wide_linear_head': (WIDE, 1, 'linear'),
}


def import_torchaudio():
    """torchaudio without its compiled extension, which only loads with the torch it was built
    for: its transforms used here are plain Python. It is told the extension is absent."""
    import importlib.util
    find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == 'torchaudio.lib._torchaudio' else find_spec(name, *a)
    try:
        import torchaudio
    finally:
        importlib.util.find_spec = find_spec
    return torchaudio


def input_size(torch, torchaudio, seconds):
    """The log-mel shape run_training.py hands to nessi: one clip through resampling and the mel front end."""
    mel = torch.nn.Sequential(torchaudio.transforms.Resample(orig_freq=ORIG_SAMPLE_RATE, new_freq=MEL['sample_rate']),
                              torchaudio.transforms.MelSpectrogram(**MEL))
    wave = torch.zeros(1, 1, ORIG_SAMPLE_RATE * seconds)   # the test loader's [1, samples], unsqueezed
    with torch.no_grad():
        return list((mel(wave) + 1e-5).log().shape)


def linear_head(torch, in_channels, n_classes):
    """The average over frequency and time, then a Linear with bias, in the place of the baseline's
    feed_forward (whose [batch, classes, 1, 1] output its forward squeezes)."""
    class LinearHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(in_channels, n_classes)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]
    return LinearHead()


def record(torch, get_model, nessi, torchinfo, settings, shape, classifier):
    model = get_model(**settings)
    if classifier == 'linear':
        model.feed_forward = linear_head(torch, model.feed_forward[0].in_channels, settings['n_classes'])
    macs, params = nessi.get_torch_size(model, input_size=shape)
    names = {id(module): name for name, module in model.named_modules()}
    summary = torchinfo.summary(model, input_size=shape, verbose=0)
    layers = [{'name': names[id(info.module)], 'type': info.class_name, 'input_size': list(info.input_size),
               'output_size': list(info.output_size), 'params': info.num_params, 'macs': info.macs}
              for info in summary.summary_list if info.is_leaf_layer and (info.num_params or info.macs)]
    assert sum(layer['macs'] for layer in layers) == macs and sum(layer['params'] for layer in layers) == params
    return {'settings': settings, 'classifier': classifier, 'input_size': shape, 'macs': macs, 'params': params,
            'layers': layers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkout', help='a checkout of github.com/CPJKU/dcase2024_task1_baseline')
    args = parser.parse_args()
    import torch
    import torchinfo
    torchaudio = import_torchaudio()
    sys.path.insert(0, os.path.abspath(args.checkout))
    from helpers import nessi
    from models.baseline import get_model
    models = {}
    for name, (settings, seconds, classifier) in MODELS.items():
        shape = input_size(torch, torchaudio, seconds)
        with contextlib.redirect_stdout(io.StringIO()):    # nessi prints torchinfo's table
            models[name] = {'seconds': seconds, **record(torch, get_model, nessi, torchinfo, settings, shape,
                                                         classifier)}
        print(f"{name}: input {models[name]['input_size']}, {models[name]['params']:,} parameters, "
              f"{models[name]['macs']:,} MACs")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, 'reference.json'), 'w') as f:
        f.write(dumps({'torchinfo': torchinfo.__version__, 'torch': torch.__version__,
                       'limits': {'MAX_PARAMS_MEMORY': nessi.MAX_PARAMS_MEMORY, 'MAX_MACS': nessi.MAX_MACS},
                       'models': models}))


def dumps(value, indent=''):
    """JSON with one line per layer: small, and easy to read and compare."""
    def nested(v):
        return isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict))
    inner = indent + ' '
    if isinstance(value, dict) and any(nested(v) for v in value.values()):
        items = [f'{inner}{json.dumps(k)}: {dumps(v, inner)}' for k, v in value.items()]
        return '{\n' + ',\n'.join(items) + '\n' + indent + '}' + ('' if indent else '\n')
    if nested(value) and isinstance(value, list):
        return '[\n' + ',\n'.join(inner + json.dumps(v) for v in value) + '\n' + indent + ']'
    return json.dumps(value)


if __name__ == '__main__':
    main()
