"""The optimizers of a run: the method's optimizer for the synapses (``engine.methods``),
plain Adam for the parameters that are never pruned (``docs/method.md``, "BatchNorm")."""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.config import RunConfig
from snn import non_synapses


def make_optimizers(config: RunConfig, model: nn.Module, steps_per_epoch: int) -> dict[str, torch.optim.Optimizer]:
    """``{'synapse': the method's optimizer of the synapses}`` (``Method.optimizer``, which
    may reparameterise the model's synapses first) plus ``'bn'``, a plain Adam with the same
    learning rate for the never-pruned parameters, when the model has any.
    ``steps_per_epoch``: training steps per epoch, for methods with a schedule."""
    optimizers = {'synapse': config.method.optimizer(config, model, steps_per_epoch)}
    others = non_synapses(model)
    if others:
        optimizers['bn'] = torch.optim.Adam(others, lr=config.lr)
    return optimizers
