"""The MNIST training step compiled as one graph (compiled autograd) against the default step,
side by side, on the CPU.

Two ways to run the step of ``mnist.py -m grad -s 0.95 --device cpu`` (real MNIST, the device
data path, ``--threads``):

- ``default``: the operations of a run's step (``engine.loop.train_epoch``, without its NaN
  watch and progress bar): the network's forward ``torch.compile``d, the loss and the
  backward through the autograd engine, the optimizers' own compiled update, ``reset_net``;
- ``whole``: forward, loss and backward inside one ``torch.compile``d function with
  ``torch._dynamo.config.compiled_autograd`` on: the forward and the loss are one graph, and
  the backward is compiled by compiled autograd as a second graph (in torch 2.14 the call to
  ``backward`` is a graph break; tracing it into the forward's graph with
  ``trace_autograd_ops`` needs the membrane potentials reset inside the function, and that
  compile did not finish within 5 minutes here); the optimizers and ``reset_net`` as in
  ``default``.

Each variant runs in a fresh interpreter, once per round, the order alternating from round to
round: ``--warmup`` steps (the compile warm-up), then ``--steps`` timed steps, each step
timed with ``time.perf_counter`` up to its loss's ``.item()`` (a run reads the loss every
``-i2`` steps only). It prints per run the median and mean milliseconds per timed step, the
warm-up seconds, the graphs compiled autograd captured (0 for ``default``) and a checksum of
the run (the losses of every step and the float64 sum of the weights after the last step),
then per variant the median over rounds, its ratio to ``default``, and whether every run's
checksum equals the first ``default`` run's.

Usage: python benchmarks/whole_step.py [--threads 1] [--rounds 2] [--warmup 40] [--steps 80]
       [--dataset-dir data]

A ``--rounds`` or ``--steps`` below 1 ends with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VARIANTS = ('default', 'whole')


def time_variant(variant: str, threads: int, warmup: int, steps: int, dataset_dir: str) -> dict:
    """Build the run, take the first ``warmup + steps`` batches of epoch 0 and train on them
    with ``variant``'s step (``'default'`` or ``'whole'``), in this process.

    Returns ``{'median_ms', 'mean_ms'}`` (milliseconds per timed step), ``'warmup_s'``
    (seconds of the warm-up steps), ``'captures'`` (backward graphs compiled autograd
    captured), ``'losses'`` (every step's loss) and ``'weight_sum'`` (float64 sum of the
    weights after the last step)."""
    import torch
    from spikingjelly.activation_based import functional

    from benchmarks.profile_step import build_run
    from engine.loop import rate_loss
    from mnist.mnist import EXPERIMENT

    run = build_run(threads, dataset_dir, compile=True)
    batches = [b for b, _ in zip(run.data.train_batches(0), range(warmup + steps))]
    model, optimizers = run.model, list(run.optimizers.values())
    classes = EXPERIMENT.num_classes

    if variant == 'default':
        def forward_backward(img, label):
            loss = rate_loss(run.forward(img), label, classes)
            loss.backward()
            return loss
    else:
        torch._dynamo.config.compiled_autograd = True

        @torch.compile
        def forward_backward(img, label):
            loss = rate_loss(model(img), label, classes)
            loss.backward()
            return loss

    losses, seconds = [], []
    t_warm = time.perf_counter()
    for i, (img, label) in enumerate(batches):
        if i == warmup:
            t_warm = time.perf_counter() - t_warm
        t0 = time.perf_counter()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = forward_backward(img, label)
        for opt in optimizers:
            opt.step()
        functional.reset_net(model)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - t0)
    timed = seconds[warmup:]
    from torch._dynamo.utils import counters
    return {'median_ms': statistics.median(timed) * 1e3, 'mean_ms': statistics.mean(timed) * 1e3,
            'warmup_s': t_warm, 'captures': counters['compiled_autograd']['captures'], 'losses': losses,
            'weight_sum': sum(p.detach().double().sum().item() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--warmup', type=int, default=40)
    p.add_argument('--steps', type=int, default=80)
    p.add_argument('--dataset-dir', default=str(REPO / 'data'))
    p.add_argument('--one', default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    for flag, value in (('--rounds', args.rounds), ('--steps', args.steps)):
        if value < 1:
            p.exit(2, f'whole_step.py: error: {flag} must be at least 1, got {value}\n')
    if args.one is not None:
        print(json.dumps(time_variant(args.one, args.threads, args.warmup, args.steps, args.dataset_dir)))
        return
    import torch
    print(f'# MNIST -m grad -s 0.95 step, {args.threads} thread(s), torch {torch.__version__}: '
          f'{args.warmup} warm-up steps, {args.steps} timed')
    results: dict = {v: [] for v in VARIANTS}
    reference = None            # the first default run's checksum: round 0 runs default first
    for r in range(args.rounds):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            done = subprocess.run([sys.executable, __file__, '--one', variant, '--threads', str(args.threads),
                                   '--warmup', str(args.warmup), '--steps', str(args.steps),
                                   '--dataset-dir', args.dataset_dir], capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ['no output'])[-1]
                sys.exit(f'whole_step.py: {variant} failed: {last}')
            out = json.loads(done.stdout.strip().splitlines()[-1])
            checksum = (out['losses'], out['weight_sum'])
            reference = checksum if reference is None else reference
            out['same'] = checksum == reference
            results[variant].append(out)
            print(f"round {r} {variant:8s} {out['median_ms']:7.2f} ms/step (mean {out['mean_ms']:.2f}), "
                  f"warm-up {out['warmup_s']:.1f} s, compiled-autograd captures {out['captures']}, "
                  f"last loss {out['losses'][-1]:.8f}, weight sum {out['weight_sum']:.10f}", flush=True)
    base = statistics.median(o['median_ms'] for o in results['default'])
    for variant, outs in results.items():
        ms = statistics.median(o['median_ms'] for o in outs)
        print(f"{variant:8s} median {ms:7.2f} ms/step, {base / ms:.2f}x the default step; losses and "
              f"weight sum equal to the first default run's: {all(o['same'] for o in outs)}")

if __name__ == '__main__':
    main()
