"""One run trained by several processes under ``torchrun``: ranks, collectives, the launch.

``torchrun --nproc_per_node K mnist/mnist.py ...`` (or ``c10/c10.py``, also across nodes)
starts K processes, the *ranks*, that train one run together; a plain ``python mnist/mnist.py``
stays a single process. The engine detects torchrun from the environment it sets
(``WORLD_SIZE`` > 1, or ``WORLD_SIZE`` = 1 with ``TORCHELASTIC_RUN_ID``): see :class:`Ranks`.
Then :func:`start` joins the process group (NCCL on CUDA, gloo on the CPU) and every rank
trains on ``cuda:LOCAL_RANK`` (``engine.cli.resolve``). The rest of the engine uses this
module's few pieces:

- :func:`all_sum`, :func:`mean`, :func:`agree`, :func:`on_main`, :func:`broadcast_object`:
  the collectives (each a no-op in one process);
- :func:`wrap`: ``DistributedDataParallel`` around the network (gradients averaged over the
  ranks, so that the rewiring optimizers take the same step everywhere), compiled as a whole
  with ``--compile``;
- :func:`end_epoch`: rank 0's buffers to every rank, and a checksum of the weights
  (:class:`RanksDiverged`);
- :func:`seed_epoch`: each rank's dropout masks, reseeded per epoch;
- :func:`say`: console lines from rank 0 only.

The data pipelines shard themselves (``engine.data``, :func:`shard_of`) and the monitors sum
their own counts (``engine.metrics``, ``engine.sops``).
"""
from __future__ import annotations

import inspect
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from engine.augment import derived_seed
from engine.errors import UsageError


class RanksDiverged(Exception):
    """The weights of the ranks differ after an epoch (exit status 1); one line."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``world_size`` K, its ``rank``, its ``local_rank`` on its
    node and the number of ranks there; ``active`` under torchrun. The default is one
    process."""
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    active: bool = False

    @classmethod
    def from_env(cls, environ=None) -> 'Ranks':
        """This process's ranks from torchrun's variables (``WORLD_SIZE``, ``RANK``,
        ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); one process when ``WORLD_SIZE`` is unset, or
        1 outside torchrun (no ``TORCHELASTIC_RUN_ID``)."""
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


_ranks = Ranks()        # this process's, from start() to close()
_streams = None         # stdout and stderr of a rank > 0, while they are silenced


class _NotATerminal:
    """A stream whose ``isatty()`` is False: progress bars stay off on ranks > 0, while
    tracebacks still reach the stream."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (when ``ranks`` is active): NCCL on CUDA, gloo otherwise. Ranks
    > 0 print nothing on stdout from here on, and no progress bar."""
    global _ranks, _streams
    _ranks = ranks
    if not ranks.active:
        return
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if not ranks.is_main:
        _streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = open(os.devnull, 'w'), _NotATerminal(sys.stderr)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')


def close(ranks: Ranks | None = None) -> None:
    """Leave the process group (if this process joined one) and restore stdout. ``ranks``:
    this process's, also when :func:`start` was never reached (an error before it).

    Under torchrun, SIGTERM is ignored from here on: when one rank ends (e.g. exit status 2
    or 1), torchrun sends SIGTERM to the others, which are ending too and should report their
    own status rather than -15."""
    global _ranks, _streams
    active, _ranks = (ranks or _ranks).active, Ranks()
    if not active:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if dist.is_initialized():
        dist.destroy_process_group()
    if _streams is not None:
        sys.stdout.close()
        sys.stdout, sys.stderr = _streams
        _streams = None


def say(line: str, any_rank: bool = False, ranks: Ranks | None = None) -> None:
    """Print one line on stderr, on rank 0 only (``any_rank``: on every rank that calls it,
    prefixed with its rank on the others: a failure of that rank alone). ``ranks``: this
    process's, before :func:`start`."""
    ranks = ranks or _ranks
    if ranks.is_main or any_rank:
        print(line if ranks.is_main else f'rank {ranks.rank}: {line}', file=sys.stderr)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks, in place (itself in one process)."""
    if _ranks.active:
        dist.all_reduce(values)
    return values


def mean(*values: float) -> list[float]:
    """The mean of each float over the ranks (itself in one process)."""
    if not _ranks.active:
        return list(values)
    device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else 'cpu'
    return (all_sum(torch.tensor(values, dtype=torch.float64, device=device)) / _ranks.world_size).tolist()


def agree(error: Exception | None, kind: type = UsageError) -> None:
    """Every rank learns whether any rank failed; then all raise together.

    Raises:
        kind: some rank passed an error: on that rank ``error`` itself, on the others a
            ``kind`` with the first failing rank's message (prefixed with its rank when it is
            not 0).
    """
    if not _ranks.active:
        if error is not None:
            raise error
        return
    messages = [None] * _ranks.world_size
    dist.all_gather_object(messages, None if error is None else str(error))
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if error is not None:
        raise error
    if failed:
        rank, message = failed[0]
        raise kind(message if rank == 0 else f'rank {rank}: {message}')


def on_main(work, kind: type) -> None:
    """Call ``work()`` on rank 0 only (e.g. a checkpoint save); when it raises ``kind`` there,
    every rank raises (:func:`agree`), so that none waits for rank 0 in vain."""
    error = None
    if _ranks.is_main:
        try:
            work()
        except kind as err:
            error = err
    agree(error, kind)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process)."""
    if not _ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def shard_of(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous shard of ``n`` items: the first ``n % K`` ranks get
    ``n // K + 1``, the others ``n // K`` (no padding, no duplicates)."""
    size, extra = divmod(n, world_size)
    lo = rank * size + min(rank, extra)
    return range(lo, lo + size + (rank < extra))


_NO_FORWARD_BUFFER_SYNC = ({'forward_sync_buffers': False}
                           if 'forward_sync_buffers' in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                           else {'broadcast_buffers': False})
"""DistributedDataParallel's option that keeps it from copying rank 0's buffers at every
forward: ``forward_sync_buffers`` where torch has it (``broadcast_buffers`` is deprecated)."""


def wrap(model: nn.Module, compile: bool):
    """The training forward: ``DistributedDataParallel(model)`` under torchrun (buffers not
    broadcast at each forward: BatchNorm statistics stay per rank until :func:`end_epoch`),
    compiled as a whole with ``compile``; ``torch.compile(model)`` or ``model`` itself in one
    process."""
    if _ranks.active:
        device = next(model.parameters()).device
        device_ids = [device.index] if device.type == 'cuda' else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **_NO_FORWARD_BUFFER_SYNC)
    return torch.compile(model) if compile else model


def seed_epoch(seed: int, epoch: int) -> None:
    """Under torchrun, reseed torch's global generators (the dropout masks' source) from
    (seed, epoch, rank): masks differ between ranks and a resumed run draws those of an
    uninterrupted run with the same K."""
    if _ranks.active:
        torch.manual_seed(derived_seed(seed, epoch, _ranks.rank))


def end_epoch(model: nn.Module, epoch: int) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics: those the checkpoint
    keeps and every rank evaluates with), then compare the weights.

    Raises:
        RanksDiverged: a float64 checksum of the parameters differs between ranks.
    """
    if not _ranks.active:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)
    with torch.no_grad():
        mine = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = [torch.empty_like(mine) for _ in range(_ranks.world_size)]
    dist.all_gather(sums, mine)
    sums = [float(s) for s in sums]
    if any(s != sums[0] for s in sums):
        raise RanksDiverged(f'the weights of the {_ranks.world_size} processes differ after epoch '
                            f'{epoch} (checksums {", ".join(repr(s) for s in sums)})')
