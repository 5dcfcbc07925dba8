"""What ``tests/e2e/test_distributed.py`` starts under torchrun (each rank runs this file).

    python -m torch.distributed.run --standalone --nproc_per_node K tests/ddp_launch.py c10 ARGS...
        ``engine.main(c10.EXPERIMENT, ARGS, datasets=<stand-in data>)``: 32 training and 16
        test samples of random float images [3, 32, 32], the same on every rank.
    python -m torch.distributed.run --standalone --nproc_per_node K tests/ddp_launch.py syncbn OUT
        :func:`syncbn_check`; rank 0 saves what it gathered to OUT.

The exit status is ``engine.main``'s (c10) or 0.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import engine  # noqa: E402
from c10 import c10  # noqa: E402
from helpers import stand_in  # noqa: E402
from snn import StepwiseSyncBatchNorm2d  # noqa: E402

SYNCBN_SHAPE = (3, 8, 4, 5, 5)
"""[T, N, C, H, W] of the global batch of :func:`syncbn_check`; N is split over the ranks."""


def syncbn_inputs():
    """The global batch x [T, N, C, H, W], the loss weights R (same shape), affine weight and
    bias [C]: the same on every rank and in the test's one-process reference."""
    g = torch.Generator().manual_seed(7)
    x = 3.0 + 2.0 * torch.randn(SYNCBN_SHAPE, generator=g, dtype=torch.float32)
    r = torch.randn(SYNCBN_SHAPE, generator=g)
    c = SYNCBN_SHAPE[2]
    return x, r, 1.0 + 0.1 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g)


def train_twice(bn, x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """Set ``bn``'s affine parameters to ``weight`` and ``bias``, then make two training
    calls on x [T, N, C, H, W], each followed by a backward of sum(y * r). Returns the
    second call's output y and input gradient (both like x); ``bn`` keeps the second
    call's parameter gradients."""
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    for _ in range(2):
        bn.zero_grad()
        xs = x.clone().requires_grad_(True)
        y = bn(xs)
        (y * r).sum().backward()
    return y.detach(), xs.grad


def syncbn_check(out: str) -> int:
    """Two training calls of a multi-step :class:`StepwiseSyncBatchNorm2d` on this rank's
    contiguous slice of the global batch, each followed by a backward of sum(y * R); rank 0
    saves the running statistics, the gathered outputs and input gradients of the second
    call, and the parameter gradients summed over the ranks."""
    dist.init_process_group('gloo')
    k, rank = dist.get_world_size(), dist.get_rank()
    x, r, weight, bias = syncbn_inputs()
    per = x.shape[1] // k
    part = slice(rank * per, (rank + 1) * per)
    bn = StepwiseSyncBatchNorm2d(x.shape[2], step_mode='m')
    y, x_grad = train_twice(bn, x[:, part], r[:, part], weight, bias)
    grads = torch.stack([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)
    ys, gxs = [torch.empty_like(y) for _ in range(k)], [torch.empty_like(y) for _ in range(k)]
    dist.all_gather(ys, y.contiguous())
    dist.all_gather(gxs, x_grad.contiguous())
    if rank == 0:
        torch.save({'running_mean': bn.running_mean, 'running_var': bn.running_var,
                    'num_batches_tracked': bn.num_batches_tracked, 'y': torch.cat(ys, 1),
                    'x_grad': torch.cat(gxs, 1), 'weight_grad': grads[0], 'bias_grad': grads[1]}, out)
    dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == 'c10':
        sys.exit(engine.main(c10.EXPERIMENT, rest, datasets=(stand_in(16, 0), stand_in(8, 1))))
    sys.exit(syncbn_check(rest[0]))
