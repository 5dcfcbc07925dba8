"""Tests of DeepRewiring against docs/method.md, "Deep R".

Hand-worked cases use float64 tensors, lr 1 (or 0.25) and betas (0, 0): then m = g, v = g^2,
step = lr, den = |g| + eps and step * adam = lr * g / (|g| + eps); with eps 0 and g != 0 that
is lr * sign(g), and with g = 0 (eps > 0) it is exactly 0. The gradient-free cases move the
synapses with the L1 pull alone, and max_s = 0 makes the reactivation probability
(c - 0) / c = 1, so every dormant synapse is reactivated without depending on the draws.
"""

import sys

import pytest
import torch

import deeprewire
from deeprewire import DeepRewiring
from helpers import REPO, assert_matches_adam, f64, param, run_and_resume, step_with


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), torch.tensor(expected, **f64), rtol=0, atol=1e-15)


def test_hard_steps_1_2_4_5_sign_flip_makes_synapse_dormant():
    w = param([0.5, -0.5, 0.2, 0.0])
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=0.0, l1=0.25, max_s=1.0)
    step_with(opt, w, [1.0, -1.0, -1.0, 1.0])
    state = opt.state[w]
    assert state["sign"].tolist() == [1.0, -1.0, 1.0, 0.0] and state["numel"] == 4
    # active = [1, 1, 1, 0] (the zero weight starts dormant)
    # 1. w - sign(g) * active        = [0.5 - 1, -0.5 + 1, 0.2 + 1, 0] = [-0.5, 0.5, 1.2, 0]
    # 2. w - 0.25 * sign * active    = [-0.75, 0.75, 0.95, 0]
    # 4. sign * max(sign * w, 0)     = [0, 0, 0.95, 0]   (the first two flipped sign: dormant)
    # 5. active = [0, 0, 1, 0], c = 3/4 <= max_s = 1: no reactivation
    close(w, [0.0, 0.0, 0.95, 0.0])
    assert state["active"].tolist() == [0.0, 0.0, 1.0, 0.0]
    # A gradient that would bring the dormant synapses back does nothing to them:
    # w3: 0.95 - 1 - 0.25 = -0.3 -> dormant as well.
    step_with(opt, w, [-1.0, 1.0, 1.0, 1.0])
    assert w.tolist() == [0.0, 0.0, 0.0, 0.0] and state["active"].tolist() == [0.0] * 4


def test_hard_step_3_noise_scaled_by_T_sqrt_step_on_active_synapses():
    # lr 0.25: step = 0.25, gradient term 0.25 * sign(g), L1 pull 0.25 * 0.5 = 0.125,
    # noise T * sqrt(step) * z = 0.5 * 0.5 * z.
    w = param([1.0, -1.0, 0.0, 2.0])
    opt = DeepRewiring([w], lr=0.25, betas=(0.0, 0.0), eps=0.0, l1=0.5, T=0.5, max_s=1.0, seed=11)
    step_with(opt, w, [1.0, 1.0, 1.0, -1.0])
    z = torch.randn(4, generator=torch.Generator().manual_seed(11), **f64)  # the documented draw
    expected = torch.tensor([1.0 - 0.25 - 0.125, -1.0 - 0.25 + 0.125, 0.0, 2.0 + 0.25 - 0.125], **f64) \
        + 0.25 * z * torch.tensor([1.0, 1.0, 0.0, 1.0], **f64)  # the sign-0 synapse is not active
    assert expected[0] > 0 > expected[1] and expected[3] > 0  # no sign flip with this seed
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-15)


def test_T_zero_draws_no_noise():
    gen = torch.Generator().manual_seed(4)
    before = gen.get_state()
    w = param([1.0, -1.0])
    opt = DeepRewiring([w], lr=0.1, T=0, max_s=1.0, generator=gen)
    for _ in range(3):
        step_with(opt, w, [1.0, -1.0])
    assert opt.generator is gen and torch.equal(gen.get_state(), before)


def test_no_reactivation_and_no_draw_when_sparsity_equals_max_s():
    # 0.5 - 1 < 0: dormant; 2 - 1 = 1: c = 1/2 = max_s, not above it.
    w = param([0.5, 2.0])
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=1e-3, l1=1.0, max_s=0.5)
    before = opt.generator.get_state()
    step_with(opt, w, [0.0, 0.0])
    assert w.tolist() == [0.0, 1.0] and torch.equal(opt.generator.get_state(), before)


def test_released_regrowth_sets_plus_eps_inactive_then_zeroes_it():
    # No gradient (adam = 0), L1 pull 1 per step, max_s = 0 -> reactivation probability 1.
    eps = 1e-3
    w = param([0.5, -0.5, 2.0, 3.0])
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=eps, l1=1.0, max_s=0.0)
    step_with(opt, w, [0.0] * 4)
    # 2. w - sign = [-0.5, 0.5, 1, 2]; 4. -> [0, 0, 1, 2]; 5. c = 2/4 = 0.5 > 0
    # 6. p = (0.5 - 0) / 0.5 = 1: both dormant synapses get +eps (also the negative one),
    #    but active is not recomputed.
    assert w.tolist() == [eps, eps, 1.0, 2.0]
    assert opt.state[w]["active"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert (w.abs() >= 1e-10).sum().item() == 4  # counted as linked until the next step
    # Next step, without L1 or reactivation, and a gradient pushing them along their signs:
    # they get no gradient and step 4 zeroes them.
    opt.param_groups[0].update(l1=0.0, max_s=1.0)
    step_with(opt, w, [-1.0, 1.0, 0.0, 0.0])
    assert w.tolist() == [0.0, 0.0, 1.0, 2.0]


def test_released_regrowth_never_regrows():
    w = param([0.5, -0.5, 2.0, 3.0])
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=1e-3, l1=1.0, max_s=0.0)
    step_with(opt, w, [0.0] * 4)
    opt.param_groups[0]["l1"] = 0.0
    for _ in range(5):  # reactivated every step, zeroed every next step, never trained
        step_with(opt, w, [-1.0, 1.0, 0.0, 0.0])
        assert w.tolist() == [1e-3, 1e-3, 1.0, 2.0]
        assert opt.state[w]["active"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_active_regrowth_sets_sign_eps_and_trains_it():
    eps = 1e-3
    w = param([0.5, -0.5, 2.0, 3.0])
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=eps, l1=1.0, max_s=0.0, regrowth="active")
    step_with(opt, w, [0.0] * 4)
    # as in the released case, but reactivated to sign * eps and active recomputed
    assert w.tolist() == [eps, -eps, 1.0, 2.0]
    assert opt.state[w]["active"].tolist() == [1.0] * 4
    opt.param_groups[0].update(l1=0.0, max_s=1.0)
    step_with(opt, w, [-1.0, 1.0, 0.0, 0.0])
    # trained: step * adam = 1 * g / (|g| + eps) = -+1 / (1 + eps)
    close(w, [eps + 1 / (1 + eps), -eps - 1 / (1 + eps), 1.0, 2.0])


def test_reactivation_probability_per_dormant_synapse():
    # 5000 synapses go dormant (0.5 - 1 < 0), 5000 stay: c = 0.5, max_s = 0.2,
    # p = (0.5 - 0.2) / 0.5 = 0.6: about numel * (c - max_s) = 3000 reactivated.
    n = 10000
    w = torch.nn.Parameter(torch.cat([torch.full((n // 2,), 0.5), torch.full((n // 2,), 3.0)]))
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=1e-3, l1=1.0, max_s=0.2, seed=21)
    w.grad = torch.zeros(n)
    opt.step()
    revived = w[: n // 2] != 0
    assert abs(revived.sum().item() - 3000) < 200  # binomial std = sqrt(5000 * 0.6 * 0.4) = 35
    draw = torch.rand(n, generator=torch.Generator().manual_seed(21))  # one draw per element
    assert torch.equal(revived, draw[: n // 2] < 0.6)
    assert (w[n // 2:] == 2.0).all()


def test_soft_mode_theta_min_with_noise_lets_synapses_return():
    # T 0.5, max_s 0.5, l1 4: theta_min = -(0.5 * 0.25 * 0.5) / (4 * 0.5) = -0.03125.
    # lr 1, no gradient: each step theta -= 4 while active, theta += 0.5 * sign * z always.
    w = param([0.5, -0.5, 6.0, -6.0])
    opt = DeepRewiring([w], lr=1.0, betas=(0.0, 0.0), eps=1e-3, l1=4.0, T=0.5, max_s=0.5,
                       soft=True, seed=2)
    z = torch.randn(8, generator=torch.Generator().manual_seed(2), **f64)
    step_with(opt, w, [0.0] * 4)
    state = opt.state[w]
    assert state["theta_min"] == -0.03125 and "numel" not in state
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], **f64)
    # step 1: theta = |w| - 4 + 0.5 * sign * z: 0.5 - 4 + ... is clamped at theta_min
    noise_kept = torch.tensor([0.0, 0.0, 0.5, 0.5], **f64) * sign * z[:4]  # clamped ones lose it
    theta = torch.tensor([-0.03125, -0.03125, 2.0, 2.0], **f64) + noise_kept
    torch.testing.assert_close(state["strength"], theta, rtol=0, atol=1e-15)
    torch.testing.assert_close(w.detach(), sign * theta.clamp(min=0), rtol=0, atol=1e-15)
    assert state["active"].tolist() == [0.0, 0.0, 1.0, 1.0]
    # step 2: the dormant ones only get noise: theta = max(-0.03125 + 0.5 * sign * z, theta_min)
    step_with(opt, w, [0.0] * 4)
    theta = (-0.03125 + 0.5 * sign[:2] * z[4:6]).clamp(min=-0.03125)
    torch.testing.assert_close(state["strength"][:2], theta, rtol=0, atol=1e-15)
    assert (theta > 0).any()  # with this seed, a soft-pruned synapse returns
    torch.testing.assert_close(w.detach()[:2], sign[:2] * theta.clamp(min=0), rtol=0, atol=1e-15)


@pytest.mark.parametrize("max_s, theta_after", [(0.5, 0.0), (1.0, -0.5)])
def test_soft_mode_T_zero_never_returns(max_s, theta_after):
    # lr 0.25, l1 4: L1 pull step * l1 = 1, so theta = 0.5 - 1 = -0.5 after the first step.
    # T = 0: theta_min = -(0.5 * 0 * max_s) / ... = 0, so theta stops at 0; with max_s = 1 there
    # is no theta_min and theta stays at -0.5. Either way no noise: never returns.
    w = param([0.5, -0.5])
    opt = DeepRewiring([w], lr=0.25, betas=(0.0, 0.0), eps=1e-3, l1=4.0, max_s=max_s, soft=True)
    step_with(opt, w, [0.0, 0.0])
    assert ("theta_min" in opt.state[w]) == (max_s < 1)
    assert opt.state[w].get("theta_min", 0.0) == 0.0
    for _ in range(4):  # gradient pushing them back: not applied while inactive
        assert w.tolist() == [0.0, 0.0] and opt.state[w]["strength"].tolist() == [theta_after] * 2
        step_with(opt, w, [-1.0, 1.0])


def test_T_zero_soft_ignores_max_s_and_equals_hard_until_hard_reaches_max_s():
    # README, "Soft Deep R ignores -s here": with T = 0 the soft floor theta_min is 0 for every
    # max_s < 1 and no synapse returns, so soft runs that differ only in max_s give the same
    # weights at every step, and these equal hard Deep R's bit for bit while hard Deep R's
    # sparsity stays at most its max_s. A hard run capped below that sparsity regrows and differs.
    gen = torch.Generator().manual_seed(5)
    w0 = 0.05 * torch.randn(256, generator=gen, **f64)
    grads = [torch.randn(256, generator=gen, **f64) for _ in range(30)]

    def run(soft, max_s):
        w = torch.nn.Parameter(w0.clone())
        opt = DeepRewiring([w], lr=1e-3, l1=0.5, T=0, max_s=max_s, soft=soft)
        weights = []
        for g in grads:
            w.grad = g.clone()
            opt.step()
            weights.append(w.detach().clone())
        return weights

    hard = run(False, 0.99)
    sparsity = [(h == 0).double().mean().item() for h in hard]
    assert sparsity[0] < 0.2 < sparsity[-1] < 0.99   # 0.08 -> 0.41: pruning, the 0.99 cap never reached
    for max_s in (0.2, 0.3, 0.9, 0.99):
        soft = run(True, max_s)
        assert all(torch.equal(a, b) for a, b in zip(soft, hard)), max_s
    capped = run(False, 0.2)
    first = next(i for i, c in enumerate(sparsity) if c > 0.2)
    assert all(torch.equal(a, b) for a, b in zip(capped[:first], hard[:first]))
    assert not torch.equal(capped[first], hard[first])   # regrown at once (step 5 here)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weight_decay, amsgrad", [(0.0, False), (0.01, False), (0.0, True), (0.01, True)])
def test_equals_adam_bit_for_bit_when_nothing_is_pruned(soft, weight_decay, amsgrad):
    assert_matches_adam(lambda p: DeepRewiring(p, lr=0.01, weight_decay=weight_decay, amsgrad=amsgrad,
                                               l1=0.0, max_s=1.0, soft=soft), weight_decay, amsgrad)


def test_param_groups_have_their_own_settings():
    a, b = param([0.5, 2.0]), param([0.5, 2.0])
    opt = DeepRewiring([{"params": [a]}, {"params": [b], "l1": 0.25, "regrowth": "active"}],
                       lr=1.0, betas=(0.0, 0.0), eps=1e-3, l1=1.0, max_s=0.0)
    assert opt.param_groups[1]["max_s"] == 0.0 and opt.param_groups[0]["regrowth"] == "released"
    a.grad, b.grad = torch.zeros(2, **f64), torch.zeros(2, **f64)
    opt.step()
    assert a.tolist() == [1e-3, 1.0]  # 0.5 - 1 < 0: dormant, released +eps; 2 - 1 = 1
    assert b.tolist() == [0.25, 1.75]  # l1 0.25: nothing dormant


def _run(opt_kwargs, steps=6, n=20, **gen_kwargs):
    data = torch.Generator().manual_seed(8)
    w = torch.nn.Parameter(torch.randn(n, generator=data))
    opt = DeepRewiring([w], lr=0.05, T=0.1, l1=0.01, max_s=0.1, **opt_kwargs, **gen_kwargs)
    for _ in range(steps):
        w.grad = torch.randn(n, generator=data)
        opt.step()
    return w.detach()


def test_seeded_generator_reproducibility():
    assert torch.equal(_run({}, seed=5), _run({}, seed=5))
    assert not torch.equal(_run({}, seed=5), _run({}, seed=6))
    assert torch.equal(_run({}, seed=5), _run({}, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(_run({}, seed=0), _run({}))  # default seed 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_with_cpu_generator_draws_as_cpu_run_with_sparse_draws(monkeypatch):
    # docs/method.md, "Randomness": a CPU generator with CUDA weights draws the reactivations
    # as gaps; a CPU run made to take that path draws the same numbers (the noise as well).
    runs = []
    for device in ("cuda", "cpu"):
        if device == "cpu":
            monkeypatch.setattr(deeprewire, "_same_device", lambda a, b: False)
        data = torch.Generator().manual_seed(8)
        w = torch.nn.Parameter(torch.randn(200, generator=data, **f64).to(device))
        opt = DeepRewiring([w], lr=0.05, T=0.1, l1=0.01, max_s=0.1, seed=3)
        for _ in range(10):
            w.grad = torch.randn(200, generator=data, **f64).to(device)
            opt.step()
        runs.append(w.detach().cpu())
    assert (runs[1] == 1e-8).any()  # reactivated on the last step (+eps): the gaps were drawn
    assert torch.equal(runs[0] != 0, runs[1] != 0)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(), dict(regrowth="active"), dict(soft=True)])
def test_state_dict_round_trip_resumes_bit_identically(kwargs):
    def make(w, first):    # the resumed optimizer's seed is replaced by the loaded generator state
        return DeepRewiring([w], lr=0.05, T=0.1, l1=0.05, max_s=0.1, seed=1 if first else 999, **kwargs)

    history, resumed, _, saved = run_and_resume(make, 100)
    if not kwargs.get("soft"):  # reactivation happened: some zero synapse became nonzero
        assert any(((new != 0) & (old == 0)).any() for old, new in zip(history[10:], history[11:]))
    assert set(saved) == {"state", "param_groups", "generator"}
    assert torch.equal(resumed, history[-1])


def test_load_state_dict_needs_the_generator_state():
    w = param([1.0])
    opt = DeepRewiring([w], max_s=0.5)
    state_dict = opt.state_dict()
    del state_dict["generator"]
    with pytest.raises(ValueError, match=r"^state_dict needs a 'generator' entry \(the random generator's state\), "
                                         r"got keys \['param_groups', 'state'\]$"):
        opt.load_state_dict(state_dict)


@pytest.mark.parametrize("kwargs, message", [
    (dict(T=-1), "T (temperature) must satisfy T >= 0, got -1"),
    (dict(l1=-0.1), "l1 must satisfy l1 >= 0, got -0.1"),
    (dict(max_s=None), "max_s (maximal sparsity) must satisfy 0 <= max_s <= 1, got None"),
    (dict(max_s=1.5), "max_s (maximal sparsity) must satisfy 0 <= max_s <= 1, got 1.5"),
    (dict(max_s=-0.1), "max_s (maximal sparsity) must satisfy 0 <= max_s <= 1, got -0.1"),
    (dict(soft=1), "soft must satisfy soft is a bool, got 1"),
    (dict(regrowth="bellec"), "regrowth must satisfy regrowth in ('released', 'active'), got 'bellec'"),
    (dict(generator=3), "generator must satisfy a torch.Generator or None, got 3"),
    (dict(lr=-1.0), "lr must satisfy lr >= 0, got -1.0"),
    (dict(betas=(0.9, 1.0)), "betas must satisfy 0 <= betas[0] < 1 and 0 <= betas[1] < 1, got (0.9, 1.0)"),
    (dict(eps=-1.0), "eps must satisfy eps >= 0, got -1.0"),
    (dict(weight_decay=-0.5), "weight_decay must satisfy weight_decay >= 0, got -0.5"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError) as error:
        DeepRewiring([param([1.0])], **{"max_s": 0.5, **kwargs})
    assert str(error.value) == message


def test_bad_param_group_added_later_is_rejected():
    opt = DeepRewiring([param([1.0])], max_s=0.5)
    with pytest.raises(ValueError, match=r"^max_s \(maximal sparsity\) must satisfy "
                                         r"0 <= max_s <= 1, got 2$"):
        opt.add_param_group({"params": [param([1.0])], "max_s": 2})
    assert len(opt.param_groups) == 1


def test_params_without_grad_are_skipped_and_sparse_grads_raise():
    w, idle = param([1.0, 2.0]), param([3.0])
    opt = DeepRewiring([w, idle], max_s=0.5)
    step_with(opt, w, [1.0, 1.0])
    assert len(opt.state[idle]) == 0 and idle.tolist() == [3.0]
    w.grad = torch.tensor([1.0, 0.0], **f64).to_sparse()
    with pytest.raises(RuntimeError, match="dense"):
        opt.step()


def test_trained_connectivity_counts_placeholders_apart(tmp_path, capsys):
    # benchmarks/trained_connectivity.py on a hand-made checkpoint: linked = |w| >= 1e-10,
    # trained = linked and active, placeholders = linked and not active (the +eps of regrowth).
    sys.path.insert(0, str(REPO / "benchmarks"))
    import trained_connectivity

    ckpt = {"epoch": 7,
            "model": {"a": torch.tensor([[0.5, 1e-8], [0.0, -0.2]]), "a_bias": torch.zeros(2),
                      "b": torch.tensor([[0.3, 1e-8, 0.0], [0.0, 0.0, 0.0]])},
            "optimizers": {"synapse": {"param_groups": [{"params": [0, 1]}],
                                       "state": {0: {"active": torch.tensor([[1.0, 0.0], [0.0, 1.0]])},
                                                 1: {"active": torch.zeros(2, 3).index_fill_(1, torch.tensor([0]), 1.0)}}}}}
    # b's active mask [[1, 0, 0], [1, 0, 0]]: its second 1 sits on a zero weight (not linked).
    path = tmp_path / "checkpoint.pt"
    torch.save(ckpt, path)
    assert trained_connectivity.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{path} (epoch 7)",
                     "a: 4 synapses, linked 75.00%, trained 50.00%, placeholders 25.00%",
                     "b: 6 synapses, linked 33.33%, trained 16.67%, placeholders 16.67%",
                     "all synapses: 10 synapses, linked 50.00%, trained 30.00%, placeholders 20.00%"]
    del ckpt["optimizers"]["synapse"]["state"][0]["active"], ckpt["optimizers"]["synapse"]["state"][1]["active"]
    torch.save(ckpt, path)
    assert trained_connectivity.main([str(path)]) == 2
    assert trained_connectivity.main([str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "no Deep R optimizer state" in err[0] and "give one checkpoint file" in err[1]

    # Two synapse tensors of one shape (as CIFAR-10's 256x256x3x3 convolutions): told apart by
    # the optimizer's parameter order, not by shape.
    twins = {"epoch": 3, "model": {"c": torch.tensor([[0.1, 0.2]]), "d": torch.tensor([[0.3, 1e-8]])},
             "optimizers": {"synapse": {"param_groups": [{"params": [0, 1]}],
                                        "state": {0: {"active": torch.tensor([[1.0, 1.0]])},
                                                  1: {"active": torch.tensor([[1.0, 0.0]])}}}}}
    torch.save(twins, path)
    assert trained_connectivity.main([str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "c: 2 synapses, linked 100.00%, trained 100.00%, placeholders 0.00%",
        "d: 2 synapses, linked 100.00%, trained 50.00%, placeholders 50.00%",
        "all synapses: 4 synapses, linked 100.00%, trained 75.00%, placeholders 25.00%"]


def test_trained_connectivity_estimates_placeholders_from_a_runs_regrowth_count(tmp_path, capsys):
    # From logs, per epoch: P = regrown * (n - linked) / (n - linked - pruned); tensor a: n 1000,
    # linked 300, pruned 140, regrown 136 / 144 / 140 at epochs 7 / 8 / 9 -> P = 170 / 180 / 175,
    # trained 130 / 120 / 125. The line through them (mean 125, slope -2.5) reads 122.5 at epoch
    # 9: trained 12.25%, placeholders 17.75%. Tensor b regrew nothing: exact, no placeholders.
    sys.path.insert(0, str(REPO / "benchmarks"))
    import json
    import trained_connectivity

    run = tmp_path / "run"
    run.mkdir()
    info = {"method": "deep", "flags": {"soft": False, "deepr_regrowth": "released"},
            "synapse_counts": {"a": 1000, "b": 100}}
    (run / "run.json").write_text(json.dumps(info))
    lines = [{"epoch": 6}]
    for epoch, regrown in ((7, 136), (8, 144), (9, 140)):
        lines.append({"epoch": epoch, "layer_sparsity": {"a": 0.7, "b": 0.5},
                      "prune_regrow": {"a": {"pruned": 140, "regrown": regrown}, "b": {"pruned": 3, "regrown": 0}}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert trained_connectivity.main([str(run)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{run} (epoch 9; estimated from the regrowth counts of the last epochs)",
        "a: 1000 synapses, linked 30.00%, trained 12.25%, placeholders 17.75%",
        "b: 100 synapses, linked 50.00%, trained 50.00%, placeholders 0.00%",
        "all synapses: 1100 synapses, linked 31.82%, trained 15.68%, placeholders 16.14%"]
    for method, regrowth in (("soft_deep", "released"), ("deep", "active"), ("grad", "released")):
        (run / "run.json").write_text(json.dumps({**info, "method": method,
                                                  "flags": {"deepr_regrowth": regrowth}}))
        assert trained_connectivity.main([str(run)]) == 2
        assert "not a hard Deep R run" in capsys.readouterr().err
    (run / "run.json").write_text(json.dumps({**info, "synapse_counts": {"a": 1000}}))
    assert trained_connectivity.main([str(run)]) == 2
    assert "lack consistent" in capsys.readouterr().err
