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
- with ``--sync-bn`` replaces each BatchNorm by ``engine.syncbn.StepwiseSyncBatchNorm2d``, which
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

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from engine import checkpoint as ckpt_io, safety
from engine.cli import UsageError
from engine.augment import derived_seed
from engine.data import DevicePipeline, make_loader
from engine.logs import NotATerminal
from engine.syncbn import convert_sync_batchnorm


class RanksDiverged(Exception):
    """The weights of the ranks differ after an epoch (exit status 1); one line."""


# ---------------------------------------------------------------- the run's view of its ranks

_NO_FORWARD_BUFFER_SYNC = ({'forward_sync_buffers': False}
                           if 'forward_sync_buffers' in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                           else {'broadcast_buffers': False})
"""DistributedDataParallel's option that keeps it from copying rank 0's buffers at every
forward: ``forward_sync_buffers`` where torch has it (``broadcast_buffers`` is deprecated),
else ``broadcast_buffers``."""


@dataclass
class Context:
    """Where this process stands in the run: ``world_size`` K, its ``rank``, its
    ``local_rank`` on its node and the number of ranks there; ``active`` under torchrun.

    The default is one process. :meth:`from_env` reads torchrun's environment; :meth:`start`
    joins the process group."""
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
            sys.stdout, sys.stderr = open(os.devnull, 'w'), NotATerminal(sys.stderr)
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

    def say(self, line: str, any_rank: bool = False) -> None:
        """Print one line on stderr, on rank 0 only (``any_rank``: on every rank that calls
        it, prefixed with its rank on the others: a failure of that rank alone)."""
        if self.is_main or any_rank:
            print(line if self.is_main else f'rank {self.rank}: {line}', file=sys.stderr)

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
            torch.manual_seed(derived_seed(seed, epoch, self.rank))

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
        """The NaN/Inf watch: :class:`engine.safety.SharedWatch` under torchrun."""
        return (safety.SharedWatch if self.active else safety.NonFiniteWatch)(params, step, device)

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
            generator.manual_seed(derived_seed(args.seed, epoch, self.rank))
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
        lock = self._lock_on_main(model_dir, take=True)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def check_unlocked(self, model_dir: Path) -> None:
        """Before any data is loaded: all ranks stop together when another process holds the
        run's lock (rank 0 checks; nothing is created). Raises as :meth:`run_lock`."""
        self._lock_on_main(model_dir, take=False)

    def _lock_on_main(self, model_dir: Path, take: bool):
        lock, error = (safety.RunLock(model_dir) if self.is_main else None), None
        try:
            if lock is not None:
                lock.acquire() if take else lock.check_free()
        except safety.RunLocked as err:
            error = err
        self.agree(error)
        return lock if take else None

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

