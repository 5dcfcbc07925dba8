"""The compiled optimizer kernels (``compiled=True``) against the eager ones, bit for bit on
the CPU, through pruning, regrowth and (Deep R) reactivation (docs/method.md, "Grad R
update", "Hard Deep R", "Soft Deep R")."""
import pytest
import torch

from deeprewire import DeepRewiring
from gradrewire import GradRewiring


def _trajectory(make, steps=12, seed=0):
    """Weights and optimizer state after ``steps`` random-gradient steps on a float32 tensor
    whose weights start near 0, so that synapses are pruned and come back."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(0.02 * torch.randn(64, 48, generator=gen))
    w.data[0, :4] = 0.0                                # sign-0 synapses too
    opt = make([w])
    for _ in range(steps):
        w.grad = torch.randn(64, 48, generator=gen)
        opt.step()
    return w.detach(), opt.state[w]


@pytest.mark.parametrize('name, make', [
    ('grad_r', lambda c: lambda p: GradRewiring(p, lr=0.002, alpha=0.2, s=0.9, compiled=c)),
    ('grad_r_no_prior', lambda c: lambda p: GradRewiring(p, lr=0.002, alpha=0.0, compiled=c)),
    ('grad_r_amsgrad_wd', lambda c: lambda p: GradRewiring(p, lr=0.002, alpha=0.2, s=0.9, amsgrad=True,
                                                           weight_decay=0.1, compiled=c)),
    ('deep_r', lambda c: lambda p: DeepRewiring(p, lr=0.002, l1=0.5, max_s=0.2, compiled=c)),
    ('deep_r_active', lambda c: lambda p: DeepRewiring(p, lr=0.002, l1=0.5, max_s=0.2, regrowth='active',
                                                       compiled=c)),
    ('soft_deep_r', lambda c: lambda p: DeepRewiring(p, lr=0.002, l1=0.5, max_s=0.9, soft=True, compiled=c)),
])
def test_compiled_equals_eager_bit_for_bit(name, make):
    eager_w, eager_state = _trajectory(make(False))
    compiled_w, compiled_state = _trajectory(make(True))
    assert torch.equal(eager_w, compiled_w), name
    for key, value in eager_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, compiled_state[key]), (name, key)
    pruned = (eager_w == 0).float().mean().item()
    assert 0.05 < pruned < 0.95, (name, pruned)         # the run did prune, and kept some
