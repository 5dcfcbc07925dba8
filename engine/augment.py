"""The released augmentations, batched on the run's device (``docs/method.md``, "Data and
augmentation", "Differences from the 2021 release").

Each augmentation draws its random parameters from uniform numbers ``u`` [B, draws] in
[0, 1), one row per sample, with the distributions of torchvision's ``RandomAffine``,
``RandomCrop`` and ``RandomHorizontalFlip``, and applies them to a batch of images
[B, C, H, W] (uint8 or float) with a gather, so nearest-neighbour sampling and zero fill
give exactly the pixel values of the PIL path (up to the rounding of the coordinates).

:func:`epoch_draws` gives every training sample its row of ``u`` from (seed, epoch, sample
index) alone, so a sample is augmented alike whatever the batch split or the number of
processes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """A per-sample random augmentation: ``apply(images [B, C, H, W], u [B, draws])``
    returns the augmented images, same shape and dtype."""
    draws: int
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def derived_seed(*keys: int, bits: int = 32) -> int:
    """A seed of ``bits`` (32 or 64) bits from integers: NumPy's SeedSequence mixes them, so
    each tuple of keys starts an independent stream."""
    dtype = np.uint64 if bits == 64 else np.uint32
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype)[0])


def epoch_draws(seed: int, epoch: int, n: int, draws: int) -> torch.Tensor:
    """Uniform numbers in [0, 1), float64 [n, draws] on the CPU: row i belongs to sample i.

    The rows come from a generator seeded with (seed, epoch) alone (NumPy's SeedSequence
    mixes the two), so row i depends only on (seed, epoch, i, n); every process draws the
    same table.
    """
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, bits=64))
    return torch.rand(n, draws, generator=generator, dtype=torch.float64)


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def affine_params(u: torch.Tensor, degrees: float, translate: float, scale: tuple[float, float],
                  size: tuple[int, int]):
    """``RandomAffine(degrees, (translate, translate), scale)``'s parameters from ``u`` [B, 4].

    Returns ``(angle, tx, ty, scale)``, each [B] float64: angle in degrees uniform in
    [-degrees, degrees]; translations in whole pixels, ``round(uniform(-t * W, t * W))``
    (round half to even, as Python's ``round``) and likewise with H; scale uniform in
    ``scale``. ``size`` is (H, W).
    """
    height, width = size
    angle = _uniform(u[:, 0], -degrees, degrees)
    tx = torch.round(_uniform(u[:, 1], -translate * width, translate * width))
    ty = torch.round(_uniform(u[:, 2], -translate * height, translate * height))
    return angle, tx, ty, _uniform(u[:, 3], *scale)


def affine_nearest(images: torch.Tensor, angle, tx, ty, scale) -> torch.Tensor:
    """Rotate by ``angle`` degrees about the image centre, scale and translate each image of
    ``images`` [B, C, H, W], nearest neighbour, fill 0: what
    ``torchvision.transforms.functional.affine`` does to a PIL image (shear 0).

    The inverse map of torchvision's PIL path, centre (W/2, H/2), is applied to each output
    pixel centre (x + 0.5, y + 0.5), and the source pixel is the floor of the result, as
    Pillow's nearest-neighbour affine transform does.
    """
    batch, channels, height, width = images.shape
    dev = images.device
    rot = torch.deg2rad(angle).to(dev)
    cos, sin = torch.cos(rot) / scale.to(dev), torch.sin(rot) / scale.to(dev)
    cx, cy = width * 0.5, height * 0.5
    sx, sy = -cx - tx.to(dev), -cy - ty.to(dev)
    # inverse matrix [[cos, sin, c2], [-sin, cos, c5]] (angle clockwise, as torchvision)
    c2 = cos * sx + sin * sy + cx
    c5 = -sin * sx + cos * sy + cy
    xs = torch.arange(width, device=dev, dtype=rot.dtype) + 0.5
    ys = torch.arange(height, device=dev, dtype=rot.dtype) + 0.5
    in_x = (cos[:, None, None] * xs[None, None, :] + sin[:, None, None] * ys[None, :, None]
            + c2[:, None, None]).floor_()
    in_y = (-sin[:, None, None] * xs[None, None, :] + cos[:, None, None] * ys[None, :, None]
            + c5[:, None, None]).floor_()
    inside = (in_x >= 0) & (in_x < width) & (in_y >= 0) & (in_y < height)       # [B, H, W]
    source = (in_y.clamp_(0, height - 1) * width + in_x.clamp_(0, width - 1)).long()
    flat = images.reshape(batch, channels, height * width)
    out = flat.gather(2, source.view(batch, 1, -1).expand(batch, channels, -1))
    return out.view_as(images) * inside.unsqueeze(1).to(images.dtype)


def random_affine(degrees: float, translate: float, scale: tuple[float, float]) -> Augmentation:
    """The MNIST augmentation: ``RandomAffine(degrees, (translate, translate), scale)``,
    nearest neighbour, fill 0."""
    def apply(images, u):
        return affine_nearest(images, *affine_params(u, degrees, translate, scale, images.shape[-2:]))
    return Augmentation(draws=4, apply=apply)


def crop_flip_params(u: torch.Tensor, padding: int):
    """``RandomCrop(size, padding)`` then ``RandomHorizontalFlip()`` from ``u`` [B, 3]:
    top and left offsets uniform in 0..2*padding (of the padded image), flip with
    probability 0.5. Returns ``(top, left, flip)``, [B] each (long, long, bool)."""
    span = 2 * padding + 1
    top = (u[:, 0] * span).long().clamp_(max=span - 1)
    left = (u[:, 1] * span).long().clamp_(max=span - 1)
    return top, left, u[:, 2] < 0.5


def crop_flip(images: torch.Tensor, top, left, flip, padding: int) -> torch.Tensor:
    """Pad ``images`` [B, C, H, W] with ``padding`` zeros, crop H x W at (``top``,
    ``left``) and mirror the images where ``flip``; same shape and dtype."""
    batch, channels, height, width = images.shape
    dev = images.device
    padded = F.pad(images, (padding,) * 4)
    rows = top.to(dev)[:, None] + torch.arange(height, device=dev)                 # [B, H]
    cols = torch.arange(width, device=dev).expand(batch, width)
    cols = torch.where(flip.to(dev)[:, None], width - 1 - cols, cols) + left.to(dev)[:, None]
    index = rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]              # [B, H, W]
    flat = padded.reshape(batch, channels, -1)
    return flat.gather(2, index.view(batch, 1, -1).expand(batch, channels, -1)).view_as(images)


def random_crop_flip(padding: int) -> Augmentation:
    """The CIFAR-10 augmentation: ``RandomCrop(size, padding)``, then
    ``RandomHorizontalFlip()``."""
    def apply(images, u):
        return crop_flip(images, *crop_flip_params(u, padding), padding)
    return Augmentation(draws=3, apply=apply)


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 tensors [C, 1, 1] on ``device``, made once per
    (mean, std, device) and kept: a CUDA run would otherwise copy them from host memory for
    every training batch. The tensors are shared; nothing may write into them."""
    return (torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1),
            torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1))


def normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``ToTensor`` then ``Normalize(mean, std)`` on uint8 images [B, C, H, W]: float32
    ``(x / 255 - mean) / std`` with the same float operations, so the values equal the PIL
    path's bit for bit (``docs/method.md``, "Data and augmentation"). ``mean`` and ``std``
    are tuples of C floats (or of one); their tensors are made once per device and reused.
    Float images are returned as they are (already network inputs)."""
    if images.dtype != torch.uint8:
        return images
    x = images.to(torch.float32).div_(255)
    m, s = _mean_std(tuple(mean), tuple(std), x.device)
    return x.sub_(m).div_(s)
