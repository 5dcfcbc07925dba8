"""What ``tests/e2e/test_syncbn_amp.py`` starts under torchrun (each rank runs this file):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/syncbn_amp_launch.py OUT

One training call of a multi-step :class:`engine.syncbn.StepwiseSyncBatchNorm2d` on this
rank's contiguous half of a bfloat16 global batch (:func:`inputs`), and the backward of
sum(y * R), with gloo. Every aten operation of the forward and backward is recorded. Rank 0
saves to OUT: the operation names of both ranks ('ops'), the running statistics, the
gathered output and input gradient ([T, N, C, H, W], as float32) and their dtypes ('dtypes',
e.g. 'torch.bfloat16'). The exit status is 0.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from snn import StepwiseSyncBatchNorm2d  # noqa: E402

SHAPE = (2, 8, 3, 4, 4)
"""[T, N, C, H, W] of the global batch; N is split over the ranks."""


def inputs():
    """The global batch x [T, N, C, H, W] (bfloat16, mean 3, std 2) and the loss weights R
    (float32, same shape), the same on every rank and in the test's reference."""
    g = torch.Generator().manual_seed(11)
    x = (3.0 + 2.0 * torch.randn(SHAPE, generator=g)).to(torch.bfloat16)
    return x, torch.randn(SHAPE, generator=g)


class AtenOps(TorchDispatchMode):
    """Records the name of every aten operation run inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def main(out: str) -> int:
    dist.init_process_group('gloo')
    k, rank = dist.get_world_size(), dist.get_rank()
    x, r = inputs()
    per = x.shape[1] // k
    part = slice(rank * per, (rank + 1) * per)
    bn = StepwiseSyncBatchNorm2d(SHAPE[2], step_mode='m')
    xs = x[:, part].clone().requires_grad_(True)
    with AtenOps() as ops:
        y = bn(xs)
        (y * r[:, part]).sum().backward()
    names = [None] * k
    dist.all_gather_object(names, sorted(ops.names))
    ys, gxs = [torch.empty(y.shape) for _ in range(k)], [torch.empty(y.shape) for _ in range(k)]
    dist.all_gather(ys, y.detach().float())
    dist.all_gather(gxs, xs.grad.float())
    if rank == 0:
        torch.save({'ops': sorted(set().union(*names)), 'running_mean': bn.running_mean,
                    'running_var': bn.running_var, 'y': torch.cat(ys, 1), 'x_grad': torch.cat(gxs, 1),
                    'dtypes': [str(y.dtype), str(xs.grad.dtype)]}, out)
    del y, xs, ys, gxs                       # the autograd graph holds the process group
    dist.barrier()                           # no rank leaves while the other still works
    dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    status = main(sys.argv[1])
    # Leave without the interpreter's finalization, during which a gloo worker thread that
    # drops the last reference to a tensor takes the GIL and aborts the process (the mechanism
    # pytorch/pytorch#179291 describes; here "terminate called without an active exception",
    # SIGABRT, in 2 full suite runs on 2 cores, in none of 24 launches alone).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
