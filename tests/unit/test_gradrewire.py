"""Tests of GradRewiring against docs/method.md, "Grad R".

Hand-worked cases use float64 tensors and hyper-parameters that make Adam's direction simple:
- first step with betas (0.9, 0.999) and eps 0: step = lr / (1 - 0.9) = 10 lr,
  m = 0.1 g, den = sqrt(0.001 g^2) / sqrt(0.001) = |g|, so step * adam = lr * sign(g);
- betas (0, 0.75), eps 0 and |g| = 1 on every step: m = g, v_t = 1 - 0.75^t,
  den = sqrt(v_t / (1 - 0.75^t)) = 1, step = lr / (1 - 0^t) = lr, so step * adam = lr * g.
All these numbers are exact binary fractions, so the expected values are exact.
"""

import pytest
import torch

from gradrewire import GradRewiring
from helpers import assert_matches_adam, f64, param, run_and_resume, step_with


def test_first_step_rules_1_to_4():
    # lr 0.1, alpha 0.05, s 0.75 -> mu = ln(2 * 0.25) / 0.05 = -ln 2 / 0.05 = -13.862943611198906
    # step = 0.1 / (1 - 0.9) = 1.0, so the prior term has size step * alpha = 0.05
    w = param([0.3, -0.05, 0.0, 2.0])
    opt = GradRewiring([w], lr=0.1, eps=0.0, alpha=0.05, s=0.75)
    step_with(opt, w, [1.0, -1.0, 1.0, -2.0])
    state = opt.state[w]
    assert state["mu"] == pytest.approx(-13.862943611198906, rel=1e-15)
    assert torch.equal(state["sign"], torch.tensor([1.0, -1.0, 0.0, 1.0], **f64))
    # 1. u = sign * theta            = [0.3, -0.05, 0, 2.0]
    # 2. u -= lr * sign(g)           = [0.3 - 0.1, -0.05 + 0.1, 0 - 0.1, 2.0 + 0.1] = [0.2, 0.05, -0.1, 2.1]
    # 3. theta - mu > 0 everywhere, so u -= 0.05 * sign  -> [0.15, 0.1, -0.1, 2.05]
    # 4. theta = sign * u            = [0.15, -0.1, 0, 2.05]  (the sign-0 synapse stays 0)
    #    w = sign * max(theta, 0)    = [0.15, 0, 0, 2.05]     (synapse 2 pruned: theta < 0)
    torch.testing.assert_close(state["strength"], torch.tensor([0.15, -0.1, 0.0, 2.05], **f64),
                               rtol=0, atol=1e-14)
    torch.testing.assert_close(w.detach(), torch.tensor([0.15, 0.0, 0.0, 2.05], **f64),
                               rtol=0, atol=1e-14)


def test_pruned_synapse_keeps_its_gradient_and_regrows():
    # betas (0, 0.75), eps 0, lr 1, |g| = 1: the gradient term is exactly g each step.
    # alpha 0.25, s 0.75: mu = ln(0.5) / 0.25 = -2.7725887..., prior term size 1 * 0.25.
    # The second synapse mirrors the first with sign -1 (its gradient has the opposite sign).
    w = param([0.5, -0.5])
    opt = GradRewiring([w], lr=1.0, betas=(0.0, 0.75), eps=0.0, alpha=0.25, s=0.75)
    assert opt.defaults["alpha"] == 0.25
    grads = [1.0] * 3 + [-1.0] * 4
    # theta: 0.5 -> (0.5 - 1 - 0.25)  = -0.75   pruned; prior pulls down (theta > mu)
    #        -0.75 - 1 - 0.25         = -2.0    still receives the gradient while pruned
    #        -2.0 - 1 - 0.25          = -3.25   now below mu = -2.77
    #        -3.25 + 1 + 0.25         = -2.0    gradient reverses; prior pushes up (theta < mu)
    #        -2.0 + 1 - 0.25          = -1.25   above mu again: prior pulls down
    #        -1.25 + 1 - 0.25         = -0.5
    #        -0.5 + 1 - 0.25          = 0.25    regrown
    thetas = [-0.75, -2.0, -3.25, -2.0, -1.25, -0.5, 0.25]
    for g, theta in zip(grads, thetas):
        step_with(opt, w, [g, -g])
        assert opt.state[w]["strength"].tolist() == [theta, theta]
        assert w.tolist() == ([max(theta, 0.0), -max(theta, 0.0)])
    assert w.tolist() == [0.25, -0.25]


def test_zero_weight_has_sign_zero_and_stays_zero():
    w = param([0.0, 1.0])
    opt = GradRewiring([w], lr=0.1, alpha=0.5, s=0.9)
    for g in ([5.0, 1.0], [-5.0, -1.0], [-3.0, 2.0]):
        step_with(opt, w, g)
        assert w[0].item() == 0.0 and opt.state[w]["strength"][0].item() == 0.0
    assert opt.state[w]["sign"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("alpha, s", [(0.1, None), (0.1, 0.3), (0.05, 2.0)])
def test_alpha_at_most_eps_disables_prior_and_ignores_s(alpha, s):
    # eps = 0.1 >= alpha: no prior, s unchecked and unused, no 'mu' state.
    # First step, lr 0.1: step = 1.0, adam = 0.1 * g / (|g| + 0.1) = 0.1 / 1.1 for g = 1.
    w = param([0.5, -0.5])
    opt = GradRewiring([w], lr=0.1, eps=0.1, alpha=alpha, s=s)
    step_with(opt, w, [1.0, 1.0])
    assert "mu" not in opt.state[w]
    torch.testing.assert_close(w.detach(), torch.tensor([0.5 - 0.1 / 1.1, -0.5 - 0.1 / 1.1], **f64),
                               rtol=0, atol=1e-14)


def test_weight_decay_is_added_to_the_gradient_of_w():
    # weight_decay 0.5: g = grad + 0.5 * w = [-0.5 + 1.0, 0.0 - 0.5] = [0.5, -0.5];
    # first step with eps 0 moves lr * sign(g) = [0.1, -0.1] downhill: w = [1.9, -0.9].
    w = param([2.0, -1.0])
    opt = GradRewiring([w], lr=0.1, eps=0.0, weight_decay=0.5, alpha=0.0)
    step_with(opt, w, [-0.5, 0.0])
    torch.testing.assert_close(w.detach(), torch.tensor([1.9, -0.9], **f64), rtol=0, atol=1e-14)


def test_amsgrad_uses_the_running_maximum_of_v():
    # betas (0, 0.75), eps 0, lr 1, g = 4 then 1.
    # t=1: v = 0.25 * 16 = 4, den = sqrt(4 / 0.25) = 4, move g / den = 1          -> theta 10 - 1 = 9
    # t=2: v = 0.75 * 4 + 0.25 * 1 = 3.25; amsgrad keeps vmax = 4:
    #      den = sqrt(4) / sqrt(1 - 0.75**2) = 2 / sqrt(0.4375); without amsgrad sqrt(3.25) / sqrt(0.4375)
    expected = {True: 9 - 1 / (2 / 0.4375 ** 0.5), False: 9 - 1 / (3.25 ** 0.5 / 0.4375 ** 0.5)}
    for amsgrad, value in expected.items():
        w = param([10.0])
        opt = GradRewiring([w], lr=1.0, betas=(0.0, 0.75), eps=0.0, amsgrad=amsgrad, alpha=0.0)
        step_with(opt, w, [4.0])
        step_with(opt, w, [1.0])
        assert w.item() == pytest.approx(value, rel=1e-15)
        assert ("max_exp_avg_sq" in opt.state[w]) == amsgrad


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_equals_adam_bit_for_bit_when_nothing_is_pruned(weight_decay, amsgrad):
    # alpha 0: no prior; positive weights far from 0 stay positive, so Grad R is Adam.
    w = assert_matches_adam(lambda p: GradRewiring(p, lr=0.01, weight_decay=weight_decay,
                                                   amsgrad=amsgrad, alpha=0.0), weight_decay, amsgrad)
    assert w.min() > 0


def test_param_groups_have_their_own_alpha_and_s():
    # betas (0, 0.75), eps 0, lr 1, g = 1: gradient term 1 per step.
    # group a: default alpha 0.25, s 0.75 -> mu = -2.77, theta 3 - 1 - 0.25 = 1.75
    # group b: alpha 0.5, s 0.5 -> mu = ln(1) / 0.5 = 0; theta 3 - 1 - 0.5 = 1.5
    # group c: alpha 0 -> no prior; theta 3 - 1 = 2
    a, b, c = param([3.0]), param([3.0]), param([3.0])
    opt = GradRewiring([{"params": [a]}, {"params": [b], "alpha": 0.5, "s": 0.5},
                        {"params": [c], "alpha": 0.0}],
                       lr=1.0, betas=(0.0, 0.75), eps=0.0, alpha=0.25, s=0.75)
    for w in (a, b, c):
        w.grad = torch.tensor([1.0], **f64)
    opt.step()
    assert opt.state[a]["mu"] == pytest.approx(-2.772588722239781, rel=1e-15)
    assert opt.state[b]["mu"] == 0.0 and "mu" not in opt.state[c]
    assert [a.item(), b.item(), c.item()] == [1.75, 1.5, 2.0]
    # group b alone, mu = 0: theta 1.5 -> 1.5 - 1 - 0.5 = 0
    #   -> 0 - 1 = -1 (theta = mu: sign(theta - mu) = 0, no prior term)
    #   -> -1 - 1 + 0.5 = -1.5 (pruned, below mu: the prior pushes theta back up towards 0)
    a.grad = c.grad = None
    for theta in (0.0, -1.0, -1.5):
        step_with(opt, b, [1.0])
        assert opt.state[b]["strength"].item() == theta
    assert a.item() == 1.75 and c.item() == 2.0


def test_param_group_added_later_gets_defaults_and_is_checked():
    opt = GradRewiring([param([1.0])], alpha=0.1, s=0.8)
    w = param([1.0])
    opt.add_param_group({"params": [w], "s": 0.6})
    assert opt.param_groups[1]["alpha"] == 0.1 and opt.param_groups[1]["s"] == 0.6
    with pytest.raises(ValueError, match=r"^s \(target sparsity\) must satisfy 0.5 <= s < 1 when "
                                         r"alpha > eps, got 0.3$"):
        opt.add_param_group({"params": [param([1.0])], "s": 0.3})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-0.1), "lr must satisfy lr >= 0, got -0.1"),
    (dict(eps=-1e-8), "eps must satisfy eps >= 0, got -1e-08"),
    (dict(betas=(1.0, 0.999)),
     "betas must satisfy 0 <= betas[0] < 1 and 0 <= betas[1] < 1, got (1.0, 0.999)"),
    (dict(betas=(0.9, -0.1)),
     "betas must satisfy 0 <= betas[0] < 1 and 0 <= betas[1] < 1, got (0.9, -0.1)"),
    (dict(weight_decay=-1), "weight_decay must satisfy weight_decay >= 0, got -1"),
    (dict(alpha=-1e-3), "alpha must satisfy alpha >= 0, got -0.001"),
    (dict(s=None), "s (target sparsity) must satisfy 0.5 <= s < 1 when alpha > eps, got None"),
    (dict(s=0.3), "s (target sparsity) must satisfy 0.5 <= s < 1 when alpha > eps, got 0.3"),
    (dict(s=1.0), "s (target sparsity) must satisfy 0.5 <= s < 1 when alpha > eps, got 1.0"),
    (dict(s=0.49), "s (target sparsity) must satisfy 0.5 <= s < 1 when alpha > eps, got 0.49"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError) as error:
        GradRewiring([param([1.0])], **{"s": 0.9, **kwargs})
    assert str(error.value) == message


def test_s_at_range_ends():
    GradRewiring([param([1.0])], s=0.5)  # s = 0.5: mu = ln(1) / alpha = 0, allowed
    with pytest.raises(ValueError, match="^s "):
        GradRewiring([param([1.0])], s=1.0)


def test_params_without_grad_are_skipped_and_sparse_grads_raise():
    w, idle = param([1.0, 2.0]), param([3.0])
    opt = GradRewiring([w, idle], s=0.9)
    step_with(opt, w, [1.0, 1.0])
    assert idle.grad is None and len(opt.state[idle]) == 0 and idle.tolist() == [3.0]
    w.grad = torch.tensor([1.0, 0.0], **f64).to_sparse()
    with pytest.raises(RuntimeError, match="dense"):
        opt.step()


def test_step_count_is_stored_like_adam():
    w = param([1.0])
    opt = GradRewiring([w], s=0.9)
    step_with(opt, w, [1.0])
    step_with(opt, w, [1.0])
    count = opt.state[w]["step"]
    assert count.dtype == torch.float32 and count.device.type == "cpu" and count.item() == 2.0


def test_state_dict_round_trip_resumes_bit_identically():
    # Strong prior and a noisy gradient: synapses get pruned and regrow during the run.
    history, resumed, opt2, _ = run_and_resume(
        lambda w, first: GradRewiring([w], lr=0.05, alpha=2.0, s=0.6), 50)
    assert (history[10] == 0).any() and (history[20] == 0).sum() != (history[10] == 0).sum()
    assert opt2.state[opt2.param_groups[0]["params"][0]]["step"].dtype == torch.float32
    assert torch.equal(resumed, history[-1])
