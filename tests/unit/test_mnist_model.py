"""The MNIST SNN: multi-step fast path == step-by-step loop (outputs and gradients)."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, neuron

from mnist.model import MNISTSNN


def _run(model, x, target):
    rate = model(x)
    loss = F.mse_loss(rate, target)
    loss.backward()
    functional.reset_net(model)
    return rate.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('T', [1, 4, 8])
def test_multi_step_equals_step_by_step(T):
    torch.manual_seed(0)
    fast = MNISTSNN(T=T, multi_step=True)
    loop = MNISTSNN(T=T, multi_step=False)
    with torch.no_grad():
        fast.fc[1].weight.mul_(8)       # so that the output layer fires too
    loop.load_state_dict(fast.state_dict())
    # Input scaled so that hidden and output neurons fire for some but not all steps.
    x = torch.randn(16, 1, 28, 28) * 3
    target = F.one_hot(torch.arange(16) % 10, 10).float()
    spikes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=n: spikes.setdefault(name, []).append(o.sum()))
             for n, m in fast.named_modules() if isinstance(m, neuron.LIFNode)]
    rate_fast, grad_fast = _run(fast, x, target)
    for h in hooks:
        h.remove()
    rate_loop, grad_loop = _run(loop, x, target)
    # Both LIF layers spike, and the outputs are not all saturated: the test can fail.
    assert all(sum(v) > 0 for v in spikes.values()) and len(spikes) == 2
    assert 0 < rate_fast.mean() < 1
    assert rate_fast.shape == (16, 10)
    assert torch.allclose(rate_fast, rate_loop, atol=1e-6, rtol=0)
    for name in grad_fast:
        assert grad_fast[name].abs().sum() > 0, name
        assert torch.allclose(grad_fast[name], grad_loop[name], atol=1e-6, rtol=0), name


def test_eval_mode_and_reset():
    torch.manual_seed(1)
    fast, loop = MNISTSNN(T=8), MNISTSNN(T=8, multi_step=False)
    with torch.no_grad():
        fast.fc[1].weight.mul_(8)
    loop.load_state_dict(fast.state_dict())
    fast.eval(), loop.eval()
    x = torch.randn(4, 1, 28, 28) * 3
    with torch.no_grad():
        a = fast(x)
        functional.reset_net(fast)
        b = fast(x)                     # after reset_net the same input gives the same rates
        c = loop(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-6, rtol=0)
    # Rates are spike counts / T: multiples of 1/8.
    assert torch.allclose(a * 8, (a * 8).round(), atol=1e-6)


def test_structure():
    model = MNISTSNN()
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {
        'static_fc.1.weight': (800, 784), 'fc.1.weight': (10, 800)}
    with pytest.raises(ValueError, match='T'):
        MNISTSNN(T=0)
