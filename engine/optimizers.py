"""The optimizers of a run: a rewiring optimizer (or plain Adam) for the synapses, plain
Adam for the parameters that are never pruned (``docs/method.md``, "BatchNorm")."""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from deeprewire import DeepRewiring
from gradrewire import GradRewiring


def synapses(model: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable parameters: every parameter with more than one dimension (conv/linear)."""
    return {n: p for n, p in model.named_parameters() if p.dim() > 1}


def non_synapses(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that are never pruned (BatchNorm weights and biases): 1-D ones."""
    return [p for p in model.parameters() if p.dim() <= 1]


def make_synapse_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    """The optimizer of the synapses (weights) for ``-m`` grad, deep or no_prune.

    Raises:
        ValueError: from the optimizer when -s / -penalty / -lr are out of range.
    """
    compiled = bool(getattr(args, 'compile', False))
    if args.m == 'grad':
        return GradRewiring(params, lr=args.lr, alpha=args.penalty, s=args.s, compiled=compiled)
    if args.m == 'deep':
        # Draws on the run's device (args.device, a torch.device after validate()); under
        # torchrun on the CPU, so that every process draws the same numbers.
        on = 'cpu' if getattr(args, 'distributed', False) else args.device
        generator = torch.Generator(device=on).manual_seed(args.seed)
        return DeepRewiring(params, lr=args.lr, T=0, l1=args.penalty, max_s=args.s, soft=args.soft,
                            regrowth=args.deepr_regrowth, generator=generator, compiled=compiled)
    return torch.optim.Adam(params, lr=args.lr)


def make_optimizers(args: argparse.Namespace, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """``{'synapse': ...}`` plus ``'bn'``, a plain Adam with the same learning rate for the
    never-pruned parameters, when the model has any."""
    optimizers = {'synapse': make_synapse_optimizer(args, list(synapses(model).values()))}
    others = non_synapses(model)
    if others:
        optimizers['bn'] = torch.optim.Adam(others, lr=args.lr)
    return optimizers
