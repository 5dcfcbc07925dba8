"""The CUDA path's CPU-side fixes (issue 21, part A), each shown on the CPU: what a CUDA run
does per step (no host-device copy or sync where none is needed), what --amp's bfloat16
changes (counts and membrane state stay float32) and how checkpoints move between machines
with other devices."""
import hashlib

import pytest
import torch
from spikingjelly.activation_based import functional, layer
from torch.utils._python_dispatch import TorchDispatchMode

import deeprewire

from deeprewire import DeepRewiring, bernoulli_positions
from engine.augment import normalise
from engine.checkpoint import atomic_save, load_checkpoint, rng_states, set_rng_states
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
    monkeypatch.undo()
    x = images.to(torch.float32) / 255                    # the float operations of before
    want = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    for out in outs:
        assert out.dtype == torch.float32 and torch.equal(out, want)
    # (x / 255 - mean) / std: (0 - 0.25) / 0.5, (0.2 - 0.5) / 0.25, (1 - 0.75) / 0.125
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


# ---------------------------------------------------------------- deeprewire: sparse reactivation draws

def test_bernoulli_positions_follow_the_documented_gaps():
    # p = 1/2: a draw u gives floor(log1p(-u) / log(1/2)) failures, the largest g with
    # 1 - u <= 2**-g: 0 for u < 1/2, 1 for u in [1/2, 3/4), 2 for u in [3/4, 7/8), ...
    # k = 20: one batch of int(10 + 4 * sqrt(10) + 16) = 38 draws.
    got = bernoulli_positions(20, 0.5, torch.Generator().manual_seed(5))
    u = torch.rand(38, generator=torch.Generator().manual_seed(5), dtype=torch.float64).tolist()
    want, position = [], -1
    for draw in u:
        gap = 0
        while 1 - draw <= 0.5 ** (gap + 1):
            gap += 1
        position += gap + 1
        if position < 20:
            want.append(position)
    assert got.dtype == torch.int64 and got.tolist() == want
    assert 4 <= len(want) <= 16 and want != list(range(len(want)))  # a real draw, with gaps


def test_bernoulli_positions_with_p_1_is_every_position_without_a_draw():
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    assert bernoulli_positions(7, 1.0, gen).tolist() == list(range(7))
    assert bernoulli_positions(0, 0.5, gen).tolist() == []
    assert torch.equal(gen.get_state(), before)
    with pytest.raises(ValueError, match=r"^p \(probability\) must satisfy 0 < p <= 1, got 0.0$"):
        bernoulli_positions(7, 0.0, gen)


@pytest.mark.parametrize('k, p', [(100000, 0.3), (200000, 0.002)])
def test_bernoulli_positions_have_the_law_of_k_trials(k, p):
    got = bernoulli_positions(k, p, torch.Generator().manual_seed(9))
    n, sd = k * p, (k * p * (1 - p)) ** 0.5
    assert abs(len(got) - n) < 4 * sd                       # binomial count
    assert got.unique().numel() == len(got) and torch.all(got[1:] > got[:-1])
    assert 0 <= got.min() and got.max() < k
    halves = (got < k // 2).sum().item()                  # as many in each half of the range
    assert abs(halves - n / 2) < 4 * (n / 4) ** 0.5


@pytest.fixture
def generator_elsewhere(monkeypatch):
    """Deep R acts as if its generator were on another device than the weights (a CPU
    generator with CUDA weights): the reactivations take the sparse path."""
    monkeypatch.setattr(deeprewire, '_same_device', lambda a, b: False, raising=False)


def _halves_dormant(n, max_s, seed):
    # 0.5 - 1 < 0: the first n/2 synapses go dormant (L1 pull 1, no gradient), the rest stay.
    w = torch.nn.Parameter(torch.cat([torch.full((n // 2,), 0.5), torch.full((n // 2,), 3.0)]))
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=1e-3, l1=1.0, max_s=max_s, seed=seed)
    w.grad = torch.zeros(n)
    return w, opt


def test_sparse_reactivation_draws_about_k_p_numbers_not_numel(generator_elsewhere, monkeypatch):
    # c = 0.5, max_s = 0.49: p = 0.01 / 0.5 = 0.02 for each of the 5000 dormant synapses,
    # about 100 reactivated; one batch of int(100 + 40 + 16) = 156 draws, not 10000.
    w, opt = _halves_dormant(10000, 0.49, seed=21)
    drawn = []
    rand = torch.rand
    monkeypatch.setattr(torch, 'rand', lambda *a, **k: drawn.append(rand(*a, **k)) or drawn[-1])
    opt.step()
    assert sum(d.numel() for d in drawn) == 156
    revived = (w[:5000] != 0).nonzero().flatten()
    assert torch.equal(revived, bernoulli_positions(5000, 0.02, torch.Generator().manual_seed(21)))
    assert abs(len(revived) - 100) < 40 and (w[revived] == 1e-3).all() and (w[5000:] == 2.0).all()


@pytest.mark.parametrize('regrowth, second', [('released', [0.0, 0.0]), ('active', [1.0, -1.0])])
def test_sparse_reactivation_keeps_the_hand_checked_regrowth(generator_elsewhere, regrowth, second):
    # As test_deeprewire's released/active cases: max_s = 0 gives p = 1, every dormant synapse
    # is reactivated (to +eps released, to sign * eps active), without a draw.
    eps = 1e-3
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5, 2.0, 3.0], dtype=torch.float64))
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=eps, l1=1.0, max_s=0.0, regrowth=regrowth)
    before = opt.generator.get_state()
    w.grad = torch.zeros(4, dtype=torch.float64)
    opt.step()
    assert w.tolist() == ([eps, eps, 1.0, 2.0] if regrowth == 'released' else [eps, -eps, 1.0, 2.0])
    assert torch.equal(opt.generator.get_state(), before)
    opt.param_groups[0].update(l1=0.0, max_s=1.0)
    w.grad = torch.tensor([-1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    opt.step()
    # released: never trained, zeroed; active: trained by 1 * g / (|g| + eps) = -+1 / (1 + eps)
    expected = [s * (eps + 1 / (1 + eps)) for s in second] if regrowth == 'active' else second
    torch.testing.assert_close(w.detach()[:2], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- deeprewire: a generator state of another kind

def _deep_r_with_noise(generator=None):
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0]))
    return w, DeepRewiring([w], lr=0.1, T=0.5, l1=0.0, max_s=1.0, seed=4, generator=generator)


def _state_dict_with(generator_state):
    w, opt = _deep_r_with_noise()
    w.grad = torch.ones(3)
    opt.step()
    return {**opt.state_dict(), 'generator': generator_state}


def test_a_cuda_generator_state_resumes_on_a_cpu_generator():
    cuda_like = torch.arange(16, dtype=torch.uint8)          # a CUDA state: seed and offset, 16 bytes
    seed = int.from_bytes(hashlib.sha256(bytes(range(16))).digest()[:8], 'little')
    states = []
    for _ in range(2):                                         # the same resume, twice
        w, opt = _deep_r_with_noise()
        with pytest.warns(UserWarning, match=r"^Deep R: the saved generator state \(16 bytes\) is not one of "
                                             r"this run's cpu generator \(5056 bytes\)"):
            opt.load_state_dict(_state_dict_with(cuda_like))
        assert torch.equal(opt.generator.get_state(), torch.Generator().manual_seed(seed).get_state())
        w.grad = torch.ones(3)
        opt.step()                                             # draws the noise from it
        states.append((w.detach().clone(), opt.generator.get_state()))
    assert torch.equal(states[0][0], states[1][0]) and torch.equal(states[0][1], states[1][1])
    w, opt = _deep_r_with_noise()
    with pytest.warns(UserWarning):
        opt.load_state_dict(_state_dict_with(torch.arange(1, 17, dtype=torch.uint8)))
    assert not torch.equal(opt.generator.get_state(), states[0][1])   # another state, another seed


class CudaLikeGenerator(torch.Generator):
    """Stands in for a CUDA generator on the CPU: a 16-byte state that refuses any other."""

    device = torch.device('cuda', 0)

    def __init__(self):
        super().__init__()
        self.seeds, self.state = [], torch.zeros(16, dtype=torch.uint8)

    def get_state(self):
        return self.state

    def set_state(self, state):
        if state.numel() != 16:
            raise RuntimeError(f'Expected a CUDA generator state of size 16, got {state.numel()}')
        self.state = state

    def manual_seed(self, seed):
        self.seeds.append(seed)
        return self


def test_a_cpu_generator_state_resumes_on_a_cuda_generator():
    cpu_state = torch.Generator().manual_seed(2020).get_state()          # 5056 bytes
    seed = int.from_bytes(hashlib.sha256(cpu_state.numpy().tobytes()).digest()[:8], 'little')
    gen = CudaLikeGenerator()
    _, opt = _deep_r_with_noise(generator=gen)
    with pytest.warns(UserWarning, match=r"\(5056 bytes\) is not one of this run's cuda:0 generator \(16 bytes\)"):
        opt.load_state_dict(_state_dict_with(cpu_state))
    assert opt.generator is gen and gen.seeds == [seed]
    opt.load_state_dict(_state_dict_with(torch.full((16,), 7, dtype=torch.uint8)))   # its own kind
    assert gen.seeds == [seed] and gen.state.tolist() == [7] * 16


# ---------------------------------------------------------------- engine.checkpoint: CUDA generator states

@pytest.fixture
def one_cuda_device(monkeypatch):
    """torch.cuda as on a machine with one GPU: its generator's state is a 16-byte tensor;
    a device index beyond it fails as torch's does (IndexError from default_generators).
    Returns the list of (device index, state) restored."""
    restored = []
    own = {'state': torch.arange(16, dtype=torch.uint8)}

    def index(device):
        i = device if isinstance(device, int) else torch.device(device).index or 0
        if i >= 1:
            raise IndexError('tuple index out of range')
        return i

    def set_rng_state(state, device='cuda'):
        restored.append((index(device), state))
        own['state'] = state

    def get_rng_state(device='cuda'):
        index(device)
        return own['state'].clone()

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    for module in (torch.cuda, torch.cuda.random):      # the *_all functions call the latter's
        monkeypatch.setattr(module, 'device_count', lambda: 1)
        monkeypatch.setattr(module, 'set_rng_state', set_rng_state)
        monkeypatch.setattr(module, 'get_rng_state', get_rng_state)
    return restored


def test_checkpoint_saves_and_restores_the_run_devices_cuda_generator_only(one_cuda_device, tmp_path):
    states = rng_states()
    assert torch.equal(states['cuda'], torch.arange(16, dtype=torch.uint8))   # one state, not a list
    atomic_save({'rng': states}, tmp_path / 'c.pt')
    set_rng_states(load_checkpoint(tmp_path / 'c.pt')['rng'])
    assert [(i, s.tolist()) for i, s in one_cuda_device] == [(0, list(range(16)))]


def test_checkpoint_with_four_cuda_states_resumes_where_one_gpu_is(one_cuda_device, tmp_path):
    states = rng_states()
    states['cuda'] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]   # written before
    atomic_save({'rng': states}, tmp_path / 'c.pt')
    with pytest.warns(UserWarning, match=r'^the checkpoint holds the CUDA generator states of 4 devices, '
                                         r'1 here: the states of devices 1\.\.3 were not restored$'):
        set_rng_states(load_checkpoint(tmp_path / 'c.pt')['rng'])
    assert [(i, s.tolist()) for i, s in one_cuda_device] == [(0, [0] * 16)]


# ---------------------------------------------------------------- the rank's device, chosen before any check

def test_each_rank_checks_amp_on_its_own_gpu_not_on_gpu_0(monkeypatch, tmp_path):
    """Under torchrun every check that touches CUDA (here --amp's bfloat16 query) runs on
    cuda:LOCAL_RANK, chosen first, so that no rank opens a context on GPU 0."""
    import contextlib

    import engine
    from engine.distributed import Ranks
    from mnist import mnist
    entered = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'device', lambda d: contextlib.nullcontext(entered.append(torch.device(d))))
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: True)
    args = engine.build_parser(mnist.EXPERIMENT).parse_args(
        ['-m', 'grad', '-s', '0.95', '-b', '8', '--amp', '--no-compile', '--dump-dir', str(tmp_path)])
    ranks = Ranks(world_size=2, rank=1, local_rank=1, local_world_size=2, active=True)
    config = engine.resolve(mnist.EXPERIMENT, args, ranks)
    assert config.device == torch.device('cuda', 1) and entered == [torch.device('cuda', 1)]
    assert (config.rank, config.world_size, config.distributed) == (1, 2, True)
