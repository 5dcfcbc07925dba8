"""The spiking-network pieces shared by the experiments' networks and the engine.

- :func:`lif` (``snn.neurons``): a layer of LIF neurons configured as the released
  experiments configure them (``docs/method.md``, "Neurons");
- :class:`StepwiseBatchNorm2d` and :class:`StepwiseSyncBatchNorm2d` (``snn.batchnorm``):
  BatchNorm applied per time step, alone or synchronised over torchrun's ranks;
- :func:`synapses` / :func:`non_synapses`: which parameters are synapses, the ones the
  rewiring optimizers prune.
"""
from __future__ import annotations

import torch.nn as nn

from snn.batchnorm import StepwiseBatchNorm2d, StepwiseSyncBatchNorm2d, convert_sync_batchnorm
from snn.neurons import UnbindLIFNode, lif

__all__ = ['StepwiseBatchNorm2d', 'StepwiseSyncBatchNorm2d', 'UnbindLIFNode', 'convert_sync_batchnorm',
           'lif', 'non_synapses', 'synapses']


def synapses(model: nn.Module) -> dict[str, nn.Parameter]:
    """The synapses of ``model``, by parameter name: every parameter with more than one
    dimension (the weights of convolutions and linear layers), in the model's order."""
    return {n: p for n, p in model.named_parameters() if p.dim() > 1}


def non_synapses(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that are never pruned: the 1-D ones (BatchNorm weights and biases)."""
    return [p for p in model.parameters() if p.dim() <= 1]
