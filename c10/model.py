"""Spiking CNN used for the CIFAR-10 experiments of Gradient Rewiring.

Architecture of the network released with Chen et al., "Pruning of Deep Spiking
Neural Networks through Gradient Rewiring" (IJCAI 2021), CIFAR-10 script:

    static_conv : Conv 3->256 (3x3, pad 1, no bias) + BN       evaluated once per input
    conv        : [LIF, Conv 256->256, BN] x 2, LIF, MaxPool 2  (32x32 -> 16x16)
                  [Conv 256->256, BN, LIF] x 3, MaxPool 2       (16x16 -> 8x8)
    fc          : Flatten, Dropout(0.5) (one mask per sample for all T steps),
                  Linear 16384->2048 (no bias), LIF, Linear 2048->100 (no bias), LIF
    boost       : the 100 output neurons averaged in groups of 10 -> 10 class scores

The output of ``static_conv`` is a constant input current fed to the first LIF
layer at every one of the T time steps (the image is not spike-encoded).

LIF neurons (SpikingJelly ``neuron.LIFNode``): membrane time constant tau = 2,
threshold 1, hard reset to 0, reset detached from the graph, ATan surrogate
gradient. The membrane potential is dimensionless (input current and potential
share the same unit; a spike is emitted when the potential reaches the
threshold).

Two numerically equivalent execution paths share the same modules:

* ``multi_step=True`` (fast path): SpikingJelly multi-step mode; every layer
  receives all T time steps at once as a tensor [T, N, ...]. Convolutions,
  pooling and linear layers process T*N samples in one call; LIF neurons loop
  over T internally.
* ``multi_step=False`` (reference path): a plain Python loop over the T time
  steps, every layer in single-step mode, as in the released code.

BatchNorm follows the released (single-step) semantics in both paths: during
training each time step is normalised with its own batch statistics and the
running statistics are updated once per time step (T updates per batch, in
time order). See :class:`StepwiseBatchNorm2d`.

State: LIF membrane potentials and the dropout mask persist across calls.
The caller must reset them after every batch with
``spikingjelly.activation_based.functional.reset_net(model)``.
"""
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer

from snn import StepwiseBatchNorm2d, lif


def _conv3x3() -> layer.Conv2d:
    return layer.Conv2d(256, 256, kernel_size=3, padding=1, bias=False)


class CIFAR10SNN(nn.Module):
    """Spiking CNN for CIFAR-10 (Gradient Rewiring release), output = firing rate.

    Args:
        T: number of simulation time steps.
        multi_step: True for the SpikingJelly multi-step fast path, False for the
            step-by-step reference loop. Both give the same results on the same
            weights (up to float rounding); can be changed later with
            :meth:`set_multi_step`.
        tau: membrane time constant of the LIF neurons (in time steps).
        v_threshold: firing threshold of the membrane potential.
        v_reset: membrane potential after a spike (hard reset).
        dropout: drop probability of the dropout in front of the first linear
            layer; one mask per sample is kept for all T steps of a forward.

    Weights: 36,715,264 in conv/linear layers (none has a bias) and 3,072
    BatchNorm affine parameters (6 BN layers x 256 channels x 2).

    State-dict keys: ``static_conv.0.weight``, ``static_conv.1.*``,
    ``conv.{1,4,8,11,14}.weight``, ``conv.{2,5,9,12,15}.*`` (BN),
    ``fc.2.weight``, ``fc.4.weight``.

    Usage::

        from engine.loop import rate_loss
        model = CIFAR10SNN(T=8)
        rate = model(images)            # [N, 10], spike count / T, in [0, 1]
        loss = rate_loss(rate, labels, 10)   # MSE against the one-hot labels
        ...
        functional.reset_net(model)     # REQUIRED after every batch
    """

    def __init__(self, T: int = 8, multi_step: bool = True, tau: float = 2.0,
                 v_threshold: float = 1.0, v_reset: float = 0.0, dropout: float = 0.5):
        super().__init__()
        if T < 1:
            raise ValueError(f'T must be >= 1, got {T}')
        self.T = int(T)

        def neurons():
            return lif(tau, v_threshold, v_reset)

        # evaluated once per input; its output is the constant input current
        self.static_conv = nn.Sequential(
            nn.Conv2d(3, 256, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(256),
        )
        self.conv = nn.Sequential(
            neurons(),                              # 0
            _conv3x3(), StepwiseBatchNorm2d(256),   # 1, 2
            neurons(),                              # 3
            _conv3x3(), StepwiseBatchNorm2d(256),   # 4, 5
            neurons(),                              # 6
            layer.MaxPool2d(2, 2),                  # 7   32x32 -> 16x16
            _conv3x3(), StepwiseBatchNorm2d(256),   # 8, 9
            neurons(),                              # 10
            _conv3x3(), StepwiseBatchNorm2d(256),   # 11, 12
            neurons(),                              # 13
            _conv3x3(), StepwiseBatchNorm2d(256),   # 14, 15
            neurons(),                              # 16
            layer.MaxPool2d(2, 2),                  # 17  16x16 -> 8x8
        )
        self.fc = nn.Sequential(
            layer.Flatten(),                                      # 0  256*8*8 = 16384
            layer.Dropout(dropout),                               # 1  one mask for all T steps
            layer.Linear(256 * 8 * 8, 128 * 4 * 4, bias=False),   # 2  16384 -> 2048
            neurons(),                                            # 3
            layer.Linear(128 * 4 * 4, 100, bias=False),           # 4  2048 -> 100
            neurons(),                                            # 5
        )
        # 100 output neurons -> 10 class scores (mean of each group of 10)
        self.boost = nn.AvgPool1d(10, 10)
        self.set_multi_step(multi_step)

    def set_multi_step(self, multi_step: bool) -> None:
        """Select the fast multi-step path (True) or the step-by-step loop (False).

        Call only between batches (after ``reset_net``)."""
        self.multi_step = bool(multi_step)
        mode = 'm' if self.multi_step else 's'
        functional.set_step_mode(self.conv, mode)
        functional.set_step_mode(self.fc, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Simulate T time steps.

        Args:
            x: normalised images, shape [N, 3, 32, 32].

        Returns:
            Output firing rate per class, shape [N, 10]: spike count of the
            output layer summed over the T steps, averaged over each group of 10
            output neurons, divided by T (values in [0, 1]).

        Membrane potentials and the dropout mask are left in the modules; reset
        them with ``functional.reset_net(model)`` before the next batch.
        """
        if x.dim() != 4:
            raise ValueError(f'expected x with shape [N, 3, 32, 32], got {tuple(x.shape)}')
        current = self.static_conv(x)  # [N, 256, 32, 32], constant over time
        if self.multi_step:
            # [T, N, 256, 32, 32] view without copy: the same current at every step
            current_seq = current.unsqueeze(0).expand(self.T, *current.shape)
            out_spikes = self.fc(self.conv(current_seq))      # [T, N, 100]
            rate = out_spikes.mean(0)                         # [N, 100]
            return self.boost(rate.unsqueeze(1)).squeeze(1)   # [N, 10]
        spike_count = None
        for _ in range(self.T):
            out_spikes = self.fc(self.conv(current))          # [N, 100]
            scores = self.boost(out_spikes.unsqueeze(1)).squeeze(1)  # [N, 10]
            spike_count = scores if spike_count is None else spike_count + scores
        return spike_count / self.T
