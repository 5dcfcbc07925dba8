"""BatchNorm for spiking networks in multi-step mode: each time step normalised with its own
batch statistics (:class:`StepwiseBatchNorm2d`, the released networks' behaviour), and its
variant synchronised over the ranks of a torchrun run (:class:`StepwiseSyncBatchNorm2d`,
``--sync-bn``).

SpikingJelly's ``layer.BatchNorm2d`` pools the T steps, and
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` would drop the per-step behaviour, so
:func:`convert_sync_batchnorm` puts :class:`StepwiseSyncBatchNorm2d` in place of each
BatchNorm, which normalises each step with the statistics of the whole global batch, as a
single process does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from spikingjelly.activation_based import base, layer


class StepwiseBatchNorm2d(layer.BatchNorm2d):
    """BatchNorm2d whose multi-step forward normalises each time step separately.

    SpikingJelly's ``layer.BatchNorm2d`` in multi-step mode flattens [T, N, C, H, W]
    to [T*N, C, H, W] and so pools the batch statistics of all T steps and updates
    the running statistics once. The released network instead calls the batch
    norm once per time step. This subclass reproduces that: in multi-step mode
    and when batch statistics are used (training, or no running statistics), it
    applies the ordinary single-step batch norm to x[0], x[1], ..., x[T-1] in
    order, i.e. per-step mean/variance over (N, H, W) and T running-statistics
    updates per call.

    In evaluation mode with running statistics the normalisation is the same
    affine map for every step, so the pooled [T*N] call of the parent is used.

    Parameters and buffers are those of ``torch.nn.BatchNorm2d`` (weight, bias,
    running_mean, running_var, num_batches_tracked), so state-dict keys are
    unchanged.

    Shapes: single-step [N, C, H, W] -> [N, C, H, W];
            multi-step [T, N, C, H, W] -> [T, N, C, H, W].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x``: [N, C, H, W] in single-step mode, [T, N, C, H, W] in multi-step.

        Raises:
            ValueError: an unknown step mode, or a multi-step input that is not 5-D.
        """
        if self.step_mode == 's':
            return super().forward(x)
        if self.step_mode != 'm':
            raise ValueError(f'unknown step_mode {self.step_mode!r}')
        if x.dim() != 5:
            raise ValueError(f'expected x with shape [T, N, C, H, W], got {tuple(x.shape)}')
        uses_batch_statistics = self.training or self.running_mean is None
        if not uses_batch_statistics:
            return super().forward(x)
        # one ordinary (single-step) batch norm call per time step, in time order;
        # unbind (not x[t]) so that backward stacks the T gradients once
        return torch.stack([nn.BatchNorm2d.forward(self, x_t) for x_t in x.unbind(0)])


class _GatherStats(torch.autograd.Function):
    """All-gather of a 1-D statistics tensor [S] into [K, S], differentiable: the gradient
    of a rank's own row is the sum over the ranks of their gradients of that row."""

    @staticmethod
    def forward(ctx, stats, group):
        ctx.group = group
        rows = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, stats.contiguous(), group=group)
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


class StepwiseSyncBatchNorm2d(nn.BatchNorm2d, base.StepModule):
    """BatchNorm2d whose batch statistics are those of the global batch over all ranks,
    per time step.

    In training, multi-step input [T, N, C, H, W] is normalised one time step at a time, as
    :class:`StepwiseBatchNorm2d` does in one process: each step's mean and variance over
    (N, H, W) of every rank's N samples, and T running-statistics updates per call, in time
    order, with the unbiased variance of the global count. Single-step input [N, C, H, W] is
    one such call. In evaluation the running statistics are used, with no communication.

    On every device each rank's per-channel (count, mean, biased variance) are all-gathered
    and combined (the parallel variance formula), differentiably, with no host sync. (Torch's
    own synchronised batch norm, the autograd function behind ``torch.nn.SyncBatchNorm``,
    drops empty ranks' statistics with a boolean mask, a host sync on each of the ~41 calls
    of a CIFAR-10 step and a data-dependent shape for ``torch.compile``; it does not run on
    the CPU either.) Without a process group of more than one rank it is an ordinary
    BatchNorm2d. It is not an ``nn.SyncBatchNorm`` subclass, which DistributedDataParallel
    refuses on the CPU.

    Parameters, buffers and state-dict keys are those of ``torch.nn.BatchNorm2d``.

    Shapes: ``step_mode`` 's': [N, C, H, W] -> same; 'm': [T, N, C, H, W] -> same.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 step_mode: str = 's'):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group
        self.step_mode = step_mode

    @classmethod
    def replacing(cls, bn: nn.BatchNorm2d, step_mode: str = 's') -> 'StepwiseSyncBatchNorm2d':
        """A module that takes over ``bn``'s parameters (the same Parameter objects, so an
        optimizer made later or earlier sees them) and buffers, on their device."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  step_mode=step_mode)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        for name in ('running_mean', 'running_var', 'num_batches_tracked'):
            setattr(new, name, getattr(bn, name))
        new.train(bn.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` ([N, C, H, W] in step mode 's', [T, N, C, H, W] in 'm').

        Raises:
            ValueError: an unknown step mode, or an input of the wrong dimension.
        """
        if self.step_mode == 's':
            return self._step(x)
        if self.step_mode != 'm':
            raise ValueError(f'unknown step_mode {self.step_mode!r}')
        if x.dim() != 5:
            raise ValueError(f'expected x with shape [T, N, C, H, W], got {tuple(x.shape)}')
        if not self.training and self.running_mean is not None:
            return self._step(x.flatten(0, 1)).view(x.shape)
        return torch.stack([self._step(x_t) for x_t in x.unbind(0)])

    def _group(self):
        return self.process_group or dist.group.WORLD

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        group = self._group() if self.training and dist.is_available() and dist.is_initialized() else None
        if group is None or dist.get_world_size(group) < 2:
            return nn.BatchNorm2d.forward(self, x)
        self._check_input_dim(x)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return self._portable_step(x, factor, group)

    def _portable_step(self, x: torch.Tensor, factor: float, group) -> torch.Tensor:
        """One synchronised training call of :meth:`_step` on ``x`` [N, C, H, W], on any
        device: all-gather of each rank's per-channel statistics, no host sync.

        The statistics and the normalisation are computed in float32 for a bfloat16 or half
        ``x`` (under ``--amp``), as torch's batch-norm kernels accumulate; the output has
        ``x``'s dtype, as ``nn.BatchNorm2d``'s. For float32 input nothing is converted.
        ``factor`` is the running statistics' momentum for this call."""
        c = self.num_features
        dims = [0, *range(2, x.dim())]
        out_dtype = x.dtype
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        local = torch.cat([x.mean(dims), x.var(dims, unbiased=False),
                           x.new_full((1,), x.numel() // c)])
        rows = _GatherStats.apply(local, group)                        # [K, 2C + 1]
        counts = rows[:, -1:].detach()
        total = counts.sum()
        mean = (counts * rows[:, :c]).sum(0) / total
        var = (counts * (rows[:, c:2 * c] + (rows[:, :c] - mean) ** 2)).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (total / (total - 1)), alpha=factor)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(out_dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace, in place, every per-time-step BatchNorm (:class:`StepwiseBatchNorm2d`)
    and every plain ``nn.BatchNorm2d`` by :class:`StepwiseSyncBatchNorm2d` with the same
    step mode (a plain one is single-step), keeping parameters and buffers. Returns ``model``.

    Raises:
        ValueError: a SpikingJelly ``layer.BatchNorm2d`` in multi-step mode, which pools the T
            steps (there is no synchronised counterpart here), or a BatchNorm of another
            dimension.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, StepwiseSyncBatchNorm2d) or not isinstance(child, nn.modules.batchnorm._BatchNorm):
                continue
            full = f'{name}.{child_name}'.lstrip('.')
            mode = getattr(child, 'step_mode', 's')
            if not isinstance(child, nn.BatchNorm2d):
                raise ValueError(f'{full}: --sync-bn handles BatchNorm2d only, not {type(child).__name__}')
            if mode != 's' and not isinstance(child, StepwiseBatchNorm2d):
                raise ValueError(f'{full}: --sync-bn cannot synchronise a BatchNorm that pools the T steps')
            setattr(module, child_name, StepwiseSyncBatchNorm2d.replacing(child, mode))
    return model
