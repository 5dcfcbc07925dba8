"""Synaptic operations (engine/sops.py): hand-counted cases, a brute-force check on the
MNIST network, and the numbers a tiny real run records and prints with -test."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer

from engine.sops import SynapticOpsMonitor
from c10.model import CIFAR10SNN
from mnist.model import MNISTSNN


class FixedSpikes(nn.Module):
    """Stands in for a LIF layer: returns the given spike tensor whatever its input."""

    def __init__(self, spikes):
        super().__init__()
        self.spikes = spikes

    def forward(self, x):
        return self.spikes


def _count(model, images):
    with SynapticOpsMonitor(model) as monitor:
        model(images)
    return monitor.results()


def test_linear_hand_counted():
    first = nn.Linear(4, 3, bias=False)                    # reads the image: MACs
    with torch.no_grad():
        first.weight.fill_(0.5)
        first.weight[0, 0] = first.weight[2, 3] = 0.       # 12 weights, 10 kept
    synapse = layer.Linear(3, 2, bias=False)               # reads spikes [T, N, 3]
    with torch.no_grad():
        synapse.weight.copy_(torch.tensor([[0.3, 0.0, -0.2],
                                           [0.1, 0.4, 1e-11]]))    # 1e-11 < 1e-10: pruned
    # Kept fan-out of each input: input 0 -> 2 outputs, input 1 -> 1, input 2 -> 1.
    spikes = torch.tensor([[[1., 0., 1.], [1., 1., 1.]],   # t = 0: image 0, image 1
                           [[0., 1., 1.], [0., 0., 0.]]])  # t = 1
    # Image 0: t0 inputs 0, 2 -> 2 + 1 = 3; t1 inputs 1, 2 -> 1 + 1 = 2; in all 5.
    # Image 1: t0 inputs 0, 1, 2 -> 2 + 1 + 1 = 4; t1 nothing; in all 4.
    # Per image (5 + 4) / 2 = 4.5. Unpruned: 4 + 3 spikes, 2 outputs each: 14 / 2 = 7.
    model = nn.Sequential(first, FixedSpikes(spikes), synapse)
    r = _count(model, torch.zeros(2, 4))
    assert r['images'] == 2
    assert r['per_layer'] == {'2.weight': 4.5}
    assert r['total'] == 4.5 and r['dense_total'] == 7.0 and r['ratio'] == 4.5 / 7
    assert r['first_layer_macs'] == 10 and r['dense_first_layer_macs'] == 12


@pytest.mark.parametrize('multi_step', [True, False])
def test_conv_with_padding_hand_counted(multi_step):
    first = nn.Conv2d(1, 1, 3, padding=1, bias=False)      # 9 weights, all kept
    nn.init.constant_(first.weight, 1.)
    conv = layer.Conv2d(1, 2, 3, padding=1, bias=False, step_mode='m' if multi_step else 's')
    with torch.no_grad():
        conv.weight.fill_(1.)
        conv.weight[0, 0, 0, 0] = 0.                       # channel 0: 8 taps, top-left pruned
        conv.weight[1] = 0.
        conv.weight[1, 0, 1, 1] = 1.                       # channel 1: the centre tap only
    # One image, T = 1: spikes at the centre (1, 1) and the corner (0, 0) of a 3x3 map.
    spikes = torch.zeros(1, 1, 1, 3, 3)
    spikes[0, 0, 0, 1, 1] = spikes[0, 0, 0, 0, 0] = 1.
    # With padding 1 the output is 3x3 and output (i, j) reads input (a, b) through tap
    # (a - i + 1, b - j + 1). The centre is read by all 9 taps: kept 8 + 1 = 9.
    # The corner (0, 0) is read through taps (1 - i, 1 - j), i, j in {0, 1}: the top-left
    # 2x2 of the kernel; channel 0 keeps 3 of them (not (0, 0)), channel 1 keeps (1, 1): 4.
    # In all 9 + 4 = 13. Unpruned: 9 taps x 2 channels + 4 taps x 2 channels = 26.
    model = nn.Sequential(first, FixedSpikes(spikes if multi_step else spikes[0]), conv)
    r = _count(model, torch.zeros(1, 1, 3, 3))
    assert r['per_layer'] == {'2.weight': 13.0}
    assert r['dense_total'] == 26.0
    assert r['first_layer_macs'] == 9 * 9                  # 9 kept weights x 3x3 positions


def test_mnist_network_matches_brute_force():
    torch.manual_seed(0)
    model = MNISTSNN(T=4).eval()
    with torch.no_grad():
        for w in (model.static_fc[1].weight, model.fc[1].weight):
            w.mul_(torch.rand_like(w) > 0.7)               # prune about 70%
            w.mul_(6.)                                     # so that hidden neurons fire
    seen = []
    handle = model.fc[0].register_forward_hook(lambda m, i, out: seen.append(out.clone()))
    images = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        r = _count(model, images)
    functional.reset_net(model)
    handle.remove()
    spikes = seen[0]                                       # [T, N, 800], 0/1
    assert spikes.sum() > 0 and set(spikes.unique().tolist()) <= {0., 1.}
    mask = (model.fc[1].weight.abs() >= 1e-10).float()
    assert r['per_layer']['fc.1.weight'] == pytest.approx(float((spikes @ mask.T).sum()) / 5)
    assert r['dense_total'] == pytest.approx(float(spikes.sum()) * 10 / 5)
    kept_first = int((model.static_fc[1].weight.abs() >= 1e-10).sum())
    assert r['first_layer_macs'] == kept_first


def test_cifar10_network_matches_brute_force():
    torch.manual_seed(0)
    model = CIFAR10SNN(T=4).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.mul_(20.)                                # so that every layer spikes
        model.conv[4].weight.mul_(torch.rand_like(model.conv[4].weight) > 0.5)
    seen = []
    handle = model.conv[3].register_forward_hook(lambda m, i, out: seen.append(out.clone()))
    with torch.inference_mode():
        r = _count(model, torch.randn(2, 3, 32, 32))
    handle.remove()
    spikes = seen[0].flatten(0, 1).double()                # [T*N, 256, 32, 32] into conv.4
    assert spikes.sum() > 0
    mask = (model.conv[4].weight.abs() >= 1e-10).double()
    expected = F.conv2d(spikes, mask, None, 1, 1).sum() / 2
    assert r['per_layer']['conv.4.weight'] == pytest.approx(float(expected), rel=1e-12)
    assert set(r['per_layer']) == {'conv.1.weight', 'conv.4.weight', 'conv.8.weight', 'conv.11.weight',
                                   'conv.14.weight', 'fc.2.weight', 'fc.4.weight'}
    assert all(v > 0 for v in r['per_layer'].values())
    assert r['first_layer_macs'] == 256 * 3 * 9 * 32 * 32  # nothing pruned in static_conv.0


def test_conv_matches_brute_force_with_groups_and_stride():
    torch.manual_seed(1)
    first = nn.Linear(2, 2, bias=False)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.5)
    spikes = (torch.rand(3 * 2, 4, 7, 7) > 0.6).float()    # flattened [T*N, C, H, W], N = 2
    r = _count(nn.Sequential(first, FixedSpikes(spikes), conv), torch.zeros(2, 2))
    mask = (conv.weight.abs() >= 1e-10).float()
    expected = F.conv2d(spikes, mask, None, 2, 1, 1, 2).sum() / 2
    assert r['per_layer']['2.weight'] == pytest.approx(float(expected))


def test_unsupported_synapse_layer_is_refused():
    with pytest.raises(ValueError, match='0.weight'):
        SynapticOpsMonitor(nn.Sequential(nn.Conv1d(1, 2, 3)))
