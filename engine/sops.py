"""Synaptic operations (SOPs): the energy measure of a pruned spiking network.

A spike that arrives at a neuron's input costs one operation for every linked synapse
(``|w| >= 1e-10``, ``docs/method.md``, "Sparsity and rewiring counts") that carries it to a
neuron of the next layer. Per synapse layer and per image:

- Linear fed by spikes ``s`` [T, N, in] (or [T*N, in]): ``sum_t,n,i s_i * fan_out_i``, where
  ``fan_out_i`` counts the linked synapses leaving input ``i``; this equals
  ``(s @ mask.T).sum()``.
- Conv2d fed by a spike map: the sum over output positions and channels of the linked
  kernel taps that read a spiking input, i.e. ``conv2d(spikes, mask, stride, padding).sum()``
  (zero padding never spikes). Summing over output channels first,
  ``conv2d(spikes, mask.sum(out channels))`` gives the same number with one output channel,
  which is how it is computed here.

The first synapse layer (``static_fc.1`` for MNIST, ``static_conv.0`` for CIFAR-10,
``docs/method.md``, "Networks") reads the analog image once per image, not spikes: it is
counted apart as multiply-accumulates (MACs), its linked weights times its output positions
(1 for Linear, H_out * W_out for a convolution).

The same spikes with every synapse linked give the unpruned network's counts. Counting
hooks the synapse modules' forward passes, so it rides along an ordinary evaluation pass
(``engine.metrics.evaluate``); spike inputs are 0/1 only in evaluation mode (dropout off).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.distributed import all_sum
from engine.metrics import linked
from snn import synapses


def synapse_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: module}`` of every synapse tensor (``engine.optimizers.synapses``), in
    the model's order; SpikingJelly's ``layer.Linear``/``layer.Conv2d`` subclass these.

    Raises:
        ValueError: a synapse tensor that does not belong to an ``nn.Linear`` or
            ``nn.Conv2d`` with zero padding (its operations could not be counted).
    """
    owner = {f'{name}.weight': m for name, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))}
    modules = {}
    for name in synapses(model):
        m = owner.get(name)
        if m is None:
            raise ValueError(f'{name}: SOPs are counted for nn.Linear and nn.Conv2d weights only')
        if isinstance(m, nn.Conv2d) and m.padding_mode != 'zeros':
            raise ValueError(f'{name}: SOPs need zero padding, got {m.padding_mode!r}')
        modules[name] = m
    if not modules:
        raise ValueError('the model has no synapse tensors')
    return modules


class SynapticOpsMonitor:
    """Counts SOPs and first-layer MACs of the pruned and the unpruned network while the
    model runs, e.g. around :func:`engine.metrics.evaluate`.

    The linked masks are taken when counting starts (the weights must not change until it
    stops). Images are counted at the first synapse layer (its input's batch size), so the
    monitor works whatever loop feeds the model, multi-step or step by step. Sums stay on the
    device in float64 until :meth:`results`. The counting runs outside any autocast (in
    float32 and float64, exact for integers up to 2**24 per convolution output), so the counts
    are exact under ``--amp`` too.

    Use as a context manager (``with SynapticOpsMonitor(model) as ops: ...``) or with
    :meth:`start` and :meth:`stop`.

    Raises:
        ValueError: from :func:`synapse_modules`.
    """

    def __init__(self, model: nn.Module):
        self.modules = synapse_modules(model)
        self.first = next(iter(self.modules))
        self._handles = []
        self.images = 0
        self.sops, self.dense_sops, self.macs, self.dense_macs = {}, {}, 0, 0

    def _kernels(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept, dense) counting kernels of a spiking layer: for Linear the fan-out of each
        input [in]; for Conv2d the mask summed over each group's output channels
        [groups, C_in / groups, kh, kw]."""
        mask = linked(module.weight).to(torch.float32)
        dense = torch.ones_like(mask)
        if isinstance(module, nn.Linear):
            return mask.sum(0).double(), dense.sum(0).double()
        g = module.groups

        def per_group(m):
            return m.reshape(g, m.shape[0] // g, *m.shape[1:]).sum(1)
        return per_group(mask), per_group(dense)

    def _spike_hook(self, name: str, module: nn.Module):
        kept, dense = self._kernels(module)
        self.sops[name] = torch.zeros((), dtype=torch.float64, device=kept.device)
        self.dense_sops[name] = torch.zeros_like(self.sops[name])

        def hook(mod, inputs, out):
            x = inputs[0].detach()
            # The counts are exact integers only in float32/float64: under --amp the hook
            # runs inside the evaluation's bfloat16 autocast (spikes bfloat16, convolutions
            # cast to it), which holds integers exactly only up to 256.
            with torch.autocast(x.device.type, enabled=False):
                if isinstance(mod, nn.Linear):
                    per_input = x.reshape(-1, x.shape[-1]).sum(0, dtype=torch.float64)  # spikes per input
                    self.sops[name] += per_input @ kept
                    self.dense_sops[name] += per_input @ dense
                    return
                x = x.reshape(-1, *x.shape[-3:]).to(kept.dtype)         # [T*N, C, H, W], float32
                for total, kernel in ((self.sops, kept), (self.dense_sops, dense)):
                    reach = F.conv2d(x, kernel, None, mod.stride, mod.padding, mod.dilation, mod.groups)
                    total[name] += reach.double().sum()
        return hook

    def _first_hook(self, module: nn.Module):
        kept = int(linked(module.weight).sum())

        def hook(mod, inputs, out):
            n = inputs[0].shape[0]
            positions = 1 if isinstance(mod, nn.Linear) else out.shape[-2] * out.shape[-1]
            self.images += n
            self.macs += kept * positions * n
            self.dense_macs += mod.weight.numel() * positions * n
        return hook

    def start(self) -> 'SynapticOpsMonitor':
        """Take the linked masks and hook every synapse module; returns ``self``."""
        self.stop_hooks()
        self.images, self.macs, self.dense_macs = 0, 0, 0
        for name, m in self.modules.items():
            hook = self._first_hook(m) if name == self.first else self._spike_hook(name, m)
            self._handles.append(m.register_forward_hook(hook))
        return self

    def stop_hooks(self) -> None:
        """Remove the hooks (the counts stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def stop(self) -> dict:
        """Remove the hooks and return :meth:`results`."""
        self.stop_hooks()
        return self.results()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop_hooks()

    def reduce(self) -> 'SynapticOpsMonitor':
        """Sum the counts over the processes of a distributed run, in place (nothing in one
        process); returns ``self``."""
        for counts in (self.sops, self.dense_sops):
            for name in sorted(counts):
                all_sum(counts[name])
        device = next(iter(self.modules.values())).weight.device
        totals = all_sum(torch.tensor([self.images, self.macs, self.dense_macs], dtype=torch.int64, device=device))
        self.images, self.macs, self.dense_macs = (int(v) for v in totals)
        return self

    def results(self) -> dict:
        """The counts per image, averaged over the images seen.

        Returns ``{'per_layer': {weight name: SOPs}, 'total': SOPs, 'first_layer_macs':
        MACs, 'dense_per_layer', 'dense_total', 'dense_first_layer_macs'`` (the same with
        every synapse linked and the same spikes), ``'ratio'`` (total / dense_total, SOPs
        only; 0 when no spike arrived) and ``'images'``}``. ``per_layer`` omits the first
        layer, whose MACs are apart.

        Raises:
            RuntimeError: no image went through the model while counting.
        """
        if self.images == 0:
            raise RuntimeError('SynapticOpsMonitor: no image went through the model')
        per_layer = {n: float(v) / self.images for n, v in self.sops.items()}
        dense = {n: float(v) / self.images for n, v in self.dense_sops.items()}
        total, dense_total = sum(per_layer.values()), sum(dense.values())
        return {'per_layer': per_layer, 'total': total,
                'first_layer_macs': self.macs / self.images,
                'dense_per_layer': dense, 'dense_total': dense_total,
                'dense_first_layer_macs': self.dense_macs / self.images,
                'ratio': total / dense_total if dense_total else 0.0,
                'images': self.images}


def sops_lines(results: dict) -> list[str]:
    """The ``-test`` lines of :meth:`SynapticOpsMonitor.results`: SOPs per image per layer
    and in total, each beside the unpruned network's, with their ratio, and the first
    layer's MACs."""
    def ratio(a, b):
        return f'{a / b:.4f}' if b else 'n/a'
    lines = [f"SOPs/image {name}: {v:.1f} (unpruned {results['dense_per_layer'][name]:.1f}, "
             f"ratio {ratio(v, results['dense_per_layer'][name])})"
             for name, v in results['per_layer'].items()]
    lines.append(f"SOPs/image total: {results['total']:.1f} (unpruned {results['dense_total']:.1f}, "
                 f"ratio {ratio(results['total'], results['dense_total'])})")
    lines.append(f"first-layer MACs/image: {results['first_layer_macs']:.1f} (unpruned "
                 f"{results['dense_first_layer_macs']:.1f}, ratio "
                 f"{ratio(results['first_layer_macs'], results['dense_first_layer_macs'])})")
    return lines
