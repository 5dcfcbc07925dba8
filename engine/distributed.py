"""One run trained by several processes under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node K mnist/mnist.py ...`` (or ``c10/c10.py``, also across nodes)
starts K processes, the *ranks*, that train one run together; a plain ``python mnist/mnist.py``
stays a single process. The engine detects torchrun from the environment it sets
(``WORLD_SIZE`` > 1, or ``WORLD_SIZE`` = 1 with ``TORCHELASTIC_RUN_ID``) and then, through the
:class:`Context` of this module:

- checks that K divides ``-b`` (the global batch), before any file is written;
- gives each rank ``cuda:LOCAL_RANK`` and NCCL on CUDA, gloo on the CPU;
- wraps the network in ``DistributedDataParallel`` (gradients averaged over the ranks, so the
  rewiring optimizers take the same step everywhere) and, with ``--compile``, compiles the
  wrapped module;
- with ``--sync-bn`` replaces each BatchNorm by :class:`StepwiseSyncBatchNorm2d`, which
  normalises every time step with the statistics of the whole global batch;
- hands each rank its slice ``[r*b/K, (r+1)*b/K)`` of every global batch of the single-process
  order (device pipeline), and a contiguous shard of the test set, whose counts are summed
  over the ranks (accuracy, firing rates and SOPs are those of one process);
- lets only rank 0 write files and console lines, and makes every rank stop together on a
  NaN/Inf, a locked run or a checkpoint that cannot be used;
- after each epoch compares a checksum of the weights over the ranks (:class:`RanksDiverged`).

Everything is a no-op in a single process (``Context()``, :func:`current` outside torchrun).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from spikingjelly.activation_based import base
from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBatchNorm
from torch.utils.data import DataLoader, DistributedSampler, Subset

from engine import checkpoint as ckpt_io
from engine import safety
from engine.cli import UsageError
from engine.data import DevicePipeline, make_loader


class RanksDiverged(Exception):
    """The weights of the ranks differ after an epoch (exit status 1); one line."""


# ---------------------------------------------------------------- BatchNorm over all ranks

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
    ``c10.model.StepwiseBatchNorm2d`` does in one process: each step's mean and variance over
    (N, H, W) of every rank's N samples, and T running-statistics updates per call, in time
    order, with the unbiased variance of the global count. Single-step input [N, C, H, W] is
    one such call. In evaluation the running statistics are used, with no communication.

    On CUDA each step is torch's own synchronised batch norm (the autograd function that
    ``torch.nn.SyncBatchNorm.forward`` calls, NCCL). On other devices, where that function
    does not run, each rank's per-channel (count, mean, biased variance) are all-gathered and
    combined (the parallel variance formula), differentiably. Without a process group of more
    than one rank it is an ordinary BatchNorm2d. It is not an ``nn.SyncBatchNorm`` subclass,
    which DistributedDataParallel refuses on the CPU.

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
        if x.device.type == 'cuda':
            running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
            return _TorchSyncBatchNorm.apply(x, self.weight, self.bias, *running, self.eps, factor,
                                             group, dist.get_world_size(group))
        return self._portable_step(x, factor, group)

    def _portable_step(self, x: torch.Tensor, factor: float, group) -> torch.Tensor:
        """One synchronised training call on a device without torch's kernels (the CPU)."""
        c = self.num_features
        dims = [0, *range(2, x.dim())]
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
        return y


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace, in place, every per-time-step BatchNorm (``c10.model.StepwiseBatchNorm2d``)
    and every plain ``nn.BatchNorm2d`` by :class:`StepwiseSyncBatchNorm2d` with the same
    step mode (a plain one is single-step), keeping parameters and buffers. Returns ``model``.

    Raises:
        ValueError: a SpikingJelly ``layer.BatchNorm2d`` in multi-step mode, which pools the T
            steps (there is no synchronised counterpart here), or a BatchNorm of another
            dimension.
    """
    from c10.model import StepwiseBatchNorm2d
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


# ---------------------------------------------------------------- the NaN/Inf watch of all ranks

class SharedWatch(safety.NonFiniteWatch):
    """``engine.safety.NonFiniteWatch`` whose :meth:`check` reads every rank's flag (one
    all-gather), so that all ranks stop at the same check point, naming the first bad step
    over the ranks."""

    def check(self) -> None:
        """Raises:
            engine.safety.NonFinite: the loss or a weight of some rank became NaN or Inf.
        """
        mine = torch.stack([self.first, self.kind])
        rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, mine)
        bad = [(int(f), int(k)) for f, k in torch.stack(rows).tolist() if f >= 0]
        if bad:
            first, kind = min(bad)
            raise safety.NonFinite(first, 'loss' if kind == self.LOSS else 'weights')


# ---------------------------------------------------------------- the run's view of its ranks

_NO_FORWARD_BUFFER_SYNC = ({'forward_sync_buffers': False}
                           if 'forward_sync_buffers' in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                           else {'broadcast_buffers': False})
"""DistributedDataParallel's option that keeps it from copying rank 0's buffers at every
forward: ``forward_sync_buffers`` where torch has it (``broadcast_buffers`` is deprecated),
else ``broadcast_buffers``."""


def _derived_seed(*keys: int) -> int:
    """A 32-bit seed from integers (NumPy's SeedSequence: independent streams per key)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class _NotATerminal:
    """A stream wrapper whose ``isatty()`` is False: progress bars stay off on ranks > 0,
    while tracebacks still reach the stream."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


class NullWriter:
    """A TensorBoard writer that writes nothing (ranks > 0)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    add_histogram = add_scalar

    def flush(self) -> None:
        pass

    close = flush


@dataclass
class Context:
    """Where this process stands in the run: ``world_size`` K, its ``rank``, its
    ``local_rank`` on its node and the number of ranks there; ``active`` under torchrun.

    The default is one process. :meth:`from_env` reads torchrun's environment; :meth:`start`
    joins the process group.
    """
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    active: bool = False

    @classmethod
    def from_env(cls, environ=None) -> 'Context':
        """The context of this process from torchrun's variables (``WORLD_SIZE``, ``RANK``,
        ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); single-process when ``WORLD_SIZE`` is unset,
        or 1 outside torchrun (no ``TORCHELASTIC_RUN_ID``)."""
        env = os.environ if environ is None else environ
        k = int(env.get('WORLD_SIZE', '1') or 1)
        if k <= 1 and 'TORCHELASTIC_RUN_ID' not in env:
            return cls()
        return cls(world_size=k, rank=int(env.get('RANK', 0)), local_rank=int(env.get('LOCAL_RANK', 0)),
                   local_world_size=int(env.get('LOCAL_WORLD_SIZE', k)), active=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and console lines."""
        return self.rank == 0

    # ---------------------------------------------------------------- setting up

    def share_cores(self, args) -> None:
        """Before ``validate``: without ``--threads``, each of the node's ranks gets an equal
        share of its CPU cores (at least 1), so that the ranks do not oversubscribe them."""
        if self.active and args.threads is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
            args.threads = max(1, cores // self.local_world_size)

    def start(self, args) -> None:
        """After ``validate``: check the flags against K, choose this rank's device, join the
        process group; sets ``args.distributed`` and ``args.world_size``. Makes this the
        :func:`current` context. Ranks > 0 print nothing on stdout from here on.

        Raises:
            UsageError: K does not divide ``-b``; ``-gpu``/``--device cuda:ID`` under torchrun;
                fewer CUDA devices on the node than ranks.
        """
        global _current
        args.distributed, args.world_size = self.active, self.world_size
        _current = self
        if not self.active:
            return
        k = self.world_size
        if args.b % k:
            raise UsageError(f'-b {args.b}: the global batch must be a multiple of the {k} '
                             f'processes (each takes b/{k} samples of every batch)')
        if args.device.type == 'cuda':
            if args.device.index is not None:
                raise UsageError(f'{args.device}: under torchrun each process uses cuda:LOCAL_RANK; '
                                 f'give --device cuda (or nothing) instead of -gpu / --device cuda:ID')
            if self.local_world_size > torch.cuda.device_count():
                error = UsageError(f'{self.local_world_size} processes on this node but only '
                                   f'{torch.cuda.device_count()} CUDA device(s)')
                if self.local_rank == 0 and not self.is_main:      # another node: rank 0 cannot say it
                    print(f'rank {self.rank}: {error}', file=sys.stderr)
                raise error
            args.device = torch.device('cuda', self.local_rank)
            torch.cuda.set_device(args.device)
        if not self.is_main:
            self._streams = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = open(os.devnull, 'w'), _NotATerminal(sys.stderr)
        if not dist.is_initialized():
            dist.init_process_group('nccl' if args.device.type == 'cuda' else 'gloo')
        self.device = args.device

    def close(self) -> None:
        """Leave the process group (if this process joined one) and restore stdout.

        Under torchrun, SIGTERM is ignored from here on: when one rank ends (e.g. exit status
        2 or 1), torchrun sends SIGTERM to the others, which are ending too and should report
        their own status rather than -15."""
        global _current
        _current = Context()
        if not self.active:
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if dist.is_initialized():
            dist.destroy_process_group()
        streams = getattr(self, '_streams', None)
        if streams is not None:
            sys.stdout.close()
            sys.stdout, sys.stderr = streams
            self._streams = None

    def say(self, line: str) -> None:
        """Print one line on stderr, on rank 0 only."""
        if self.is_main:
            print(line, file=sys.stderr)

    # ---------------------------------------------------------------- collectives

    def agree(self, error: Exception | None, kind: type = UsageError) -> None:
        """Every rank learns whether any rank failed; then all raise together.

        Raises:
            kind: some rank passed an error: on that rank ``error`` itself, on the others a
                ``kind`` with the first failing rank's message (prefixed with its rank when it
                is not 0).
        """
        if not self.active:
            if error is not None:
                raise error
            return
        messages = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else str(error))
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if error is not None:
            raise error
        if failed:
            rank, message = failed[0]
            raise kind(message if rank == 0 else f'rank {rank}: {message}')

    def on_main(self, work, kind: type) -> None:
        """Call ``work()`` on rank 0 only (e.g. a checkpoint save); when it raises ``kind``
        there, every rank raises (:meth:`agree`), so that none waits for rank 0 in vain."""
        error = None
        if self.is_main:
            try:
                work()
            except kind as err:
                error = err
        self.agree(error, kind)

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.to(self.device)
        dist.all_reduce(values)
        return values

    def mean(self, *values: float) -> list[float]:
        """The mean of each float over the ranks (itself in one process)."""
        if not self.active:
            return list(values)
        return (self._sum(torch.tensor(values, dtype=torch.float64)) / self.world_size).tolist()

    # ---------------------------------------------------------------- the model

    def prepare_model(self, model: nn.Module, sync_bn: bool) -> nn.Module:
        """With ``--sync-bn`` under torchrun, :func:`convert_sync_batchnorm`; ``model`` as it
        is otherwise. Call before the optimizers are made."""
        if self.active and sync_bn:
            convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module, compile: bool):
        """The training forward: ``DistributedDataParallel(model)`` under torchrun (buffers
        not broadcast at each forward: BatchNorm statistics stay per rank, see
        :meth:`after_epoch`), compiled as a whole with ``compile``; ``torch.compile(model)``
        or ``model`` itself in one process."""
        if self.active:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **_NO_FORWARD_BUFFER_SYNC)
        return torch.compile(model) if compile else model

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Under torchrun, reseed torch's global generators (the dropout masks' source) from
        (seed, epoch, rank): masks differ between ranks and a resumed run draws those of an
        uninterrupted run with the same K."""
        if self.active:
            torch.manual_seed(_derived_seed(seed, epoch, self.rank))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics: those the
        checkpoint keeps and every rank evaluates with), then compare the weights.

        Raises:
            RanksDiverged: a float64 checksum of the parameters differs between ranks.
        """
        if not self.active:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
        with torch.no_grad():
            mine = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        sums = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(sums, mine)
        sums = [float(s) for s in sums]
        if any(s != sums[0] for s in sums):
            raise RanksDiverged(f'the weights of the {self.world_size} processes differ after epoch '
                                f'{epoch} (checksums {", ".join(repr(s) for s in sums)})')

    def watch(self, params, step: int, device: torch.device) -> safety.NonFiniteWatch:
        """The NaN/Inf watch: :class:`SharedWatch` under torchrun."""
        return (SharedWatch if self.active else safety.NonFiniteWatch)(params, step, device)

    # ---------------------------------------------------------------- data and evaluation

    def shard_of(self, n: int) -> range:
        """This rank's contiguous shard of ``n`` items: the first ``n % K`` ranks get
        ``n // K + 1``, the others ``n // K`` (no padding, no duplicates)."""
        size, extra = divmod(n, self.world_size)
        lo = self.rank * size + min(self.rank, extra)
        return range(lo, lo + size + (self.rank < extra))

    def shard_data(self, data, args) -> None:
        """Give this rank its part of ``data`` (a DevicePipeline or ReleasedPipeline), in place.

        Device pipeline: slice ``[r*b/K, (r+1)*b/K)`` of every global batch of the
        single-process order, with the same augmentation draws. Released pipeline: a
        ``DistributedSampler`` (seeded with ``--seed``, reshuffled per epoch) of b/K samples
        a step; the loader's worker seeds come from (seed, epoch, rank). Both: a contiguous
        shard of the test set.

        Raises:
            UsageError: fewer test samples than processes.
        """
        if not self.active:
            return
        per_rank = args.b // self.world_size
        if isinstance(data, DevicePipeline):
            data.shard = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
            xs, ys = torch.cat([x for x, _ in data.test]), torch.cat([y for _, y in data.test])
            self._check_test_size(len(xs))
            part = self.shard_of(len(xs))
            xs, ys = xs[part.start:part.stop], ys[part.start:part.stop]
            data.test = list(zip(xs.split(args.eval_batch), ys.split(args.eval_batch)))
            return
        train_set, test_set = data.train_loader.dataset, data.test_loader.dataset
        self._check_test_size(len(test_set))
        sampler = DistributedSampler(train_set, self.world_size, self.rank, shuffle=True,
                                     seed=args.seed, drop_last=True)
        generator = torch.Generator()
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=args.workers,
                            pin_memory=args.device.type == 'cuda', drop_last=True, generator=generator)

        def train_batches(epoch: int):
            sampler.set_epoch(epoch)
            generator.manual_seed(_derived_seed(args.seed, epoch, self.rank))
            return data._to_device(loader)
        data.train_loader, data.train_batches = loader, train_batches
        data.test_loader = make_loader(Subset(test_set, self.shard_of(len(test_set))), args,
                                       shuffle=False, batch_size=args.eval_batch)

    def _check_test_size(self, n: int) -> None:
        if n < self.world_size:
            raise UsageError(f'the test set has {n} samples, fewer than the {self.world_size} '
                             f'processes that share it; use more test samples')

    def reduce_evaluation(self, correct: torch.Tensor, monitor) -> torch.Tensor:
        """``engine.metrics.evaluate``'s reduction: sums the correct count (returned), the
        sample count and every layer's per-neuron spike counts of ``monitor``
        (``FiringRateMonitor``, changed in place) over the ranks."""
        if not self.active:
            return correct
        correct = self._sum(correct.clone())
        monitor.samples = int(self._sum(torch.tensor(monitor.samples)))
        for name in sorted(monitor.spikes):
            monitor.spikes[name] = self._sum(monitor.spikes[name])
        return correct

    def reduce_sops(self, monitor):
        """Sum a ``SynapticOpsMonitor``'s counts over the ranks, in place; returns it."""
        if not self.active:
            return monitor
        for counts in (monitor.sops, monitor.dense_sops):
            for name in sorted(counts):
                counts[name] = self._sum(counts[name])
        totals = self._sum(torch.tensor([monitor.images, monitor.macs, monitor.dense_macs], dtype=torch.int64))
        monitor.images, monitor.macs, monitor.dense_macs = (int(v) for v in totals)
        return monitor

    # ---------------------------------------------------------------- lock and resume

    @contextlib.contextmanager
    def run_lock(self, model_dir: Path):
        """``engine.safety.RunLock`` on rank 0 for the block; all ranks stop together when
        rank 0 cannot take it.

        Raises:
            UsageError: the run is locked by another process (``RunLocked`` on rank 0).
        """
        lock = safety.RunLock(model_dir) if self.is_main else None
        error = None
        if lock is not None:
            try:
                lock.acquire()
            except safety.RunLocked as err:
                error = err
        self.agree(error)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def resume(self, run) -> None:
        """``run.resume()`` on rank 0 (which alone may repair files); the other ranks then
        load the checkpoint rank 0 chose (``--dump-dir`` must be shared by the nodes).

        Raises:
            UsageError: from ``run.resume()`` or, on any rank, a checkpoint it cannot read;
                all ranks raise.
        """
        if not self.active:
            run.resume()
            return
        error, chosen = None, [None]
        if self.is_main:
            try:
                if run.resume():
                    chosen = [str(run.saved[0])]
            except UsageError as err:
                error = err
        self.agree(error)
        dist.broadcast_object_list(chosen, 0)
        if not self.is_main and chosen[0] is not None:
            try:
                run._load_training_state(Path(chosen[0]))
            except (UsageError, ckpt_io.CheckpointError) as err:
                error = UsageError(f'{err} (under torchrun every node must see --dump-dir)')
        self.agree(error)


_current = Context()


def current() -> Context:
    """The context started by :meth:`Context.start` (a single process before that)."""
    return _current

