"""The MNIST spiking network of the Grad R experiments: 784-800-10 LIF neurons, no biases.

Source: Chen et al., IJCAI 2021, section 5 (MNIST: a fully connected SNN with one hidden
layer of 800 neurons) and the experiment conventions in ``docs/method.md``, "Networks".
"""
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer

from snn import lif


class MNISTSNN(nn.Module):
    """Fully connected SNN 784-800-10 for MNIST, without biases.

    ``static_fc`` (Flatten, Linear 784->800) is evaluated once per image; its output is the
    constant input current of the 800 hidden LIF neurons for ``T`` time steps. ``fc`` holds
    hidden LIF, Linear 800->10 and the 10 output LIF neurons. Synapse parameters (state-dict
    keys): ``static_fc.1.weight`` [800, 784] and ``fc.1.weight`` [10, 800].

    Args:
        T: number of simulation time steps (>= 1).
        multi_step: ``True`` runs all T steps in one call of SpikingJelly's multi-step mode
            (the fast path); ``False`` loops over T in single-step mode (the reference).
        tau, v_threshold, v_reset: LIF membrane time constant, threshold and reset potential.

    Call ``spikingjelly.activation_based.functional.reset_net(model)`` after each batch:
    the membrane potentials persist between calls until then.
    """

    def __init__(self, T: int = 8, multi_step: bool = True, tau: float = 2.0,
                 v_threshold: float = 1.0, v_reset: float = 0.0):
        super().__init__()
        if T < 1:
            raise ValueError(f'T (time steps) must be >= 1, got {T}')
        self.T = T
        self.multi_step = multi_step
        self.static_fc = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 800, bias=False))
        self.fc = nn.Sequential(
            lif(tau, v_threshold, v_reset),
            layer.Linear(800, 10, bias=False),
            lif(tau, v_threshold, v_reset),
        )
        functional.set_step_mode(self.fc, 'm' if multi_step else 's')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output firing rates.

        Args:
            x: images, shape [N, 1, 28, 28] (or [N, 784]), normalised.

        Returns:
            Spike count of each output neuron divided by T, shape [N, 10], values in [0, 1].
        """
        current = self.static_fc(x)                      # [N, 800], constant over time
        if self.multi_step:
            current_seq = current.unsqueeze(0).expand(self.T, *current.shape)
            return self.fc(current_seq).mean(0)          # [T, N, 10] -> [N, 10]
        spike_count = 0.
        for _ in range(self.T):
            spike_count = spike_count + self.fc(current)
        return spike_count / self.T
