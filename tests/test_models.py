"""Backbones: official parameter names and shapes, forward on every registered model."""
import numpy as np
import paddle
import pytest

from paddle_soundcls import list_models, registry
from paddle_soundcls.models import ARCHITECTURES


def official_names(num_blocks, num_convs):
    """The tensor names of the official Paddle PANNs checkpoints (PaddleSpeech / PaddleHub)."""
    bn = ['weight', 'bias', '_mean', '_variance']
    names = [f'bn0.{p}' for p in bn]
    for i in range(1, num_blocks + 1):
        for j in range(1, num_convs + 1):
            names.append(f'conv_block{i}.conv{j}.weight')
            names += [f'conv_block{i}.bn{j}.{p}' for p in bn]
    return set(names + ['fc1.weight', 'fc1.bias', 'fc_audioset.weight', 'fc_audioset.bias'])


EXPECTED = {
    # arch: (blocks, convs per block, channels, kernel, embedding size)
    'cnn14': (6, 2, [64, 128, 256, 512, 1024, 2048], 3, 2048),
    'cnn10': (4, 2, [64, 128, 256, 512], 3, 512),
    'cnn6': (4, 1, [64, 128, 256, 512], 5, 512),
}


@pytest.mark.parametrize('arch', sorted(EXPECTED))
def test_official_names_and_shapes(arch):
    blocks, convs, channels, kernel, emb = EXPECTED[arch]
    state = ARCHITECTURES[arch]().state_dict()
    assert set(state) == official_names(blocks, convs)
    assert list(state['bn0._mean'].shape) == [64]
    assert list(state['conv_block1.conv1.weight'].shape) == [64, 1, kernel, kernel]
    last = f'conv_block{blocks}.conv{convs}.weight'
    assert list(state[last].shape) == [channels[-1], channels[-1] if convs == 2 else channels[-2], kernel, kernel]
    # Paddle Linear weights are [in, out].
    assert list(state['fc1.weight'].shape) == [channels[-1], emb]
    assert list(state['fc_audioset.weight'].shape) == [emb, 527]
    cfg = [c for c in (registry.get_cfg(n) for n in list_models()) if c.arch == arch][0]
    assert cfg.num_params == sum(int(np.prod(v.shape)) for v in state.values())
    assert cfg.emb_size == emb


@pytest.mark.parametrize('name', list_models())
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('seconds', [1, 10])
def test_forward_shapes(name, batch, seconds):
    cfg = registry.get_cfg(name)
    model = ARCHITECTURES[cfg.arch]()
    model.eval()
    frames = cfg.frontend.num_frames(seconds * cfg.sample_rate)
    x = paddle.to_tensor(np.random.default_rng(0).normal(-40, 20, (batch, 1, frames, 64)).astype('float32'))
    with paddle.no_grad():
        emb = model(x)
        logits = model.fc_audioset(emb)
    assert list(emb.shape) == [batch, cfg.emb_size]
    assert list(logits.shape) == [batch, 527]
    assert np.all(np.isfinite(logits.numpy()))
    if batch == 3:  # each clip is processed independently in eval mode
        with paddle.no_grad():
            single = model(x[1:2])
        np.testing.assert_allclose(single.numpy()[0], emb.numpy()[1], rtol=1e-4, atol=1e-4)


def test_registry_lists_known_names():
    assert list_models() == ['panns_cnn10', 'panns_cnn14', 'panns_cnn6']
    with pytest.raises(ValueError, match='panns_cnn10, panns_cnn14, panns_cnn6'):
        registry.get_cfg('panns_cnn99')


def test_audioset_labels_shipped():
    labels = registry.audioset_labels()
    assert len(labels) == 527
    assert labels[0] == 'Speech' and labels[1] == 'Male speech, man speaking' and labels[-1] == 'Field recording'
