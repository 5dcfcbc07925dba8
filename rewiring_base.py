"""The Adam piece shared by Grad R (`gradrewire.py`) and Deep R (`deeprewire.py`).

Source: docs/method.md, "Notation". Both optimizers are `torch.optim.Adam`
subclasses that keep Adam's moments and bias correction and differ only in how the
Adam direction moves the synapses; that common part lives here once:

- `check_arg`: the one-line `HyperparameterError` (a `ValueError`) used for every bad
  hyper-parameter,
- `RewiringMixin`: rewiring hyper-parameters as validated param-group defaults,
- `adam_moments` / `adam_term`: one Adam moment update for one tensor, and `step * adam`;
- `RewiringMixin.kernel`: an update function, compiled with `torch.compile` when the
  optimizer was made with `compiled=True` (one fused kernel instead of a dozen passes).
"""
import inspect
import math

import torch

# Adam options that the rewiring update rules do not implement.
_UNSUPPORTED_ADAM_FLAGS = ("maximize", "capturable", "differentiable", "fused",
                           "decoupled_weight_decay")


class HyperparameterError(ValueError):
    """A hyper-parameter out of its allowed range; ``argument`` names it as ``__init__`` does
    (e.g. ``'s'``), so that a command line can name its own flag for it."""

    def __init__(self, argument, message):
        super().__init__(message)
        self.argument = argument


def check_arg(name, value, allowed, ok):
    """Raise `ValueError` unless `ok(value)` is true.

    Args:
        name: the argument as the user knows it, e.g. ``"s (target sparsity)"``.
        value: the value given.
        allowed: the allowed range as a condition, e.g. ``"0.5 <= s < 1 when alpha > eps"``.
        ok: predicate on `value`; a `TypeError`/`ValueError` inside it (e.g. comparing
            None) counts as "not allowed".

    Raises:
        HyperparameterError: (a ValueError) one line, ``"<name> must satisfy <allowed>, got
            <value!r>"``; its ``argument`` is the first word of ``name``.
    """
    try:
        good = bool(ok(value))
    except (TypeError, ValueError, RuntimeError):
        good = False
    if not good:
        raise HyperparameterError(name.split()[0], f"{name} must satisfy {allowed}, got {value!r}")


def check_adam_group(group):
    """Check the Adam hyper-parameters of one param group (dict), as torch.optim.Adam would.

    Raises:
        ValueError: lr < 0, eps < 0, a beta outside [0, 1), weight_decay < 0, or one of
            Adam's options maximize/capturable/differentiable/fused/decoupled_weight_decay set.
    """
    check_arg("lr", group["lr"], "lr >= 0", lambda v: v >= 0)
    check_arg("eps", group["eps"], "eps >= 0", lambda v: v >= 0)
    check_arg("betas", group["betas"], "0 <= betas[0] < 1 and 0 <= betas[1] < 1",
              lambda b: len(b) == 2 and all(0 <= beta < 1 for beta in b))
    check_arg("weight_decay", group["weight_decay"], "weight_decay >= 0", lambda v: v >= 0)
    for flag in _UNSUPPORTED_ADAM_FLAGS:
        check_arg(flag, group.get(flag), f"{flag} unset (not supported by the rewiring optimizers)",
                  lambda v: not v)


class RewiringMixin:
    """Mixin for a `torch.optim.Adam` subclass whose extra hyper-parameters are param-group defaults.

    The subclass calls `_init_rewiring` from its `__init__` and implements `_check_group(group)`
    (raising `ValueError` via `check_arg`) and `_update(w, state, group)` (the update of one
    tensor). Every param group, at construction and through a later `add_param_group`, gets
    the rewiring defaults it does not set itself and is validated (Adam's part by
    `check_adam_group`, then `_check_group`) before it is added.
    """

    _rewiring_defaults = {}
    compiled = False
    _kernels = None

    def kernel(self, fn):
        """`fn` itself, or `torch.compile(fn)` when the optimizer is compiled (cached)."""
        if not self.compiled:
            return fn
        if self._kernels is None:
            self._kernels = {}
        if fn not in self._kernels:
            self._kernels[fn] = torch.compile(fn)
        return self._kernels[fn]

    def scalar(self, value, like):
        """A per-step number for a kernel (docs/method.md, "Notation": step, eps, ...).

        Args:
            value: a Python float (units of whatever it measures, e.g. lr for `step`).
            like: the tensor the kernel updates; only its dtype and device are used.

        Returns:
            `value` itself when not compiled (eager ops cast it to `like`'s dtype alike); when
            compiled (a Python float would make torch.compile specialise on every new value)
            a 0-dim tensor of `like`'s dtype on `like`'s device, holding `value` rounded to
            that dtype as `torch.tensor(value, dtype=like.dtype)` rounds it (a finite value
            beyond the dtype's range becomes +-inf or the largest finite value, as there).
            It is filled on the device (`torch.full`), not copied from host memory, so a
            CUDA step does not wait for a host-to-device copy per number.
        """
        if not self.compiled:
            return value
        if math.isfinite(value) and abs(value) > torch.finfo(like.dtype).max:
            value = torch.tensor(value, dtype=like.dtype).item()    # torch.full would refuse it
        return torch.full((), value, dtype=like.dtype, device=like.device)

    def _init_rewiring(self, params, lr, betas, eps, weight_decay, amsgrad, **rewiring):
        adam = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self._validate({**adam, **rewiring})  # before Adam's own checks, so our messages win
        self._rewiring_defaults = rewiring
        adam["betas"] = tuple(float(beta) for beta in betas)  # Adam wants both floats
        super().__init__(params, **adam)
        self.defaults.update(rewiring)

    @classmethod
    def _validate(cls, group):
        check_adam_group(group)
        cls._check_group(group)

    @classmethod
    def check_settings(cls, **settings):
        """Check hyper-parameters as the constructor would, without building an optimizer:
        ``settings`` are keyword arguments of ``__init__``; the others take its defaults.

        Raises:
            ValueError: as the constructor, for the first argument out of range.
        """
        signature = inspect.signature(cls.__init__)
        group = {name: p.default for name, p in signature.parameters.items()
                 if p.default is not inspect.Parameter.empty}
        cls._validate({**group, **settings})

    def add_param_group(self, param_group):
        """Add a param group (dict with 'params'); missing options take the optimizer's defaults.

        Raises:
            ValueError: a hyper-parameter of the group is outside its allowed range.
        """
        for key, value in self._rewiring_defaults.items():
            param_group.setdefault(key, value)
        self._validate({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient (those whose grad is None are skipped).

        Args:
            closure: optional callable re-evaluating the model and returning the loss.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: a sparse gradient (see `adam_moments`).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is not None:
                    self._update(w, self.state[w], group)
        return loss


def adam_moments(p, state, group):
    """One Adam moment update of `p` (docs/method.md, "Notation"); returns `(step, adam_term)`.

    Args:
        p: parameter tensor `w`, any shape, with a dense real `p.grad` (same shape).
        state: its optimizer state dict. On the first call it receives Adam's keys:
            'step' (float32 scalar tensor on CPU, the step count `t`, as torch.optim.Adam
            stores it), 'exp_avg' (`m`), 'exp_avg_sq' (`v`), and with amsgrad 'max_exp_avg_sq'
            (`vmax`), all shaped like `p`. Each call increments 'step' and updates the moments.
        group: the param group (lr, betas, eps, weight_decay, amsgrad).

    Returns:
        step: float, `lr / (1 - b1**t)` (units of lr).
        bc2_sqrt: float, `sqrt(1 - b2**t)`.
        v_sqrt: tensor shaped like `p`, `sqrt(v)` (of `vmax` with amsgrad), where the moments
            follow `g = grad + weight_decay * w`. :func:`adam_term` turns these into
            `step * adam`, evaluated as `(m * step) / den`, the float operations of
            torch.optim.Adam's single-tensor path, so with no synapse pruned the rewiring
            optimizers give bit-identical weights to torch.optim.Adam on CPU. (The square
            root is taken here, eagerly: a compiled one rounds differently.)

    Raises:
        RuntimeError: the gradient is sparse or the parameter complex.
    """
    grad = p.grad
    if grad.is_sparse or p.is_complex():
        raise RuntimeError("the rewiring optimizers support only dense real gradients")
    if "step" not in state:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    beta1, beta2 = group["betas"]
    if group["weight_decay"] != 0:
        grad = grad.add(p, alpha=group["weight_decay"])
    state["step"] += 1
    t = state["step"].item()
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if group["amsgrad"]:
        vmax = state.setdefault("max_exp_avg_sq", torch.zeros_like(p))
        torch.maximum(vmax, v, out=vmax)
        v = vmax
    step = float(group["lr"]) / (1 - beta1 ** t)
    return step, (1 - beta2 ** t) ** 0.5, v.sqrt()


def adam_term(m, v_sqrt, step, bc2_sqrt, eps):
    """`step * adam = (m * step) / (sqrt(v) / bc2_sqrt + eps)`, in torch.optim.Adam's float
    operations (docs/method.md, "Notation"); the scalars may be Python floats or 0-dim tensors."""
    return (m * step) / (v_sqrt / bc2_sqrt + eps)
