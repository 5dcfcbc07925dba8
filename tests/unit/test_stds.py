"""Tests of stds.py against docs/method.md, "STDS".

Hand-worked cases use float64 weights and widths that are exact binary fractions (0.5,
0.4375, 0.03125, ...), so most expected values are exact and compared with ==.
"""
import io
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from stds import STDSController, SoftThreshold, apply_stds, flat_width

THETA = [-1.5, -0.3, 0.0, 0.2, 0.7, 2.0]


class ReluIdentityGrad(torch.autograd.Function):
    """relu forward, gradient passed unchanged: the release's building block of 'stmod'."""

    @staticmethod
    def forward(ctx, x):
        return torch.relu(x)

    @staticmethod
    def backward(ctx, g):
        return g


def threshold_layer(theta, gradient, d):
    """A bias-free nn.Linear(len(theta), 1) in float64 whose theta row is `theta`,
    reparameterised with SoftThreshold(gradient) at width d."""
    layer = nn.Linear(len(theta), 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([theta], dtype=torch.float64))
    parametrize.register_parametrization(layer, "weight", SoftThreshold(gradient, d))
    return layer


def tiny_net(seed):
    """Conv2d(1->2, 2x2, with bias) -> Flatten -> Linear(8->3, no bias), input [N, 1, 3, 3]."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(8, 3, bias=False))


# --- the mapping and its gradients -------------------------------------------------------

def test_forward_mapping_by_hand():
    # d = 0.5: w = sign(theta) * max(|theta| - 0.5, 0)
    #   -1.5 -> -(1.5 - 0.5) = -1.0
    #   -0.3 -> |-0.3| = 0.3 <= 0.5: pruned, 0
    #    0.0 -> pruned, 0
    #    0.2 -> pruned, 0
    #    0.7 -> 0.7 - 0.5, exact in binary (Sterbenz: 0.5 <= 0.7 <= 1), and since the double
    #           0.7 lies 4.4e-17 below 7/10 the result is the double 0.19999999999999996,
    #           not the double 0.2
    #    2.0 -> 2.0 - 0.5 = 1.5
    layer = threshold_layer(THETA, "stmod", 0.5)
    w = layer.weight
    assert w.tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.19999999999999996, 1.5]]
    assert w[0, 4].item() != 0.2
    assert (w == 0).tolist() == [[False, True, True, True, False, False]]
    # theta itself is untouched: the parameter is `original`
    assert layer.parametrizations.weight.original.tolist() == [THETA]


@pytest.mark.parametrize("gradient, expected", [
    # stmod: dL/dtheta = dL/dw everywhere (also at the three pruned entries)
    ("stmod", [0.5, -1.0, 2.0, -3.0, 4.0, -0.25]),
    # st: dL/dw where |theta| > 0.5, i.e. at -1.5, 0.7, 2.0; 0 at -0.3, 0.0, 0.2
    ("st", [0.5, 0.0, 0.0, 0.0, 4.0, -0.25]),
])
def test_gradient_variants_by_hand(gradient, expected):
    layer = threshold_layer(THETA, gradient, 0.5)
    upstream = torch.tensor([[0.5, -1.0, 2.0, -3.0, 4.0, -0.25]], dtype=torch.float64)
    (layer.weight * upstream).sum().backward()          # dL/dw = upstream
    assert layer.parametrizations.weight.original.grad.tolist() == [expected]
    assert layer.parametrizations.weight[0].d.grad is None


def test_matches_release_formula_bit_for_bit():
    # The release computes sign(x) * relu(|x| - s) with autograd, where 'stmod' replaces
    # relu's derivative by 1. Its gradients are then sign(x)^2 * g ('stmod') and
    # sign(x)^2 * [|x| > s] * g ('st'): ours wherever theta != 0 (at theta == 0 exactly the
    # release's 'stmod' gradient is 0, ours is g; docs/method.md, "STDS gradient").
    gen = torch.Generator().manual_seed(0)
    theta0 = torch.randn(4000, generator=gen) * 0.05
    upstream = torch.randn(4000, generator=gen)
    assert bool((theta0 != 0).all())
    d = torch.tensor(0.0312345, dtype=torch.float32)
    for gradient in ("stmod", "st"):
        theta = theta0.clone().requires_grad_()
        w = SoftThreshold(gradient, float(d))(theta)
        w.backward(upstream)
        ref_theta = theta0.clone().requires_grad_()
        relu = ReluIdentityGrad.apply if gradient == "stmod" else torch.relu
        ref = torch.sign(ref_theta) * relu(ref_theta.abs() - d)
        ref.backward(upstream)
        assert torch.equal(w.detach(), ref.detach())
        assert torch.equal(theta.grad, ref_theta.grad)
        assert 0.3 < float((w == 0).float().mean()) < 0.6
    # theta == 0 exactly: the release's 'stmod' gives sign(0)^2 * g = 0, ours g
    zero = torch.zeros(1, requires_grad=True)
    (torch.sign(zero) * ReluIdentityGrad.apply(zero.abs() - d)).backward(torch.ones(1))
    assert zero.grad.tolist() == [0.0]
    zero.grad = None
    SoftThreshold("stmod", float(d))(zero).backward(torch.ones(1))
    assert zero.grad.tolist() == [1.0]


# --- the schedule ------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, n, n_total, expected", [
    # D = 2. sine: d = (1 + sin(pi * (n/N - 1/2))) / 2 * 2
    ("sine", 0, 10, 0.0),             # sin(-pi/2) = -1 -> 0
    ("sine", 5, 10, 1.0),             # sin(0) = 0 -> 1/2 * 2 = 1
    ("sine", 10, 10, 2.0),            # sin(pi/2) = 1 -> 2/2 * 2 = 2
    # linear: d = n / N * 2
    ("linear", 0, 10, 0.0),
    ("linear", 5, 10, 1.0),
    ("linear", 10, 10, 2.0),
    ("linear", 1, 4, 0.5),            # 1/4 * 2
])
def test_schedule_exact_points(schedule, n, n_total, expected):
    d = flat_width(n, n_total, 2.0, schedule)
    assert type(d) is float and d == expected


def test_sine_schedule_quarter_points():
    # N = 4, D = 2. n = 1: (1 + sin(-pi/4)) / 2 * 2 = 1 - sqrt(2)/2 = 0.29289321881345247...
    #               n = 3: (1 + sin(+pi/4)) / 2 * 2 = 1 + sqrt(2)/2 = 1.70710678118654752...
    assert flat_width(1, 4, 2.0, "sine") == pytest.approx(0.29289321881345248, rel=1e-15)
    assert flat_width(3, 4, 2.0, "sine") == pytest.approx(1.70710678118654752, rel=1e-15)
    # the sine schedule starts slower than the linear one and catches up at the middle
    assert flat_width(1, 4, 2.0, "sine") < flat_width(1, 4, 2.0, "linear") == 0.5


@pytest.mark.parametrize("args, name", [
    ((0, 10, 0.0, "sine"), "D"),
    ((0, 10, -1.0, "sine"), "D"),
    ((0, 10, math.inf, "sine"), "D"),
    ((0, 10, 1.0, "cosine"), "schedule"),
    ((0, 0, 1.0, "sine"), "n_total"),
    ((0, 2.5, 1.0, "sine"), "n_total"),
    ((-1, 10, 1.0, "sine"), "n "),
    ((11, 10, 1.0, "linear"), "n "),
    ((2.5, 10, 1.0, "sine"), "n "),
])
def test_schedule_bad_arguments(args, name):
    with pytest.raises(ValueError, match=f"^{name}") as err:
        flat_width(*args)
    assert "\n" not in str(err.value)


# --- regrowth ------------------------------------------------------------------------------

@pytest.mark.parametrize("gradient", ["stmod", "st"])
def test_pruned_synapse_regrows_under_stmod_only(gradient):
    # One weight, d = 0.5, theta = 0.4375 (pruned). Loss = -w * x with x = 1, so
    # dL/dw = -1 and SGD with lr 1/32 raises theta by 0.03125 per step when the gradient
    # reaches it (stmod): 0.4375 -> 0.46875 -> 0.5 (|theta| = d: still pruned) -> 0.53125,
    # w = 0.53125 - 0.5 = 0.03125. Under st a pruned synapse gets gradient 0 and stays.
    layer = threshold_layer([0.4375], gradient, 0.5)
    theta = layer.parametrizations.weight.original
    opt = torch.optim.SGD(layer.parameters(), lr=0.03125)
    x = torch.ones(1, 1, dtype=torch.float64)
    history = []
    for _ in range(3):
        opt.zero_grad()
        (-layer(x)).sum().backward()
        opt.step()
        history.append((theta.item(), layer.weight.item()))
    if gradient == "stmod":
        assert history == [(0.46875, 0.0), (0.5, 0.0), (0.53125, 0.03125)]
    else:
        assert history == [(0.4375, 0.0)] * 3


# --- parametrize integration ---------------------------------------------------------------

def test_apply_stds_registers_every_layer_and_starts_unchanged():
    net = tiny_net(0)
    x = torch.randn(5, 1, 3, 3)
    before = net(x)
    weights = [net[0].weight, net[2].weight]
    ctrl = apply_stds(net, D=0.1, n_total=4)
    assert isinstance(ctrl, STDSController) and list(ctrl.layers) == ["0", "2"]
    assert all(parametrize.is_parametrized(net[i], "weight") for i in (0, 2))
    assert not parametrize.is_parametrized(net[0], "bias")
    # theta is the old weight Parameter itself; at n = 0, d = 0 and w = theta exactly
    assert all(net[i].parametrizations.weight.original is w for i, w in zip((0, 2), weights))
    assert ctrl.n == 0 and ctrl.d == 0.0
    assert torch.equal(net(x), before)
    assert isinstance(net[2], nn.Linear) and isinstance(net[0], nn.Conv2d)


def test_weight_is_mapping_of_original_and_state_dict_round_trip():
    net = tiny_net(0)
    ctrl = apply_stds(net, D=0.2, n_total=4, schedule="linear")
    ctrl.step()
    ctrl.step()                                      # d = 2/4 * 0.2 = 0.1
    assert ctrl.d == 0.1
    for i in (0, 2):
        theta = net[i].parametrizations.weight.original
        d32 = torch.tensor(0.1, dtype=torch.float32)
        assert torch.equal(net[i].weight, torch.sign(theta) * torch.relu(theta.abs() - d32))
    assert ctrl.sparsity() > 0
    keys = set(net.state_dict())
    assert keys == {"0.bias", "0.parametrizations.weight.original", "0.parametrizations.weight.0.d",
                    "2.parametrizations.weight.original", "2.parametrizations.weight.0.d"}
    assert net.state_dict()["2.parametrizations.weight.0.d"].dtype == torch.float32
    assert net.state_dict()["2.parametrizations.weight.0.d"].item() == pytest.approx(0.1, rel=1e-7)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "stds": ctrl.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = tiny_net(1)
    fresh_ctrl = apply_stds(fresh, D=0.2, n_total=4, schedule="linear")
    fresh.load_state_dict(saved["model"])
    fresh_ctrl.load_state_dict(saved["stds"])
    x = torch.randn(5, 1, 3, 3)
    assert torch.equal(fresh(x), net(x))
    assert fresh_ctrl.n == 2 and fresh_ctrl.d == ctrl.d
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


def test_sparsity_counts_zero_effective_weights():
    # THETA at d = 0.5 (linear schedule, D = 1, n = 1 of 2): 3 of 6 weights are 0
    layer = nn.Linear(6, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([THETA], dtype=torch.float64))
    ctrl = apply_stds(layer, D=1.0, n_total=2, schedule="linear")
    assert ctrl.sparsity() == 1 / 6                    # at d = 0 only theta = 0.0 gives w = 0
    assert ctrl.step() == 0.5
    assert ctrl.sparsity() == 0.5
    assert list(ctrl.weights()) == ["weight"]         # the model itself is the layer
    assert ctrl.weights()["weight"].tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.19999999999999996, 1.5]]


def test_double_registration_and_bad_arguments_raise():
    net = tiny_net(0)
    for kwargs, name in [(dict(D=0.0), "D"), (dict(D=-1.0), "D"), (dict(n_total=0), "n_total"),
                         (dict(gradient="ste"), "gradient"), (dict(schedule="cos"), "schedule"),
                         (dict(layer_types=(nn.BatchNorm2d,)), "model"),
                         (dict(layer_types=nn.Linear), "layer_types")]:
        args = dict(D=1.0, n_total=10) | kwargs
        with pytest.raises(ValueError, match=f"^{name}") as err:
            apply_stds(net, **args)
        assert "\n" not in str(err.value)
    assert not any(parametrize.is_parametrized(m) for m in net.modules())   # refusals register nothing
    apply_stds(net, D=1.0, n_total=10)
    with pytest.raises(ValueError, match="^model: 0.weight is already parametrized"):
        apply_stds(net, D=1.0, n_total=10)
    assert len(net[0].parametrizations.weight) == 1
    with pytest.raises(ValueError, match="^gradient"):
        SoftThreshold("identity")
    with pytest.raises(ValueError, match="^model must be an nn.Module"):
        apply_stds(lambda x: x, D=1.0, n_total=10)
    shared = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    shared[1].weight = shared[0].weight
    with pytest.raises(ValueError, match="^model: 1.weight is the same tensor as 0.weight"):
        apply_stds(shared, D=1.0, n_total=10)
    same_layer_twice = nn.Sequential(shared[0], shared[0])    # one module, one registration
    assert list(apply_stds(same_layer_twice, D=1.0, n_total=10).layers) == ["0"]


# --- the controller --------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["sine", "linear"])
def test_controller_steps_follow_the_schedule_and_clamp(schedule):
    net = tiny_net(0)
    ctrl = apply_stds(net, D=0.3, n_total=5, schedule=schedule)
    for k in range(1, 9):
        d = ctrl.step()
        expected = flat_width(min(k, 5), 5, 0.3, schedule)   # past n_total: d stays D
        assert ctrl.n == k and d == ctrl.d == expected
        for p in ctrl.parametrizations():
            assert p.d.item() == torch.tensor(expected, dtype=torch.float32).item()
    assert ctrl.d == 0.3


def test_controller_resume_bit_exact_training():
    # 6 Adam steps straight vs 3 steps, save, rebuild everything from other seeds, load, 3 more.
    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 1, 3, 3, generator=gen), torch.randn(4, 3, generator=gen)) for _ in range(6)]

    def build(seed):
        net = tiny_net(seed)
        ctrl = apply_stds(net, D=0.4, n_total=6)
        return net, ctrl, torch.optim.Adam(net.parameters(), lr=0.05)

    def train(net, ctrl, opt, steps):
        ds = []
        for x, y in steps:
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
            ds.append(ctrl.step())
        return ds

    net, ctrl, opt = build(0)
    straight = train(net, ctrl, opt, batches)
    net_a, ctrl_a, opt_a = build(0)
    first = train(net_a, ctrl_a, opt_a, batches[:3])
    buffer = io.BytesIO()
    torch.save({"model": net_a.state_dict(), "opt": opt_a.state_dict(), "stds": ctrl_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net_b, ctrl_b, opt_b = build(7)
    ctrl_b.load_state_dict(saved["stds"])
    net_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    rest = train(net_b, ctrl_b, opt_b, batches[3:])
    assert first + rest == straight
    assert all(torch.equal(a, b) for a, b in zip(net_b.state_dict().values(), net.state_dict().values()))
    assert 0 < ctrl.sparsity() < 1


def test_load_keeps_the_started_schedule_and_refuses_other_methods():
    net = tiny_net(0)
    ctrl = apply_stds(net, D=1.0, n_total=4, schedule="linear")
    for _ in range(4):
        ctrl.step()
    state = ctrl.state_dict()
    assert state == {"n": 4, "n_total": 4, "D": 1.0, "schedule": "linear", "gradient": "stmod"}
    # raising -N on resume: the controller is made with a larger n_total, the state's wins,
    # and the added steps run at d = D
    longer = apply_stds(tiny_net(0), D=1.0, n_total=8, schedule="linear")
    longer.load_state_dict(state)
    assert longer.n_total == 4 and longer.d == 1.0
    assert longer.step() == 1.0 and longer.n == 5
    for key, value in [("D", 2.0), ("schedule", "sine"), ("gradient", "st")]:
        with pytest.raises(ValueError, match=f"^STDS state's {key} "):
            longer.load_state_dict(state | {key: value})
    with pytest.raises(ValueError, match="^STDS state's n "):
        longer.load_state_dict(state | {"n": -1})
    with pytest.raises(ValueError, match="^n_total"):
        longer.load_state_dict(state | {"n_total": 0})
    with pytest.raises(ValueError, match="^STDS state "):
        longer.load_state_dict({"n": 1})
    assert longer.n == 5                               # a refused load changes nothing


def test_compiled_forward_does_not_recompile_when_d_changes():
    # d is a tensor buffer: torch.compile traces it as an input, not as a constant.
    # The 'aot_eager' backend runs dynamo and AOTAutograd (the custom Function included)
    # without a C++ compiler.
    import torch._dynamo
    torch._dynamo.reset()
    net, ref = tiny_net(0), tiny_net(0)
    ctrl, ref_ctrl = apply_stds(net, D=0.5, n_total=2), apply_stds(ref, D=0.5, n_total=2, gradient="stmod")
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(4, 1, 3, 3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            out, ref_out = compiled(x), ref(x)
            out.sum().backward()
            ref_out.sum().backward()
            assert torch.equal(out, ref_out)
            for a, b in zip(net.parameters(), ref.parameters()):
                assert torch.equal(a.grad, b.grad)
            ctrl.step()
            ref_ctrl.step()
    assert ctrl.d == 0.5
