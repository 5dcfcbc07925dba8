"""Grad R: Gradient Rewiring (Chen et al., IJCAI 2021, doi 10.24963/ijcai.2021/236).

Contract: docs/method.md, "Grad R". Each synapse keeps a fixed sign and a hidden
strength theta; the weight is `w = sign * max(theta, 0)`, so a synapse is pruned while
theta < 0. theta follows Adam's direction for `w` even while pruned (the paper's redefined
gradient, which lets a pruned synapse regrow) plus the gradient of a Laplace prior on theta
whose location mu puts a fraction s of the prior's mass below 0 (target sparsity s).
"""
import math

import torch

from rewiring_base import RewiringMixin, adam_moments, adam_term, check_arg


class GradRewiring(RewiringMixin, torch.optim.Adam):
    """Adam with Gradient Rewiring (docs/method.md, "Grad R update", steps 1-4).

    Args:
        params: iterable of tensors or of param-group dicts, as for torch.optim.Adam. A group
            may set its own `alpha` and `s` (and Adam hyper-parameters).
        lr, betas, eps, weight_decay, amsgrad: as torch.optim.Adam (same defaults);
            weight decay adds `weight_decay * w` to the gradient of `w`.
        alpha: scale parameter of the Laplace prior on theta, in 1/(weight units); the prior
            is off when `alpha <= eps`.
        s: target sparsity (fraction of synapses with theta < 0 under the prior), required
            with `0.5 <= s < 1` when `alpha > eps`, unused otherwise.
        compiled: run steps 2-4 as one `torch.compile`d kernel per tensor shape (needs
            torch.compile's toolchain; a warm-up on the first steps). Same float operations:
            on the CPU the result equals the eager one bit for bit (tested).

    State per tensor `w` (created at its first step, all tensors shaped like `w`):
        Adam's 'step', 'exp_avg', 'exp_avg_sq' (+ 'max_exp_avg_sq' with amsgrad);
        'sign' = sign(w) at the first step (fixed; 0 for a weight that was exactly 0, which
        then stays 0); 'strength' = theta, starting at |w|; and, when alpha > eps, 'mu' =
        ln(2 (1 - s)) / alpha (Python float, <= 0), the prior's location.

    Raises:
        ValueError (construction, `add_param_group`): lr < 0, eps < 0, a beta outside [0, 1),
            weight_decay < 0, alpha < 0, or s not in [0.5, 1) (None included) when alpha > eps.
        RuntimeError (`step`): a sparse gradient.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, alpha=1e-5, s=None, compiled=False):
        self.compiled = bool(compiled)
        self._init_rewiring(params, lr, betas, eps, weight_decay, amsgrad, alpha=alpha, s=s)

    @staticmethod
    def _check_group(group):
        check_arg("alpha", group["alpha"], "alpha >= 0", lambda v: v >= 0)
        if group["alpha"] > group["eps"]:
            check_arg("s (target sparsity)", group["s"], "0.5 <= s < 1 when alpha > eps",
                      lambda v: 0.5 <= v < 1)

    def _update(self, w, state, group):
        """Steps 1-4 of docs/method.md, "Grad R update", for tensor `w` (theta: strength before it):
        1. u = sign * theta;  2. u -= step * adam (also where theta < 0);
        3. if alpha > eps: u -= step * alpha * sign(theta - mu) * sign;
        4. theta = sign * u;  w = sign * max(theta, 0).
        """
        prior = group["alpha"] > group["eps"]
        if "sign" not in state:
            state["sign"] = torch.sign(w)
            state["strength"] = w.abs()
        if prior and "mu" not in state:
            state["mu"] = math.log(2 * (1 - group["s"])) / group["alpha"]
        step, bc2_sqrt, v_sqrt = adam_moments(w, state, group)
        numbers = [self.scalar(x, w) for x in (step, bc2_sqrt, group["eps"], state.get("mu", 0.0),
                                               -step * group["alpha"])]
        self.kernel(grad_r_update)(w, state["sign"], state["strength"], state["exp_avg"], v_sqrt,
                                   *numbers, prior)


def grad_r_update(w, sign, theta, m, v_sqrt, step, bc2_sqrt, eps, mu, prior_step, prior: bool):
    """Steps 1-4 of Grad R (docs/method.md, "Grad R update") on one tensor, in place.

    Args:
        w: the weights; sign, theta (strength), m (Adam's first moment), v_sqrt (sqrt of the
            second): tensors shaped like `w`.
        step, bc2_sqrt, eps: Adam's `lr / (1 - b1**t)`, `sqrt(1 - b2**t)` and eps;
        mu: the prior's location; prior_step: `-step * alpha`; prior: whether step 3 applies.

    `theta` and `w` are overwritten with the new strength and weights. The float operations
    are those of the steps above, in order, so that a compiled kernel gives the same bits.
    """
    u = sign * theta - adam_term(m, v_sqrt, step, bc2_sqrt, eps)
    if prior:
        u = u + (torch.sign(theta - mu) * sign) * prior_step
    theta.copy_(sign * u)
    w.copy_(sign * theta.clamp(min=0))
