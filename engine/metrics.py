"""What a run measures: sparsity, prune and regrow counts, firing rates, test accuracy.

Definitions: ``docs/method.md``, "Experiment conventions". A synapse is linked while
``|w| >= 1e-10``; sparsity is the fraction of synapses that are not linked.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine import safety
from engine.distributed import all_sum
from snn import non_synapses, synapses

LINK_THRESHOLD = 1e-10
"""A synapse is linked while ``|w| >= LINK_THRESHOLD``."""


def linked(p: torch.Tensor) -> torch.Tensor:
    """Bool mask of linked synapses, ``|w| >= 1e-10``, shaped like ``p``."""
    return p.detach().abs() >= LINK_THRESHOLD


def sparsity_report(model: nn.Module) -> dict:
    """Sparsity (fraction of ``|w| < 1e-10``) per synapse tensor and overall.

    Returns ``{'layers': {name: float}, 'overall': float}``, plus ``'with_bn'`` when the
    model has non-synapse parameters: pruned synapses over all parameters, BatchNorm in the
    denominator only, never counted as pruned (``docs/method.md``, "BatchNorm").
    ``'overall'`` counts the synapses only ("without bn").
    """
    syn = synapses(model)
    layers, zeros, total = {}, 0, 0
    for name, p in syn.items():
        z = int((~linked(p)).sum())
        layers[name] = z / p.numel()
        zeros, total = zeros + z, total + p.numel()
    report = {'layers': layers, 'overall': zeros / total}
    others = non_synapses(model)
    if others:
        report['with_bn'] = zeros / (total + sum(p.numel() for p in others))
    return report


def prune_regrow_counts(model: nn.Module, before: dict[str, torch.Tensor]) -> dict:
    """Synapses pruned and regrown per tensor since ``before`` (name -> linked mask).

    ``before`` is updated in place to today's masks. Returns
    ``{name: {'pruned': int, 'regrown': int}}``: pruned = linked before and not now,
    regrown = not linked before and linked now.
    """
    counts = {}
    for name, p in synapses(model).items():
        now = linked(p)
        counts[name] = {'pruned': int((before[name] & ~now).sum()),
                        'regrown': int((~before[name] & now).sum())}
        before[name] = now
    return counts


class FiringRateMonitor:
    """Counts spikes of every LIF layer on the device during an evaluation pass.

    Forward hooks on each ``spikingjelly`` spiking neuron module (multi-step mode, output
    [T, N, *shape]) accumulate per-neuron spike counts over the evaluation pass, in float32
    whatever the spikes' dtype (exact up to 2**24 spikes per neuron); nothing is copied to
    the host until :meth:`results`. Use as a context manager around the evaluation loop.

    Raises:
        RuntimeError (during the forward pass): a layer's output is not [T, N, ...].
    """

    def __init__(self, model: nn.Module):
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, neuron.BaseNode)}
        self.spikes, self.samples, self.T = {}, 0, None
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, out):
            if out.dim() < 3:
                raise RuntimeError(f'{name}: FiringRateMonitor needs multi-step mode, output [T, N, ...]')
            # [*shape] spike counts, summed in float32: under --amp the spikes are bfloat16,
            # which holds integers exactly only up to 256 (7997 spikes would become 8000)
            spikes = out.detach().sum((0, 1), dtype=torch.float32)
            if name not in self.spikes:
                self.spikes[name] = torch.zeros(spikes.shape, device=out.device)
            self.spikes[name] += spikes
            self.T = out.shape[0]
        return hook

    def count_samples(self, n: int) -> None:
        """Add the ``n`` samples of the batch just simulated to the denominator of the rates."""
        self.samples += n

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def reduce(self) -> 'FiringRateMonitor':
        """Sum the spike and sample counts over the processes of a distributed run, in place
        (nothing in one process); returns ``self``."""
        for name in sorted(self.spikes):
            all_sum(self.spikes[name])
        if self.spikes:
            device = next(iter(self.spikes.values())).device
            self.samples = int(all_sum(torch.tensor(self.samples, device=device)))
        return self

    def results(self) -> dict:
        """``{layer: {'avg_firing_rate', 'nonfire_prop', 'per_neuron'}}``.

        ``avg_firing_rate``: spikes per neuron per time step, averaged over neurons and
        samples; ``nonfire_prop``: fraction of the layer's neurons that never fire on any
        sample of the pass (spike count summed over all samples and steps is 0), as the
        release defines it (``docs/method.md``, "Logging"); ``per_neuron``: numpy array
        [*neuron shape], spikes per time step per sample.
        """
        out = {}
        for name, spikes in self.spikes.items():
            per_neuron = (spikes / (self.samples * self.T)).cpu().numpy()
            out[name] = {'avg_firing_rate': float(per_neuron.mean()),
                         'nonfire_prop': float((per_neuron == 0).mean()),
                         'per_neuron': per_neuron}
        return out


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = 'test',
             amp: bool = False):
    """Evaluate ``model`` on ``loader`` in evaluation mode, without gradients (under bfloat16
    autocast with ``amp``). In a distributed run each process evaluates its own batches and
    the counts are summed over the processes.

    Returns:
        ``(accuracy, rates)``: the fraction of samples whose arg-max output firing rate (=
        spike count) is the label, and :meth:`FiringRateMonitor.results` of every LIF layer.
    """
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with FiringRateMonitor(model) as monitor:
        for img, label in tqdm(loader, desc=desc, leave=False, disable=None):
            safety.poll_interrupted()
            img, label = img.to(device, non_blocking=True), label.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                correct += (model(img).argmax(1) == label).sum()
            monitor.count_samples(label.numel())
            functional.reset_net(model)
    correct = all_sum(correct)
    return int(correct) / monitor.reduce().samples, monitor.results()
