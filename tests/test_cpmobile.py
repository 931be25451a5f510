"""CP-Mobile (the DCASE 2024 task 1 baseline network): its size and cost against the figures its
authors publish (CPJKU/dcase2024_task1_baseline, README: 61,148 parameters, 29,419,156 MACs per
1-s clip, layer by layer), its front end against librosa, its receptive field measured by
gradients, the baseline's PyTorch checkpoint names, and that it learns from random weights."""
import librosa
import numpy as np
import paddle
import pytest

import paddle_soundcls.models.cpmobile  # noqa: F401  registers the family
from paddle_soundcls import Module
from paddle_soundcls.checkpoints.files import save_pdparams
from paddle_soundcls.errors import CheckpointError, NoHeadError
from paddle_soundcls.features import LogMel, mel
from paddle_soundcls.models import registry
from paddle_soundcls.models.cpmobile import BASELINE, CPMOBILE_FRONTEND, CPMobile, build, receptive_field
from signals import chirp, noise, tone

SR = CPMOBILE_FRONTEND.sample_rate
FRAMES_1S = 65          # the baseline's input for 1 s: [1, 1, 256, 65]
PUBLISHED_PARAMS = 61148
PUBLISHED_MACS = 29419156
# The baseline README's table, one row per Conv2dNormActivation in network order (in_c[0], in_c[1],
# then expand / depthwise / project of blocks b1..b6): (parameters, MACs) of conv + BatchNorm,
# where a BatchNorm counts 2 parameters and 2 MACs per channel.
PUBLISHED_LAYERS = [
    (88, 304144), (2368, 2506816),
    (2176, 2228352), (704, 626816), (2112, 2228288),
    (2176, 2228352), (704, 626816), (2112, 2228288),
    (2176, 2228352), (704, 331904), (2112, 1179712),
    (2176, 1179776), (704, 166016), (3696, 1032304),
    (6960, 1935600), (1320, 311280), (6832, 1935472),
    (6960, 1935600), (1320, 311280), (12688, 3594448),
]
# Its classifier for 10 classes: a 1x1 conv 104 -> 10 on the 32 x 9 map (no bias), BatchNorm(10).
PUBLISHED_CLASSIFIER = [(1040, 299520), (20, 20)]


def trainable(layer):
    return sum(int(np.prod(p.shape)) for p in layer.parameters() if not p.stop_gradient)


def count_macs(layer, features):
    """MACs of every Conv2D and Linear in one forward pass, in call order, counted with hooks:
    output elements x inputs per output (in_channels / groups x kernel area, or in_features)."""
    counts, hooks = [], []

    def conv_hook(sub, inputs, output):
        counts.append(('conv', int(np.prod(output.shape)) * int(np.prod(sub.weight.shape[1:]))))

    def linear_hook(sub, inputs, output):
        counts.append(('linear', int(np.prod(output.shape)) * sub.weight.shape[0]))   # Paddle: [in, out]

    for sub in layer.sublayers():
        if isinstance(sub, paddle.nn.Conv2D):
            hooks.append(sub.register_forward_post_hook(conv_hook))
        elif isinstance(sub, paddle.nn.Linear):
            hooks.append(sub.register_forward_post_hook(linear_hook))
    with paddle.no_grad():
        layer(features)
    for hook in hooks:
        hook.remove()
    return counts


def features(batch, frames, seed=0):
    rng = np.random.default_rng(seed)
    return paddle.to_tensor(rng.normal(-4, 2, (batch, frames, CPMOBILE_FRONTEND.n_mels)).astype('float32'))


def test_parameters_against_published():
    module = Module('cpmobile', num_class=10, pretrained=False)
    backbone = trainable(module.backbone)
    convs = [s for s in module.backbone.sublayers() if isinstance(s, paddle.nn.Conv2D)]
    norms = [s for s in module.backbone.sublayers() if isinstance(s, paddle.nn.BatchNorm2D)]
    assert len(convs) == len(norms) == len(PUBLISHED_LAYERS)
    for conv, norm, (params, _) in zip(convs, norms, PUBLISHED_LAYERS):
        assert int(np.prod(conv.weight.shape)) + 2 * norm.weight.shape[0] == params
    # Their classifier (1x1 conv without bias + BatchNorm: 1,060) is our Linear with bias (1,050).
    assert backbone + sum(p for p, _ in PUBLISHED_CLASSIFIER) == PUBLISHED_PARAMS
    assert trainable(module) == backbone + 104 * 10 + 10 == 61138
    assert abs(trainable(module) - PUBLISHED_PARAMS) / PUBLISHED_PARAMS < 0.001
    assert registry.get_spec('cpmobile').published['params'] == PUBLISHED_PARAMS
    # The DCASE rule (128 kB of parameters) holds at 16 bits, as the baseline is run.
    assert trainable(module) * 2 <= 128_000


def test_macs_per_second_against_published():
    module = Module('cpmobile', num_class=10, pretrained=False)
    counts = count_macs(module, features(1, FRAMES_1S))
    conv = [n for kind, n in counts if kind == 'conv']
    norms = [s for s in module.backbone.sublayers() if isinstance(s, paddle.nn.BatchNorm2D)]
    for ours, norm, (_, published) in zip(conv, norms, PUBLISHED_LAYERS):
        assert ours + 2 * norm.weight.shape[0] == published
    # Theirs applies the classifier at every position of the 32 x 9 map before averaging, and counts
    # BatchNorm; ours averages first, then one Linear: 1,040 MACs instead of 299,520 + 20.
    assert [kind for kind, _ in counts] == ['conv'] * 20 + ['linear']
    assert counts[-1][1] == 104 * 10
    published_batchnorm = sum(2 * n.weight.shape[0] for n in norms)
    assert sum(conv) + published_batchnorm + sum(m for _, m in PUBLISHED_CLASSIFIER) == PUBLISHED_MACS
    total = sum(n for _, n in counts)
    assert total == 29117968
    assert abs(total - PUBLISHED_MACS) / PUBLISHED_MACS < 0.02
    assert total <= 30_000_000   # the DCASE limit per 1 s of audio
    # Published for 1 s only: the spec records no 10-s figure rather than one nobody published.
    assert 'macs_10s' not in registry.get_spec('cpmobile').published


def test_frontend_matches_the_baseline_settings():
    """The baseline computes torchaudio's MelSpectrogram (periodic Hann, centre reflect padding, power 2,
    HTK mel filters without normalisation) and ln(x + 1e-5); librosa computes the same spectrogram."""
    cfg = CPMOBILE_FRONTEND
    assert (cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels) == (32000, 4096, 3072, 500, 256)
    assert cfg.num_frames(SR) == FRAMES_1S
    wave = tone(440, 1.0) + chirp(200, 9000, 1.0) + noise(1.0, amp=0.05)
    spec = librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=SR, n_fft=4096, win_length=3072, hop_length=500, window='hann', center=True,
        pad_mode='reflect', power=2.0, n_mels=256, fmin=0.0, fmax=None, htk=True, norm=None)
    expected = np.log(spec + 1e-5).T
    ours = mel.logmel(wave, cfg)                        # the Paddle-free runtime's
    assert ours.shape == (FRAMES_1S, 256)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    on_device = LogMel(cfg)(paddle.to_tensor(wave[None])).numpy()[0]   # the Module's
    np.testing.assert_allclose(on_device, expected, atol=1e-4)


def gradient_extent(model, frames):
    """(mel bins, frames) of input on which one central unit of the last feature map depends."""
    x = features(1, frames, seed=1)
    x.stop_gradient = False
    fmap = model.feature_map(x)
    fmap[0, :, fmap.shape[2] // 2, fmap.shape[3] // 2].sum().backward()
    grad = np.abs(x.grad.numpy()[0])            # [frames, mel bins]
    used_frames = np.nonzero(grad.sum(axis=1))[0]
    used_bins = np.nonzero(grad.sum(axis=0))[0]
    return used_bins[-1] - used_bins[0] + 1, used_frames[-1] - used_frames[0] + 1


@pytest.mark.parametrize('n_blocks, expected', [((3, 2, 1), (71, 79)), ((2, 1, 1), (39, 47))])
def test_receptive_field(n_blocks, expected):
    assert receptive_field(n_blocks) == expected
    paddle.seed(0)
    model = CPMobile(n_blocks=n_blocks)
    model.eval()
    assert model.receptive_field == expected
    # Measured: the input cells whose gradient is non-zero (a large input, so nothing is clipped).
    assert gradient_extent(model, 400) == expected
    # Widths do not change it.
    assert receptive_field(n_blocks) == CPMobile(base_channels=16, channels_multiplier=2.3, expansion_rate=3.0,
                                                 n_blocks=n_blocks).receptive_field


@pytest.mark.parametrize('name, emb', [('cpmobile', 104), ('cpmobile_wide', 168)])
@pytest.mark.parametrize('seconds, mel_frames', [(1, 9), (10, 81)])
def test_forward_shapes(name, emb, seconds, mel_frames):
    spec = registry.get_spec(name)
    assert spec.emb_size == emb
    model = spec.build(audioset_head=False)
    model.eval()
    x = features(2, spec.frontend.num_frames(seconds * SR))
    with paddle.no_grad():
        assert list(model.feature_map(x).shape) == [2, emb, 32, mel_frames]
        assert list(model.forward_features(x).shape) == [2, emb]
        assert list(model.forward_frames(x).shape) == [2, mel_frames, emb]
    module = Module(name, num_class=4, pretrained=False)
    with paddle.no_grad():
        assert list(module(x).shape) == [2, 4]


def test_no_pretrained_weights_and_no_tagging_head():
    with pytest.raises(ValueError, match='cpmobile has no pretrained weights; pass pretrained=False'):
        Module('cpmobile', num_class=3)
    with pytest.raises(ValueError, match='no AudioSet tagging head'):
        Module('cpmobile', task='tagging', pretrained=False)
    with pytest.raises(ValueError, match='no AudioSet head'):
        build(BASELINE, audioset_head=True)
    with pytest.raises(NoHeadError, match='no AudioSet head'):
        build(BASELINE).forward_head(paddle.zeros([1, 104]))
    with pytest.raises(ValueError, match=r'strides given for blocks \[7\]'):
        CPMobile(strides={3: (1, 2), 7: (2, 1)})


def torch_layout(state):
    """Our backbone state as the baseline's Lightning module saves it (PyTorch names)."""
    out = {}
    for key, value in state.items():
        layer, _, attr = key.rpartition('.')
        attr = {'_mean': 'running_mean', '_variance': 'running_var'}.get(attr, attr)
        out[f'model.{layer}.{attr}'] = value.numpy()
        if attr == 'running_var':
            out[f'model.{layer}.num_batches_tracked'] = np.array(100, dtype=np.int64)
    out['model.feed_forward.0.weight'] = np.zeros((10, 104, 1, 1), np.float32)
    for attr in ('weight', 'bias', 'running_mean', 'running_var'):
        out[f'model.feed_forward.1.{attr}'] = np.ones(10, np.float32)
    # torchaudio's buffers: the periodic Hann window and the mel filters [freqs, mels].
    out['mel.1.spectrogram.window'] = np.hanning(3073)[:-1].astype(np.float32)
    out['mel.1.mel_scale.fb'] = librosa.filters.mel(sr=SR, n_fft=4096, n_mels=256, fmin=0.0, fmax=None, htk=True,
                                                    norm=None).T.astype(np.float32)
    return out


def test_baseline_checkpoint_names(tmp_path):
    paddle.seed(3)
    source = build(BASELINE)
    for name, value in source.state_dict().items():   # give the statistics values worth checking
        if name.endswith(('._mean', '._variance')):
            value.set_value(paddle.rand(value.shape) + 0.5)
    path = str(tmp_path / 'baseline.pdparams')
    save_pdparams(torch_layout(source.state_dict()), path)
    module = Module('cpmobile', num_class=10, load_checkpoint=path)
    ours = module.backbone.state_dict()
    assert set(ours) == set(source.state_dict())
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(ours[name].numpy(), value.numpy(), err_msg=name)

    spec = registry.get_spec('cpmobile')
    with pytest.raises(CheckpointError, match=r"other\.pdparams: 'head\.weight' is not a parameter of a CP-Mobile"):
        spec.checkpoint_filter({'in_c.0.0.weight': np.zeros((8, 1, 3, 3)), 'head.weight': np.zeros(3)},
                               'other.pdparams')
    other_mels = torch_layout(source.state_dict())
    other_mels['mel.1.mel_scale.fb'] = other_mels['mel.1.mel_scale.fb'][:, :128]
    with pytest.raises(CheckpointError, match=r"x\.ckpt: its front-end tensor 'mel\.1\.mel_scale\.fb'"):
        spec.checkpoint_filter(other_mels, 'x.ckpt')


def clip_set(per_class, seed):
    """Three generated classes of 1-s clips: steady tones, noise, chirps; random pitch, level, background."""
    rng = np.random.default_rng(seed)
    waves, labels = [], []
    for _ in range(per_class):
        amp = rng.uniform(0.1, 0.5)
        background = noise(1.0, amp=0.01, seed=int(rng.integers(1 << 30)))
        f0 = rng.uniform(200, 3000)
        waves.append(tone(f0, 1.0, amp=amp) + background)
        waves.append(noise(1.0, amp=amp / 2, seed=int(rng.integers(1 << 30))) + background)
        waves.append(chirp(f0, f0 * rng.uniform(2, 4), 1.0, amp=amp) + background)
        labels += [0, 1, 2]
    return np.stack(waves), np.array(labels)


def test_learns_from_scratch():
    """A few dozen generated clips, a plain loop, random weights: well above chance (1/3) on new clips."""
    module = Module('cpmobile', label_map=['tone', 'noise', 'chirp'], pretrained=False, seed=0)
    train_waves, train_labels = clip_set(12, seed=0)
    test_waves, test_labels = clip_set(6, seed=1)
    with paddle.no_grad():   # no augmentation: the features are computed once
        train_x = module.frontend(paddle.to_tensor(train_waves))
        test_x = module.frontend(paddle.to_tensor(test_waves))
    epochs, batches = 12, 6
    # A decaying learning rate lets the BatchNorm running statistics, which evaluation uses, catch up
    # with the weights: with a constant rate, eval-mode accuracy lags well behind training accuracy.
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(3e-3, T_max=epochs * batches)
    optimizer = paddle.optimizer.Adam(learning_rate=schedule, parameters=module.parameters())
    rng = np.random.default_rng(0)
    module.train()
    for epoch in range(epochs):
        for batch in np.array_split(rng.permutation(len(train_labels)), batches):
            loss = paddle.nn.functional.cross_entropy(module(train_x[batch]), paddle.to_tensor(train_labels[batch]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
    module.eval()
    with paddle.no_grad():
        predicted = module(test_x).numpy().argmax(axis=1)
    accuracy = float((predicted == test_labels).mean())
    assert accuracy >= 0.8, f'accuracy {accuracy:.2f} after training from scratch (chance 0.33)'
