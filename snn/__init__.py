"""The spiking-network pieces shared by the experiments' networks and the engine.

- :func:`lif` (``snn.neurons``): a layer of LIF neurons configured as the released
  experiments configure them (``docs/method.md``, "Neurons");
- :class:`StepwiseBatchNorm2d` and :class:`StepwiseSyncBatchNorm2d` (``snn.batchnorm``):
  BatchNorm applied per time step, alone or synchronised over torchrun's ranks;
- :func:`synapses`, :func:`synapse_parameters` / :func:`non_synapses`: the synapses (the
  weights that pruning methods prune) and the parameters that are never pruned.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from snn.batchnorm import StepwiseBatchNorm2d, StepwiseSyncBatchNorm2d, convert_sync_batchnorm
from snn.neurons import UnbindLIFNode, lif

__all__ = ['StepwiseBatchNorm2d', 'StepwiseSyncBatchNorm2d', 'UnbindLIFNode', 'convert_sync_batchnorm',
           'lif', 'non_synapses', 'synapse_parameters', 'synapses']


def synapses(model: nn.Module) -> dict[str, torch.Tensor]:
    """The synapses of ``model`` as the network computes with them, by weight name, in the
    model's order: every parameter with more than one dimension (the weights of convolutions
    and linear layers). A weight reparameterised with ``torch.nn.utils.parametrize`` (STDS,
    ``stds.py``) is given as its effective value ``module.weight`` under its plain name
    (``<layer>.weight``), not as the free parameter behind it: what sparsity, synaptic
    operations and histograms measure. The parameters to optimise are
    :func:`synapse_parameters`."""
    out = {}
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            continue
        layer, hidden, rest = name.partition('.parametrizations.')
        if not hidden:
            out[name] = p
            continue
        tensor = rest.split('.')[0]
        out[f'{layer}.{tensor}'] = getattr(model.get_submodule(layer), tensor)
    return out


def synapse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the synapses, the ones a pruning method optimises: every parameter
    with more than one dimension (theta behind a reparameterised weight), in the model's
    order."""
    return [p for p in model.parameters() if p.dim() > 1]


def non_synapses(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that are never pruned: the 1-D ones (BatchNorm weights and biases)."""
    return [p for p in model.parameters() if p.dim() <= 1]
