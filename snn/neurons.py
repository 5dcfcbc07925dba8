"""The LIF neuron layer shared by the MNIST and CIFAR-10 networks.

Neuron model of the released experiments (``docs/method.md``, "Neurons"): LIF, membrane
time constant tau 2.0, threshold 1.0, hard reset to 0, reset detached from the graph, ATan
surrogate gradient; SpikingJelly's ``neuron.LIFNode`` provides the dynamics.
"""
import torch
from spikingjelly.activation_based import neuron, surrogate


class UnbindLIFNode(neuron.LIFNode):
    """SpikingJelly LIF neuron whose multi-step training loop slices time with unbind.

    Same neuron, same arithmetic and same state as ``neuron.LIFNode`` with the
    'torch' backend: the membrane potential is charged, compared with the
    threshold (spike = Heaviside(v - v_threshold), ATan surrogate gradient) and
    reset, one time step after the other, by the parent's
    ``single_step_forward``. The only difference is how the multi-step training
    forward takes the time steps out of the input x_seq [T, N, ...]: the parent
    indexes ``x_seq[t]``, whose backward (SelectBackward) allocates and fills a
    zero tensor of the full [T, N, ...] shape for every t, i.e. O(T^2) memory
    traffic, which dominated the CPU step time of this network. ``unbind``
    gives the same T views with a single gradient stack in backward. Forward
    values and gradients are identical; evaluation mode uses the parent's
    fused loop unchanged.
    """

    def v_float_to_tensor(self, x: torch.Tensor):
        """Make the membrane potential, a float after a reset, a tensor like ``x`` [N, *],
        in float32 (float64 for float64 input), whatever ``x``'s dtype.

        Under ``--amp`` the input currents are bfloat16. The parent makes ``v`` in ``x``'s
        dtype: its eager TorchScript charge then promotes ``v`` to float32, while
        ``torch.compile`` keeps it in bfloat16, so the state and the spikes depended on
        ``--compile``. A float32 ``v`` from the start makes both paths charge, fire and
        reset in float32 (the currents promoted), as without ``--amp``. For float32 input
        nothing changes.
        """
        if isinstance(self.v, float):
            dtype = torch.promote_types(x.dtype, torch.float32)
            self.v = torch.full_like(x.detach(), self.v, dtype=dtype)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Spikes [T, N, *] (0/1) for the input currents ``x_seq`` [T, N, *], step by step."""
        if not self.training or self.backend != 'torch':
            return super().multi_step_forward(x_seq)
        spikes = []
        v_seq = []
        for x_t in x_seq.unbind(0):
            spikes.append(self.single_step_forward(x_t))
            if self.store_v_seq:
                v_seq.append(self.v)
        if self.store_v_seq:
            self.v_seq = torch.stack(v_seq)
        return torch.stack(spikes)


def lif(tau: float = 2.0, v_threshold: float = 1.0, v_reset: float = 0.0) -> neuron.LIFNode:
    """One layer of LIF neurons as the released experiments configure them.

    ``tau`` is the membrane time constant in time steps; ``v_threshold`` and ``v_reset``
    are membrane potentials in the (dimensionless) units of the input current. Hard reset
    to ``v_reset`` after a spike, reset detached, ATan surrogate gradient, 'torch' backend.
    Input/output: [N, *] in single-step mode, [T, N, *] in multi-step mode (spikes, 0/1).
    """
    return UnbindLIFNode(tau=float(tau), v_threshold=v_threshold, v_reset=v_reset,
                         surrogate_function=surrogate.ATan(), detach_reset=True, backend='torch')
