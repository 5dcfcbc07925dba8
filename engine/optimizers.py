"""The optimizers of a run: the method's optimizer for the synapses (``engine.methods``),
plain Adam for the parameters that are never pruned (``docs/method.md``, "BatchNorm")."""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.config import RunConfig
from snn import non_synapses, synapses


def make_optimizers(config: RunConfig, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """``{'synapse': the method's optimizer of the synapses}`` plus ``'bn'``, a plain Adam
    with the same learning rate for the never-pruned parameters, when the model has any."""
    optimizers = {'synapse': config.method.optimizer(config, list(synapses(model).values()))}
    others = non_synapses(model)
    if others:
        optimizers['bn'] = torch.optim.Adam(others, lr=config.lr)
    return optimizers
