"""The training step loop of one epoch (``docs/method.md``, "Loss and prediction")."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from tqdm import tqdm

from engine import safety

STEP_PAUSE_ENV = 'GRADREWIRE_TEST_STEP_PAUSE'
"""Test-only: ``STEP:SECONDS``: before training step STEP (global count), print ``paused at step
STEP`` on stderr and sleep SECONDS, so that a fault-injection test can kill a run inside a
training step chosen by what the run is doing rather than by the clock
(``benchmarks/kill_resume.py``)."""


def _step_pause() -> tuple[int, float] | None:
    spec = os.environ.get(STEP_PAUSE_ENV)
    if not spec:
        return None
    step, seconds = spec.split(':')
    return int(step), float(seconds)


def rate_loss(rate: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The training loss (``docs/method.md``, "Loss and prediction"): MSE between the output
    firing rates ``rate`` [N, num_classes] (any float dtype, taken as float32) and the one-hot
    labels of ``label`` [N] (class indices); a float32 scalar."""
    return F.mse_loss(rate.float(), F.one_hot(label, num_classes).float())


def train_epoch(model: nn.Module, optimizers: dict, batches: Iterable, num_classes: int,
                step: int, i2: int, log_train: Callable[[int, float, float], None],
                desc: str = 'train', forward: Callable | None = None,
                amp: bool = False, watch=None) -> tuple[int, float]:
    """Train ``model`` on one epoch of ``batches`` and return ``(step, seconds)``.

    Each batch ``(images [N, C, H, W], labels [N])``, already on the model's device, is one
    step: MSE between the output firing rate [N, num_classes] and the one-hot label, a
    backward pass, every optimizer's step, and a reset of the membrane potentials.
    ``step`` is the global step counter before the epoch; when it is a multiple of ``i2``,
    before it is incremented (steps 0, i2, 2*i2, ...), ``log_train(step, acc, loss)``
    receives the batch's training accuracy (fraction) and loss. These are the only points
    where the step waits for the device.

    ``forward`` (default ``model``) computes the output, e.g. ``torch.compile(model)``;
    ``amp`` runs forward and loss under bfloat16 autocast (the backward follows its dtypes;
    parameters, gradients and optimizer state stay float32).

    ``watch``, an ``engine.safety.NonFiniteWatch``, sees every step's loss and weights on
    the device and is read at those points and at the end of the epoch.

    Raises:
        engine.safety.NonFinite: (with ``watch``) the loss or a weight became NaN or Inf;
            nothing of that step is logged.
    """
    model.train()
    forward = model if forward is None else forward
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, disable=None)
    pause = _step_pause()
    for img, label in bar:
        safety.poll_interrupted()
        if pause is not None and step == pause[0]:
            print(f'paused at step {step}', file=sys.stderr, flush=True)
            time.sleep(pause[1])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            rate = forward(img)
            loss = rate_loss(rate, label, num_classes)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        functional.reset_net(model)
        if watch is not None:
            watch.after_step(loss)
        if step % i2 == 0:
            if watch is not None:
                watch.check()
            acc, loss_value = (rate.argmax(1) == label).float().mean().item(), loss.item()
            log_train(step, acc, loss_value)
            bar.set_postfix(loss=f'{loss_value:.4f}', acc=f'{acc:.3f}')
        step += 1
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    if watch is not None:
        watch.check()
    return step, time.perf_counter() - t0
