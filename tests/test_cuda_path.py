"""The CUDA path's CPU-side fixes (issue 21, part A), each shown on the CPU: what a CUDA run
does per step (no host-device copy or sync where none is needed), what --amp's bfloat16
changes (counts and membrane state stay float32) and how checkpoints move between machines
with other devices."""
import pytest
import torch
from spikingjelly.activation_based import functional, layer
from torch.utils._python_dispatch import TorchDispatchMode

from engine.augment import normalise
from engine.metrics import FiringRateMonitor
from engine.sops import SynapticOpsMonitor
from gradrewire import GradRewiring
from snn import lif


class AtenOps(TorchDispatchMode):
    """Records the name of every aten operation run inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- rewiring_base.scalar

def _compiled_grad_r(like):
    return GradRewiring([torch.nn.Parameter(like.clone())], alpha=1e-3, s=0.95, compiled=True)


SCALARS = [1e-3 / (1 - 0.9),          # step on the first step with lr 1e-3, b1 0.9
           0.1, -2302.585092994046,   # mu of s 0.95, alpha 1e-3
           1e-40,                     # a float32 subnormal (bits 71362)
           1e-46,                     # below float32's smallest subnormal: 0
           3.4028235e38,              # above float32's max, rounds to it
           1e39, float('-inf')]       # beyond the range: inf; -inf


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('value', SCALARS)
def test_compiled_scalar_has_the_bits_of_torch_tensor(value, dtype):
    like = torch.zeros(3, dtype=dtype)
    got = _compiled_grad_r(like).scalar(value, like)
    want = torch.tensor(value, dtype=dtype)           # what scalar() returned before
    assert got.dtype == dtype and got.device == like.device and got.shape == ()
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert got.view(bits).item() == want.view(bits).item()


def test_compiled_scalar_is_filled_not_copied_from_host_memory():
    like = torch.zeros(3)
    opt = _compiled_grad_r(like)
    with AtenOps() as ops:
        opt.scalar(0.1, like)
    # torch.tensor(...) lifts a host buffer (aten.lift_fresh; a copy on CUDA); full fills.
    assert ops.names == ['aten.full.default']
    assert opt.scalar(1e-40, like).view(torch.int32).item() == 71362


# ---------------------------------------------------------------- engine.augment.normalise

def test_normalise_makes_mean_and_std_once_and_keeps_the_bits(monkeypatch):
    mean, std = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)    # values no other test uses
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 2, 2)
    made = []
    for name in ('tensor', 'as_tensor'):                 # every tensor made from host numbers
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _f=original, **k: made.append(a) or _f(*a, **k))
    outs = [normalise(images, mean, std) for _ in range(3)]
    assert len(made) == 2                                 # mean and std, for the first batch only
    # (x / 255 - mean) / std: (0 - 0.25) / 0.5, (0.2 - 0.5) / 0.25, (1 - 0.75) / 0.125
    monkeypatch.undo()
    x = images.to(torch.float32) / 255
    want = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    for out in outs:
        assert out.dtype == torch.float32 and torch.equal(out, want)
    torch.testing.assert_close(outs[0][0, :, 0, 0], torch.tensor([-0.5, -1.2, 2.0]))


# ---------------------------------------------------------------- engine.metrics (firing rates)

def _current_to_lif():
    """Linear 1 -> 1 (weight 1) then one LIF neuron, multi-step: input [T, N, 1] -> spikes."""
    linear = layer.Linear(1, 1, bias=False, step_mode='m')
    torch.nn.init.ones_(linear.weight)
    model = torch.nn.Sequential(linear, lif())
    functional.set_step_mode(model, 'm')
    return model


def test_firing_rate_counts_are_exact_under_bfloat16_autocast():
    # A current of 3 makes the neuron fire at every step (H = (V + 3) / 2 >= 1.5), one of 0
    # never (it starts from V = 0 after a spike): 8 x 1000 steps, 3 of them without current.
    T, N = 8, 1000
    x = torch.full((T, N, 1), 3.0)
    x[0, 0] = x[3, 500] = x[7, 999] = 0.0
    model = _current_to_lif().eval()
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            spikes = model(x)
        monitor.count_samples(N)
    assert spikes.dtype == torch.bfloat16 and spikes.sum(dtype=torch.float64).item() == 7997
    assert monitor.spikes['1'].tolist() == [7997.0]      # bfloat16 would round it to 8000
    rates = monitor.results()['1']
    assert rates['avg_firing_rate'] == float(torch.tensor(7997.0) / torch.tensor(8000.0))
    assert rates['nonfire_prop'] == 0.0


# ---------------------------------------------------------------- engine.sops

class Fire(torch.nn.Module):
    """Heaviside(x - 0.5) in x's dtype: spikes, bfloat16 under autocast."""

    def forward(self, x):
        return (x >= 0.5).to(x.dtype)


def _ones(module):
    torch.nn.init.ones_(module.weight)
    return module


def _sops_under_bfloat16_autocast(model, images):
    with SynapticOpsMonitor(model) as monitor, torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            model(images)
    return monitor.results()


def test_linear_sops_are_exact_under_bfloat16_autocast():
    # 257 images, each one spike into a Linear 1 -> 3 with every synapse linked: 3 SOPs per
    # image. Summed in bfloat16 the 257 spikes of the batch would count as 256.
    model = torch.nn.Sequential(_ones(torch.nn.Linear(1, 1, bias=False)), Fire(),
                                _ones(torch.nn.Linear(1, 3, bias=False)))
    r = _sops_under_bfloat16_autocast(model, torch.ones(257, 1))
    assert r['images'] == 257 and r['per_layer'] == {'2.weight': 3.0} and r['dense_total'] == 3.0


def test_conv_sops_are_exact_under_bfloat16_autocast():
    # One image: 29 channels of 3x3 spikes into a 3x3 convolution 29 -> 1, padding 1, every
    # synapse linked. Output (i, j) reads 29 x (in-bounds taps): corners 29 x 4 = 116,
    # edges 29 x 6 = 174, the centre 29 x 9 = 261 (bfloat16: 260). In all
    # 4 x 116 + 4 x 174 + 261 = 1421.
    model = torch.nn.Sequential(_ones(torch.nn.Conv2d(1, 29, 1, bias=False)), Fire(),
                                _ones(torch.nn.Conv2d(29, 1, 3, padding=1, bias=False)))
    r = _sops_under_bfloat16_autocast(model, torch.ones(1, 1, 3, 3))
    assert r['per_layer'] == {'2.weight': 1421.0} and r['dense_total'] == 1421.0
    assert r['first_layer_macs'] == 29 * 9


# ---------------------------------------------------------------- snn.lif under --amp and --compile

@pytest.mark.parametrize('training', [True, False])
def test_lif_state_is_float32_under_bfloat16_autocast_compiled_or_not(training):
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(4, 3, 5, generator=gen)      # [T, N, features] currents
    weight = torch.randn(6, 5, generator=gen)
    runs = []
    for compiled in (False, True):
        linear = layer.Linear(5, 6, bias=False, step_mode='m')
        with torch.no_grad():
            linear.weight.copy_(weight)
        model = torch.nn.Sequential(linear, lif())
        functional.set_step_mode(model, 'm')
        model.train(training)
        run = torch.compile(model) if compiled else model
        with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
            spikes = run(x)                               # the Linear's output is bfloat16
        runs.append((spikes, model[1].v))
    (eager_spikes, eager_v), (compiled_spikes, compiled_v) = runs
    assert eager_v.dtype == compiled_v.dtype == torch.float32
    assert eager_spikes.dtype == compiled_spikes.dtype
    assert torch.equal(eager_spikes, compiled_spikes) and torch.equal(eager_v, compiled_v)
    assert 0 < eager_spikes.sum() < eager_spikes.numel()   # some fired, some did not
