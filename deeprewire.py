"""Deep R: deep rewiring (Bellec et al., ICLR 2018), the baseline of Grad R.

Contract: docs/method.md, "Deep R", in the form the Grad R paper's released
experiments ran it (Chen et al., IJCAI 2021, doi 10.24963/ijcai.2021/236). Each synapse
has a fixed sign; an active synapse follows Adam, an L1 pull towards 0 and Gaussian noise,
and becomes dormant (w = 0) when its sign would flip. Hard mode then reactivates random
dormant synapses to keep the sparsity at most max_s; soft mode keeps a hidden strength that
may return from below 0 (down to theta_min).
"""
import hashlib
import math
import warnings

import torch

from rewiring_base import RewiringMixin, adam_moments, adam_term, check_arg


class DeepRewiring(RewiringMixin, torch.optim.Adam):
    """Adam with Deep R rewiring (docs/method.md, "Deep R": hard steps 1-6, soft steps 1-4).

    Args:
        params: iterable of tensors or of param-group dicts, as for torch.optim.Adam. A group
            may set its own `T`, `l1`, `max_s`, `soft`, `regrowth` (and Adam hyper-parameters).
        lr, betas, eps, weight_decay, amsgrad: as torch.optim.Adam (same defaults);
            weight decay adds `weight_decay * w` to the gradient of `w`.
        T: temperature as it appears in the update, noise `T * sqrt(step) * N(0, 1)`
            (Bellec et al. write sqrt(2T) for it); `T >= 0`. With `T == 0` no noise is drawn
            at all (it would be multiplied by 0), so the generator is not advanced by step 3.
        l1: L1 penalty, the pull `step * l1` towards 0 per step; `l1 >= 0`.
        max_s: largest allowed sparsity per tensor, `0 <= max_s <= 1` (None is an error).
        soft: False for hard Deep R, True for soft Deep R.
        regrowth: how hard mode reactivates a dormant synapse: 'released' (default, as the
            published runs: set to +eps but left inactive, so zeroed again at the next step
            and never trained) or 'active' (Bellec et al.: set to sign * eps and trained).
        generator: torch.Generator for all random draws (used as given, not reseeded);
            default: a CPU generator owned by the optimizer, seeded with `seed`. Draws are made
            on the generator's device and moved to the parameter's. The reactivation draws
            depend on whether the two devices are the same (see Randomness below).
        seed: seed of the owned generator (ignored when `generator` is given).
        compiled: run the deterministic part of each step (hard steps 1-4, soft steps 1-4)
            as one `torch.compile`d kernel per tensor shape; the noise, the sparsity count and
            the reactivation stay eager. On the CPU the result equals the eager one bit for
            bit (tested).

    Randomness, in order per step (docs/method.md, "Randomness"): for each group, for each
    tensor with a gradient, the noise N(0, 1) of step 3 (shape of `w`, dtype of `w`; skipped
    when T == 0), then, in hard mode and only when the sparsity c exceeds max_s, the
    reactivation draws, each dormant synapse reactivated with probability p = (c - max_s) / c:
    - generator on `w`'s device: one uniform draw in [0, 1) per element of `w` (float32); a
      dormant synapse is reactivated when its draw is < p;
    - generator on another device (a CPU generator with CUDA weights, as under torchrun):
      :func:`bernoulli_positions` over the k dormant synapses in `w`'s flattened order, about
      k * p draws instead of numel, and only the chosen positions are copied to `w`'s device.

    State per tensor `w` (created at its first step, tensors shaped like `w`):
        Adam's 'step', 'exp_avg', 'exp_avg_sq' (+ 'max_exp_avg_sq' with amsgrad);
        'sign' = sign(w) at the first step (fixed); 'active' = (w != 0) as 0/1 floats;
        hard mode: 'numel' (int); soft mode: 'strength' (theta, starting at |w|) and, when
        l1 > 0 and max_s < 1, 'theta_min' = -(0.5 T^2 max_s) / (l1 (1 - max_s)) (float).
    `state_dict()` adds the key 'generator' (the generator's state, a uint8 tensor), which
    `load_state_dict()` requires and restores, so a resumed run is bit-identical (on a device
    of the same kind; see `load_state_dict` for a state from another kind of generator).

    Raises:
        ValueError (construction, `add_param_group`): lr < 0, eps < 0, a beta outside [0, 1),
            weight_decay < 0, T < 0, l1 < 0, max_s outside [0, 1] or None, soft not a bool,
            regrowth not 'released'/'active', generator not a torch.Generator.
        ValueError (`load_state_dict`): no 'generator' entry.
        RuntimeError (`step`): a sparse gradient.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, T=0, l1=1e-5, max_s=None, soft=False, regrowth="released",
                 generator=None, seed=0, compiled=False):
        check_arg("generator", generator, "a torch.Generator or None",
                  lambda g: g is None or isinstance(g, torch.Generator))
        self.compiled = bool(compiled)
        self._init_rewiring(params, lr, betas, eps, weight_decay, amsgrad,
                            T=T, l1=l1, max_s=max_s, soft=soft, regrowth=regrowth)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    @staticmethod
    def _check_group(group):
        check_arg("T (temperature)", group["T"], "T >= 0", lambda v: v >= 0)
        check_arg("l1", group["l1"], "l1 >= 0", lambda v: v >= 0)
        check_arg("max_s (maximal sparsity)", group["max_s"], "0 <= max_s <= 1",
                  lambda v: 0 <= v <= 1)
        check_arg("soft", group["soft"], "soft is a bool", lambda v: isinstance(v, bool))
        check_arg("regrowth", group["regrowth"], "regrowth in ('released', 'active')",
                  lambda v: v in ("released", "active"))

    def state_dict(self):
        """Adam's state dict plus 'generator': the random generator's state (uint8 tensor)."""
        state_dict = super().state_dict()
        state_dict["generator"] = self.generator.get_state()
        return state_dict

    def load_state_dict(self, state_dict):
        """Load a `state_dict()` of a DeepRewiring, restoring the generator's state too
        (:func:`restore_generator`: a state saved on another kind of device seeds it instead,
        with a warning).

        Raises:
            ValueError: `state_dict` has no 'generator' entry (it could not resume bit-identically).
            RuntimeError: the generator refuses a state of its own size (a damaged state).
        """
        state_dict = dict(state_dict)
        if "generator" not in state_dict:
            raise ValueError(f"state_dict needs a 'generator' entry (the random generator's state), "
                             f"got keys {sorted(state_dict)}")
        generator_state = state_dict.pop("generator")
        super().load_state_dict(state_dict)
        restore_generator(self.generator, generator_state)

    def _update(self, w, state, group):
        """Create the state of `w` on its first step (see the class docstring), then step it."""
        if "sign" not in state:
            state["sign"] = torch.sign(w)
            state["active"] = (w != 0).to(w.dtype)
            if group["soft"]:
                state["strength"] = w.abs()
                if group["l1"] > 0 and group["max_s"] < 1:
                    T, max_s = group["T"], group["max_s"]
                    state["theta_min"] = -(0.5 * T ** 2 * max_s) / (group["l1"] * (1 - max_s))
            else:
                state["numel"] = w.numel()
        (self._soft_step if group["soft"] else self._hard_step)(w, state, group)

    def _kernel_args(self, fn, w, state, group):
        """Adam's moment update and the noise draw (step 3), then ``fn``, compiled when the
        optimizer is and no noise is drawn (T == 0, the released setting: with noise the eager
        ``add(alpha=...)`` fuses a multiply-add that a compiled kernel would not), and its
        arguments after the state tensors: (sqrt(v), step, sqrt(1 - b2**t), eps, -step * l1,
        T * sqrt(step), noise or None)."""
        step, bc2_sqrt, v_sqrt = adam_moments(w, state, group)
        noise = (torch.randn(w.shape, generator=self.generator, device=self.generator.device, dtype=w.dtype)
                 .to(w.device) if group["T"] != 0 else None)      # on the generator's device, then w's
        numbers = (step, bc2_sqrt, group["eps"], -step * group["l1"], group["T"] * math.sqrt(step))
        if noise is not None:
            return fn, (v_sqrt, *numbers, noise)
        return self.kernel(fn), (v_sqrt, *(self.scalar(x, w) for x in numbers), noise)

    def _hard_step(self, w, state, group):
        """Steps 1-6 of docs/method.md, "Hard Deep R"."""
        sign, active = state["sign"], state["active"]
        kernel, args = self._kernel_args(deep_r_hard_update, w, state, group)
        kernel(w, sign, active, state["exp_avg"], *args)              # steps 1-4
        nonzero = w != 0
        active.copy_(nonzero)                                     # 5. sparsity c
        linked = nonzero.sum().item()
        c = 1 - linked / state["numel"]
        if c > group["max_s"]:                                    # 6. reactivation
            p = (c - group["max_s"]) / c
            revive = reactivated(self.generator, ~nonzero, state["numel"] - linked, p)
            if group["regrowth"] == "released":
                w.masked_fill_(revive, group["eps"])
            else:
                w.copy_(torch.where(revive, sign * group["eps"], w))
                active.copy_(w != 0)

    def _soft_step(self, w, state, group):
        """Steps 1-4 of docs/method.md, "Soft Deep R"."""
        kernel, args = self._kernel_args(deep_r_soft_update, w, state, group)
        theta_min = state.get("theta_min", -math.inf)
        if kernel is not deep_r_soft_update:
            theta_min = self.scalar(theta_min, w)
        kernel(w, state["sign"], state["active"], state["strength"], state["exp_avg"], *args, theta_min)


def restore_generator(generator, state):
    """Restore `generator` (a torch.Generator) from `state` (a uint8 tensor of
    `Generator.get_state()`).

    A state saved from a generator of another kind (docs/method.md, "Randomness": a CPU
    generator's state is 5,056 bytes, a CUDA one's 16), e.g. a CPU run's checkpoint resumed in
    a CUDA process, cannot be restored. The generator then stays where it is and is seeded
    instead with :func:`seed_from_state`, with a warning: the resumed run draws reproducibly,
    but not the numbers the saving run would have drawn next.

    Raises:
        RuntimeError: the generator refuses a state of its own size (a damaged state).
    """
    own_size = generator.get_state().numel()
    if state.numel() == own_size:
        generator.set_state(state)
        return
    seed = seed_from_state(state)
    generator.manual_seed(seed)
    warnings.warn(f"Deep R: the saved generator state ({state.numel()} bytes) is not one "
                  f"of this run's {generator.device} generator ({own_size} bytes), saved on "
                  f"another kind of device; the generator was seeded from it instead ({seed}), so "
                  f"the draws after the resume differ from those of a run that stayed on one device",
                  stacklevel=3)


def reactivated(generator, dormant, k, p):
    """Hard Deep R step 6's draws: which dormant synapses to reactivate, each with probability p.

    Args:
        generator: the optimizer's torch.Generator.
        dormant: bool tensor shaped like `w`, on `w`'s device, True where `w == 0`.
        k: the number of True elements of `dormant` (an int, known on the host).
        p: the probability, 0 < p <= 1.

    Returns:
        Bool tensor like `dormant`, True only where `dormant` is. With the generator on
        `dormant`'s device, one float32 uniform draw per element, as docs/method.md
        "Randomness" orders them. Otherwise :func:`bernoulli_positions` picks among the k
        dormant synapses (in flattened order) on the generator's device, and only those
        positions travel to `dormant`'s device (one small copy instead of numel draws).
    """
    if _same_device(generator.device, dormant.device):
        draws = torch.rand(dormant.shape, generator=generator, device=generator.device, dtype=torch.float32)
        return dormant & (draws.to(dormant.device) < p)
    chosen = bernoulli_positions(k, p, generator).to(dormant.device)
    flat = dormant.flatten()
    hit = torch.zeros(k, dtype=torch.bool, device=dormant.device)
    hit[chosen] = True                                   # by rank among the dormant
    rank = flat.cumsum(0) - 1                            # rank of each dormant synapse
    return (flat & hit[rank.clamp_(min=0)]).view_as(dormant)


def seed_from_state(state):
    """A 64-bit seed from a generator state (uint8 tensor, any device): the first 8 bytes of
    its SHA-256, little-endian (docs/method.md, "Randomness")."""
    digest = hashlib.sha256(state.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


def _same_device(a, b):
    """Whether devices `a` and `b` are one (a device without an index is the current one)."""
    if a.type != b.type:
        return False
    if a.type == "cpu" or a.index == b.index:
        return True
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def bernoulli_positions(k, p, generator):
    """The positions of the successes among k independent Bernoulli(p) trials, drawn as the
    gaps between them (docs/method.md, "Randomness"): about k * p draws instead of k.

    Each uniform draw u in [0, 1) (float64, from `generator`, on its device) gives a gap of
    `floor(log1p(-u) / log1p(-p))` failures, geometric with P(gap >= g) = (1 - p)**g, so the
    positions have exactly the law of k separate trials. The first success is at the first
    gap, each next one at the previous position + gap + 1. The draws come in batches of
    `int(k * p + 4 * sqrt(k * p) + 16)`, batch after batch until a position reaches k; the
    positions from k on are dropped (with them the rest of the last batch).

    Args:
        k: the number of trials, an int >= 0.
        p: the success probability, 0 < p <= 1. With p == 1 every position is returned and
            nothing is drawn.
        generator: a torch.Generator.

    Returns:
        int64 tensor [r] on the generator's device: the r success positions, ascending, in
        [0, k).

    Raises:
        ValueError: p outside (0, 1] or k < 0.
    """
    check_arg("p (probability)", p, "0 < p <= 1", lambda v: 0 < v <= 1)
    check_arg("k (trials)", k, "k >= 0", lambda v: v >= 0)
    device = generator.device
    if p == 1 or k == 0:
        return torch.arange(k, device=device)
    log_q = math.log1p(-p)
    batch = int(k * p + 4 * math.sqrt(k * p) + 16)
    found, start = [], 0                                      # start: position after the last success
    while start < k:
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        gaps = torch.floor(torch.log1p(-u) / log_q)
        positions = start + torch.cumsum(gaps + 1, 0) - 1
        found.append(positions)
        start = int(min(positions[-1].item(), k)) + 1       # min: a gap may be huge (inf)
    positions = torch.cat(found)
    return positions[positions < k].long()


def deep_r_hard_update(w, sign, active, m, v_sqrt, step, bc2_sqrt, eps, l1_step, noise_scale, noise):
    """Steps 1-4 of hard Deep R (docs/method.md, "Hard Deep R") on one tensor, in place.

    Args:
        w: the weights; sign, active (0/1), m (Adam's first moment), v_sqrt (sqrt of the
            second), noise (N(0, 1) draws, or None when T == 0): tensors shaped like `w`.
        step, bc2_sqrt, eps: Adam's `lr / (1 - b1**t)`, `sqrt(1 - b2**t)` and eps;
        l1_step: `-step * l1`; noise_scale: `T * sqrt(step)` (a float when there is noise).
    """
    v = w - adam_term(m, v_sqrt, step, bc2_sqrt, eps) * active     # 1. gradient, active only
    v = v + (sign * active) * l1_step                              # 2. L1 pull towards 0
    if noise is not None:                                          # 3. noise
        v = torch.add(v, noise * active, alpha=noise_scale)
    w.copy_(sign * (sign * v * active).clamp(min=0))               # 4. sign flip -> dormant


def deep_r_soft_update(w, sign, active, theta, m, v_sqrt, step, bc2_sqrt, eps, l1_step, noise_scale,
                       noise, theta_min):
    """Steps 1-4 of soft Deep R (docs/method.md, "Soft Deep R") on one tensor, in place;
    arguments as :func:`deep_r_hard_update`, plus theta (the strength, overwritten) and
    theta_min (-inf when there is no floor)."""
    u = sign * theta                                               # 1.
    u = u - adam_term(m, v_sqrt, step, bc2_sqrt, eps) * active     # 2. gradient, active only
    u = u + (sign * active) * l1_step                              #    L1 pull towards 0
    if noise is not None:                                          #    noise, every synapse
        u = torch.add(u, noise, alpha=noise_scale)
    theta.copy_((sign * u).clamp(min=theta_min))                   # 3.
    w.copy_(sign * theta.clamp(min=0))                             # 4.
    active.copy_(w != 0)
