"""The MNIST first synapse layer on the nonzero pixels against the dense product, side by side.

MNIST's ``static_fc`` computes ``x @ W^T`` with ``x = (p / 255 - m) / sigma`` (``p`` the raw
pixel, 0 on about 81% of an image) and ``W`` [800, 784]. Exactly, up to float rounding:

    x @ W^T     = a @ W^T - (m / sigma) * rowsum(W)            a = p / (255 sigma)
    delta^T @ x = delta^T @ a - (m / sigma) * colsum(delta) outer 1

so the products need only the nonzero pixels of ``a``. This script times forward + backward
(the weight gradient; the image needs none) of the first layer on a batch of real augmented
MNIST (the device data path's augmentation, epoch 0, the first ``--batch`` samples of a
seeded shuffle), one variant after the other in turn, ``--repeats`` rounds of ``--steps``
steps each, and prints each variant's median milliseconds per step and its ratio to the
dense product's; also the largest differences of outputs and gradients from the dense
path (float32) and from a float64 reference. Variants:

- ``dense``: ``F.linear`` on the normalised batch (what the network does today);
- ``bag``: ``F.embedding_bag`` over the rows of ``W^T`` (gathering, per image, the rows of
  its nonzero pixels, weighted by ``a``), autograd's own backward;
- ``bag2``: the same forward in a custom autograd function whose weight gradient is a
  second embedding bag, per pixel over the rows of ``delta`` of the images where the pixel
  is nonzero (``delta`` [N, 800] stays in cache), then the rank-1 mean term;
- ``bag4``: ``bag2`` with ``W^T`` and ``delta`` cut into 4 blocks of 200 output neurons
  ([784, 200] each, 627 KB: one fits a core's L2 cache), one embedding bag per block;
- ``csr``: ``torch.sparse.mm`` of ``a`` in CSR form (the earlier measurement: 3.5x slower).

The nonzero pixels are found inside each step (their cost is counted).

Usage: python benchmarks/first_layer.py [--threads 1] [--batch 128] [--steps 50] [--repeats 7]
       [--dataset-dir data] [--only dense bag2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEAN, STD = 0.1307, 0.3081


def real_batch(dataset_dir: Path, batch: int, seed: int = 2020) -> torch.Tensor:
    """The first ``batch`` images of epoch 0's seeded shuffle of real MNIST, augmented as the
    device data path augments them: uint8 [batch, 1, 28, 28]."""
    from torchvision import datasets

    from engine.augment import epoch_draws
    from engine.data import decode
    from mnist.mnist import EXPERIMENT
    images, _ = decode(datasets.MNIST(str(dataset_dir), train=True))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:batch]
    u = epoch_draws(seed, 0, len(images), EXPERIMENT.augment.draws).to(torch.float32)
    return EXPERIMENT.augment.apply(images[order], u[order])


def normalised(p: torch.Tensor) -> torch.Tensor:
    """``(p / 255 - m) / sigma`` as the data pipeline computes it, float32 [N, 784]."""
    from engine.augment import normalise
    return normalise(p, (MEAN,), (STD,)).flatten(1)


def dense(p, w):
    return F.linear(normalised(p), w)


def _csr(p: torch.Tensor):
    """The nonzero pixels of ``p`` [N, 784] (uint8) per image: (pixel index, a = p / (255
    sigma), offsets [N]) in image-major order."""
    flat = p.flatten(1)
    image, pixel = flat.nonzero(as_tuple=True)
    a = flat[image, pixel].to(torch.float32).div_(255 * STD)
    counts = (flat != 0).sum(1)
    offsets = torch.zeros(len(flat), dtype=torch.long)
    offsets[1:] = counts.cumsum(0)[:-1]
    return pixel, a, offsets


def bag(p, w):
    pixel, a, offsets = _csr(p)
    y = F.embedding_bag(pixel, w.t().contiguous(), offsets, mode='sum', per_sample_weights=a)
    return y - (MEAN / STD) * w.sum(1)


class _BagFunction(torch.autograd.Function):
    """``a @ W^T - (m / sigma) * rowsum(W)`` from the nonzero pixels; the weight gradient
    as a second embedding bag over ``delta``'s rows, pixel by pixel."""

    @staticmethod
    def forward(ctx, w, flat):
        pixel, a, offsets = _csr(flat)
        ctx.save_for_backward(flat)
        y = F.embedding_bag(pixel, w.t().contiguous(), offsets, mode='sum', per_sample_weights=a)
        return y.sub_(w.sum(1), alpha=MEAN / STD)

    @staticmethod
    def backward(ctx, delta):
        flat, = ctx.saved_tensors
        by_pixel = flat.t()                                            # [784, N]
        pixel, image = by_pixel.nonzero(as_tuple=True)                 # pixel-major
        a = by_pixel[pixel, image].to(torch.float32).div_(255 * STD)
        counts = (by_pixel != 0).sum(1)
        offsets = torch.zeros(len(by_pixel), dtype=torch.long)
        offsets[1:] = counts.cumsum(0)[:-1]
        grad_t = F.embedding_bag(image, delta.contiguous(), offsets, mode='sum', per_sample_weights=a)
        col = delta.sum(0)                                             # [800]
        return grad_t.t().sub(col[:, None], alpha=MEAN / STD), None


def bag2(p, w):
    return _BagFunction.apply(w, p.flatten(1))


def _csc(flat: torch.Tensor):
    """The nonzero pixels of ``flat`` [N, 784] per pixel: (image index, a, offsets [784])."""
    by_pixel = flat.t()
    pixel, image = by_pixel.nonzero(as_tuple=True)
    a = by_pixel[pixel, image].to(torch.float32).div_(255 * STD)
    offsets = torch.zeros(len(by_pixel), dtype=torch.long)
    offsets[1:] = (by_pixel != 0).sum(1).cumsum(0)[:-1]
    return image, a, offsets


class _BlockedBagFunction(torch.autograd.Function):
    """:class:`_BagFunction` on 4 blocks of 200 output neurons."""
    BLOCKS = 4

    @staticmethod
    def forward(ctx, w, flat):
        k = _BlockedBagFunction.BLOCKS
        pixel, a, offsets = _csr(flat)
        ctx.save_for_backward(flat)
        blocks = w.view(k, w.shape[0] // k, w.shape[1]).transpose(1, 2).contiguous()   # [k, 784, 200]
        y = torch.cat([F.embedding_bag(pixel, b, offsets, mode='sum', per_sample_weights=a) for b in blocks], 1)
        return y.sub_(w.sum(1), alpha=MEAN / STD)

    @staticmethod
    def backward(ctx, delta):
        flat, = ctx.saved_tensors
        image, a, offsets = _csc(flat)
        grad_t = torch.cat([F.embedding_bag(image, d.contiguous(), offsets, mode='sum', per_sample_weights=a)
                            for d in delta.chunk(_BlockedBagFunction.BLOCKS, 1)], 1)     # [784, 800]
        return grad_t.t().sub(delta.sum(0)[:, None], alpha=MEAN / STD), None


def bag4(p, w):
    return _BlockedBagFunction.apply(w, p.flatten(1))


def csr(p, w):
    warnings.filterwarnings('ignore', message='Sparse')        # beta-state and invariant-check notes
    pixel, a, offsets = _csr(p)
    flat = p.flatten(1)
    crow = torch.cat([offsets, torch.tensor([len(pixel)])])
    sparse = torch.sparse_csr_tensor(crow, pixel, a, size=flat.shape)
    return torch.sparse.mm(sparse, w.t()) - (MEAN / STD) * w.sum(1)


VARIANTS = {'dense': dense, 'bag': bag, 'bag2': bag2, 'bag4': bag4, 'csr': csr}


def step(fn, p, w, delta):
    w.grad = None
    fn(p, w).backward(delta)
    return w.grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--steps', type=int, default=50)
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--dataset-dir', default=str(REPO / 'data'))
    ap.add_argument('--only', nargs='*', default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p = real_batch(Path(a.dataset_dir), a.batch)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.empty(800, 784).uniform_(-1 / 28, 1 / 28, generator=g))
    with torch.no_grad():                                 # a pruned layer: 70% exact zeros
        w[torch.rand(800, 784, generator=g) < 0.7] = 0
    delta = torch.randn(a.batch, 800, generator=g) * 1e-3
    names = [n for n in VARIANTS if a.only is None or n in a.only]
    nz = (p != 0).float().mean().item()
    print(f'# batch {a.batch} real augmented MNIST, nonzero pixels {100 * nz:.1f}%, {a.threads} thread(s), '
          f'torch {torch.__version__}')
    x64 = normalised(p).double()
    ref_y, ref_g = x64 @ w.detach().double().t(), delta.double().t() @ x64
    y0, g0 = dense(p, w).detach(), step(dense, p, w, delta).clone()
    for name in names:
        y, grad = VARIANTS[name](p, w).detach(), step(VARIANTS[name], p, w, delta)
        print(f'# {name:6s} max |y - dense| {(y - y0).abs().max():.3g}, |y - float64| '
              f'{(y.double() - ref_y).abs().max():.3g}; max |grad - dense| {(grad - g0).abs().max():.3g}, '
              f'|grad - float64| {(grad.double() - ref_g).abs().max():.3g} (max |y| {ref_y.abs().max():.3g}, '
              f'max |grad| {ref_g.abs().max():.3g})')
    times = {n: [] for n in names}
    for _ in range(a.repeats):
        for name in names:
            fn = VARIANTS[name]
            step(fn, p, w, delta)                         # warm
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(fn, p, w, delta)
            times[name].append((time.perf_counter() - t0) / a.steps * 1e3)
    base = statistics.median(times['dense']) if 'dense' in times else None
    for name in names:
        med = statistics.median(times[name])
        ratio = f', {base / med:.2f}x dense' if base else ''
        print(f'{name:6s} forward+backward {med:7.3f} ms/step (min {min(times[name]):.3f}, '
              f'max {max(times[name]):.3f}){ratio}')


if __name__ == '__main__':
    main()
