"""STDS: State Transition of Dendritic Spines (Chen, Yu, Fang, Ma, Huang and Tian,
"State Transition of Dendritic Spines Improves Learning of Sparse Spiking Neural Networks",
ICML 2022, PMLR 162:3701-3715), as its release (GitHub Yanqi-Chen/STDS, CIFAR10/) runs it.

Contract: docs/method.md, "STDS". Every synapse layer keeps a free parameter theta (the
layer's weight at the start) and computes with the soft-thresholded weight

    w = sign(theta) * relu(|theta| - d)

A synapse is pruned (w == 0) while |theta| <= d. The width d of this dead zone grows during
training from 0 to D (`flat_width`), and a plain optimizer (Adam in the experiments) trains
theta; there is no prior and no noise. Gradient variants: 'stmod' (the release's default)
passes dL/dw to theta unchanged everywhere, so a pruned synapse keeps learning and can grow
back; 'st' is the true derivative of the mapping, dL/dw where |theta| > d and 0 where pruned.

Pieces:
- `SoftThreshold`: the mapping as a `torch.nn.utils.parametrize` module, holding d as a
  0-dim float32 buffer.
- `flat_width(n, n_total, D, schedule)`: the schedule of d (a Python float).
- `apply_stds(model, D, n_total, ...)`: registers a `SoftThreshold` on the weight of every
  nn.Linear and nn.Conv{1,2,3}d (SpikingJelly's layer.Linear / layer.Conv2d included) and
  returns the `STDSController` that advances d after every optimizer step.

Under parametrize, `module.weight` is the effective weight w (recomputed on each read) and
`module.parametrizations.weight.original` is theta, the parameter an optimizer updates.

Units: theta, w, d and D are in the layer's weight units. n and n_total count training steps
(optimizer steps).
"""
import math
import numbers

import torch
from torch import nn
from torch.nn.utils import parametrize

from rewiring_base import check_arg

GRADIENTS = ("stmod", "st")
"""The gradient variants: 'stmod' straight-through (default), 'st' the true derivative."""

SCHEDULES = ("sine", "linear")
"""The schedules of d."""

SYNAPSE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layer types whose `weight` `apply_stds` reparameterises by default."""


def _integer(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _positive_finite(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_gradient(gradient):
    check_arg("gradient", gradient, "gradient in ('stmod', 'st')", lambda v: v in GRADIENTS)


def _check_schedule(schedule):
    check_arg("schedule", schedule, "schedule in ('sine', 'linear')", lambda v: v in SCHEDULES)


def _check_D(D):
    check_arg("D (--flat-width)", D, "0 < D < inf (a real number)", _positive_finite)


def _check_n_total(n_total):
    check_arg("n_total (training steps of the run)", n_total, "an integer n_total >= 1",
              lambda v: _integer(v) and v >= 1)


def flat_width(n, n_total, D, schedule="sine"):
    """The dead-zone width d after `n` of the run's `n_total` training steps.

    docs/method.md, "STDS schedule":
        'sine':   d = (1 + sin(pi * (n / n_total - 1/2))) / 2 * D   (0 at n = 0, D/2 halfway)
        'linear': d = n / n_total * D
    Both give exactly 0 at n = 0 and exactly D at n = n_total. The operations are those of
    the release (train.py's sineInc / linearInc times D), in double precision.

    Args:
        n: steps taken, an integer with 0 <= n <= n_total.
        n_total: the run's number of training steps, an integer >= 1.
        D: the final width (--flat-width), a finite real > 0, in weight units.
        schedule: 'sine' (default) or 'linear'.

    Returns:
        d as a Python float, 0 <= d <= D.

    Raises:
        ValueError: one line naming the argument: D <= 0 or not finite, an unknown
            schedule, n_total not an integer >= 1, n not an integer in [0, n_total].
    """
    _check_schedule(schedule)
    _check_n_total(n_total)
    _check_D(D)
    check_arg("n (steps taken)", n, f"an integer 0 <= n <= n_total = {n_total}",
              lambda v: _integer(v) and 0 <= v <= n_total)
    if schedule == "sine":
        return (1.0 + math.sin(math.pi * (n / n_total - 0.5))) / 2 * D
    return n / n_total * D


class _SoftThresholdFunction(torch.autograd.Function):
    """w = sign(theta) * relu(|theta| - d), with the chosen gradient with respect to theta.

    Forward: bit for bit the release's `sign(x) * relu(|x| - s)` (the same three operations;
    only the subtraction rounds). Backward: `straight_through` True ('stmod') returns the
    upstream gradient unchanged everywhere; False ('st') returns it where |theta| > d and 0
    elsewhere. d gets no gradient.
    """

    @staticmethod
    def forward(theta, d, straight_through):
        return torch.sign(theta) * torch.relu(theta.abs() - d)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, d, straight_through = inputs
        ctx.straight_through = straight_through
        if not straight_through:
            # theta is the parameter itself, so saving it costs no memory; the mask is
            # recomputed in backward.
            ctx.save_for_backward(theta, d)

    @staticmethod
    def backward(ctx, grad_w):
        if ctx.straight_through:
            return grad_w, None, None
        theta, d = ctx.saved_tensors
        return torch.where(theta.abs() > d, grad_w, 0.0), None, None


class SoftThreshold(nn.Module):
    """The STDS mapping theta -> w as a parametrization (`torch.nn.utils.parametrize`).

    `forward(theta)` returns `w = sign(theta) * relu(|theta| - d)`, shaped and typed like
    theta (any shape; a weight matrix [out, in] or a kernel [out, in, *k]). w == 0 exactly
    where |theta| <= d (pruned), |w| = |theta| - d elsewhere. At d = 0, w equals theta.

    Args:
        gradient: 'stmod' (default: dL/dtheta = dL/dw everywhere, pruned synapses included)
            or 'st' (dL/dtheta = dL/dw where |theta| > d, 0 where pruned).
        d: the initial width, a real >= 0 (weight units). `STDSController` overwrites it.

    Buffers:
        d: a 0-dim tensor, float32 when made, on the device and in the dtype of the module
            after `.to()`. It is in the model's state_dict (key
            `<layer>.parametrizations.weight.0.d`) and, being a tensor, does not make
            torch.compile specialise the graph on its value. The threshold that applies is
            d rounded to the buffer's dtype (the release's Python-float d met a float32
            weight, with the same effect).

    There is no `right_inverse`: assigning `module.weight = ...` raises RuntimeError. An
    in-place write into `module.weight` changes a temporary copy and is lost; write theta
    (`module.parametrizations.weight.original`) instead.

    Raises:
        ValueError: gradient not 'stmod' or 'st'; d negative, not finite or not a real.
    """

    def __init__(self, gradient="stmod", d=0.0):
        super().__init__()
        _check_gradient(gradient)
        check_arg("d", d, "0 <= d < inf (a real number)",
                  lambda v: v == 0 or _positive_finite(v))
        self.gradient = gradient
        self.register_buffer("d", torch.tensor(float(d), dtype=torch.float32))

    def forward(self, theta):
        return _SoftThresholdFunction.apply(theta, self.d, self.gradient == "stmod")

    def extra_repr(self):
        return f"gradient={self.gradient!r}, d={float(self.d):.6g}"


def _target_layers(model, layer_types):
    """`{name: module}` of the modules of `layer_types` that own a `weight`, in model order;
    a module reached under several names is kept once, under its first name."""
    layers, seen = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, layer_types) and id(module) not in seen:
            seen.add(id(module))
            if getattr(module, "weight", None) is not None:
                layers[name] = module
    return layers


def apply_stds(model, D, n_total, gradient="stmod", schedule="sine", layer_types=SYNAPSE_LAYERS):
    """Reparameterise every synapse layer of `model` with STDS; returns its controller.

    Registers a `SoftThreshold(gradient)` on the `weight` of each module of `layer_types`
    (every layer, the first one included). theta is the layer's weight Parameter itself,
    the same object, now registered as `<layer>.parametrizations.weight.original`: its name
    in `named_parameters()` and in the state_dict changes, its value does not. d starts at
    0, so `module.weight` equals theta until the first `STDSController.step()`. Call it
    before building the optimizer, before torch.compile and before wrapping the model for
    DDP.

    Args:
        model: the nn.Module, modified in place.
        D: final width of the dead zone (--flat-width), a finite real > 0, weight units.
        n_total: the run's number of training steps from its first step to the end of its
            last epoch, an integer >= 1. The engine's value is steps_per_epoch * (N + 1) for
            epochs 0..N. (The release used steps_per_epoch * N while training N + 1
            epochs, so its last epoch ran past the schedule's end.)
        gradient: 'stmod' (default) or 'st'.
        schedule: 'sine' (default) or 'linear'.
        layer_types: tuple of module classes whose weight is reparameterised.

    Returns:
        The `STDSController`, at n = 0 and d = 0.

    Raises:
        ValueError: one line naming the argument, before anything is registered: D,
            n_total, gradient or schedule outside the allowed values; layer_types not a
            non-empty tuple of nn.Module classes; `model` without a layer of `layer_types`;
            a target weight already parametrized (apply_stds called twice, or another
            parametrization) or shared between two target layers.
    """
    _check_D(D)
    _check_n_total(n_total)
    _check_gradient(gradient)
    _check_schedule(schedule)
    check_arg("layer_types", layer_types, "a non-empty tuple of nn.Module subclasses",
              lambda v: isinstance(v, tuple) and len(v) > 0
              and all(isinstance(t, type) and issubclass(t, nn.Module) for t in v))
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = _target_layers(model, layer_types)
    if not layers:
        names = ", ".join(t.__name__ for t in layer_types)
        raise ValueError(f"model: no layer of {names} to reparameterise in {type(model).__name__}")
    owners = {}
    for name, module in layers.items():
        label = f"{name}.weight" if name else "weight"
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"model: {label} is already parametrized (apply_stds registers once per model)")
        first = owners.setdefault(id(module.weight), label)
        if first != label:
            raise ValueError(f"model: {label} is the same tensor as {first} (shared weights are not supported)")
    for module in layers.values():
        device = module.weight.device
        parametrize.register_parametrization(module, "weight", SoftThreshold(gradient).to(device))
    return STDSController(layers, D, n_total, gradient, schedule)


class STDSController:
    """Advances the dead-zone width d of a model reparameterised by `apply_stds`.

    Made by `apply_stds`. Call `step()` once after every optimizer step: it counts the step
    (n <- n + 1) and writes d = flat_width(min(n, n_total), n_total, D, schedule) into the
    buffer of every layer's `SoftThreshold`. Step n + 1 therefore computes with the d of
    n steps taken: 0 on the run's first step, D once n_total steps are done.

    Past the end of the schedule (n > n_total) d stays at D: n keeps counting, nothing
    raises. Together with `load_state_dict` keeping the n_total the run started with, this
    makes raising -N on a resumed run simple to reason about: the first n_total steps are
    those of the original run bit for bit, and the added epochs train at the full width D
    (they do not stretch the schedule, which would shrink d and revive pruned synapses in
    the middle of a run).

    Resume: `state_dict()` holds n, n_total, D, schedule and gradient (plain Python values,
    loadable with `torch.load(weights_only=True)`). d is not stored here but derived from n
    (flat_width is deterministic), and `load_state_dict` writes it into the buffers, so a
    resumed run computes with the same d bit for bit. The buffers are also in the model's
    state_dict, with the same values; loading the model before or after the controller gives
    the same result.

    Attributes:
        layers: `{module name: module}` of the reparameterised layers, in model order.
        D, n_total, gradient, schedule: as given to `apply_stds` (n_total as restored by
            `load_state_dict`).
        n: training steps counted so far (an int >= 0).
    """

    def __init__(self, layers, D, n_total, gradient, schedule):
        self.layers = dict(layers)
        self.D, self.n_total, self.gradient, self.schedule = float(D), int(n_total), gradient, schedule
        self.n = 0
        self._write()

    @property
    def d(self):
        """The current width as a Python float (the buffers hold it in their dtype)."""
        return flat_width(min(self.n, self.n_total), self.n_total, self.D, self.schedule)

    def parametrizations(self):
        """The `SoftThreshold` of every layer, in model order."""
        return [m.parametrizations.weight[0] for m in self.layers.values()]

    def _write(self):
        d = self.d
        with torch.no_grad():
            for p in self.parametrizations():
                p.d.fill_(d)

    def step(self):
        """Count one training step and write the new d into every layer; returns d."""
        self.n += 1
        self._write()
        return self.d

    def weights(self):
        """`{'<layer>.weight': w}`: the effective weights, detached, named as a plain model
        would name them in its state_dict ('weight' when the model is the layer itself). Each
        call evaluates the mapping once per layer."""
        with torch.no_grad():
            return {f"{name}.weight" if name else "weight": m.weight.detach()
                    for name, m in self.layers.items()}

    def sparsity(self):
        """The fraction of effective weights equal to 0 (pruned synapses, |theta| <= d) over
        all reparameterised layers, as a Python float in [0, 1]."""
        zeros, total = 0, 0
        for w in self.weights().values():
            zeros += int((w == 0).sum())
            total += w.numel()
        return zeros / total

    def state_dict(self):
        """`{'n', 'n_total', 'D', 'schedule', 'gradient'}` as plain Python values."""
        return {"n": self.n, "n_total": self.n_total, "D": self.D, "schedule": self.schedule,
                "gradient": self.gradient}

    def load_state_dict(self, state):
        """Restore n and n_total from `state_dict()` output and write d into every layer.

        D, schedule and gradient must equal this controller's: they define the method, and
        changing them mid-run is refused. n_total is taken from `state`: the schedule is
        that of the run's start, whatever n_total this controller was made with (compare
        `self.n_total` before and after to tell the user).

        Raises:
            ValueError: a key missing, n or n_total not a valid count, or D, schedule or
                gradient different from this controller's.
        """
        check_arg("STDS state", sorted(state), "keys n, n_total, D, schedule, gradient",
                  lambda keys: {"n", "n_total", "D", "schedule", "gradient"} <= set(keys))
        for key in ("D", "schedule", "gradient"):
            mine = getattr(self, key)
            check_arg(f"STDS state's {key}", state[key], f"{key} == {mine!r} (this run's value)",
                      lambda v: v == mine)
        _check_n_total(state["n_total"])
        check_arg("STDS state's n", state["n"], "an integer n >= 0",
                  lambda v: _integer(v) and v >= 0)
        self.n_total, self.n = int(state["n_total"]), int(state["n"])
        self._write()

    def __repr__(self):
        return (f"STDSController(layers={len(self.layers)}, D={self.D}, n_total={self.n_total}, "
                f"gradient={self.gradient!r}, schedule={self.schedule!r}, n={self.n}, d={self.d:.6g})")


class STDSAdam(torch.optim.Adam):
    """Adam on the parameters of a model reparameterised by `apply_stds` (theta and any
    others) that advances the dead zone after every step: `step()` is Adam's step followed by
    `controller.step()`. `state_dict()` carries the controller's state under 'stds', so that
    `load_state_dict` resumes the schedule bit for bit.

    Args:
        params: as for torch.optim.Adam (theta: `<layer>.parametrizations.weight.original`).
        controller: the `STDSController` of the model.
        **adam: torch.optim.Adam's keyword arguments (lr, betas, eps, ...).

    Raises:
        ValueError: `controller` is not an STDSController; from Adam, a hyper-parameter
            out of range; from `load_state_dict`, a state without 'stds' or of another
            STDS setting.
    """

    def __init__(self, params, controller, **adam):
        check_arg("controller", controller, "an STDSController", lambda c: isinstance(c, STDSController))
        super().__init__(params, **adam)
        self.controller = controller

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step, then one step of the dead zone's schedule; returns the closure's loss."""
        loss = super().step(closure)
        self.controller.step()
        return loss

    def state_dict(self):
        """Adam's state dict plus 'stds': the controller's state."""
        return {**super().state_dict(), "stds": self.controller.state_dict()}

    def load_state_dict(self, state_dict):
        """Load a `state_dict()` of an STDSAdam: Adam's state and the controller's."""
        state_dict = dict(state_dict)
        check_arg("state_dict", sorted(state_dict), "an 'stds' entry (the schedule's state)",
                  lambda keys: "stds" in keys)
        controller = state_dict.pop("stds")
        super().load_state_dict(state_dict)
        self.controller.load_state_dict(controller)
