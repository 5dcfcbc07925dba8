"""The training and evaluation engine shared by the MNIST and CIFAR-10 experiments.

A dataset script (``mnist/mnist.py``, ``c10/c10.py``) describes what differs, its model,
data and defaults, in an :class:`Experiment`, and hands it to :func:`main`, which owns
everything else. Modules, by concern:

- ``engine.cli``: the released command line, its validation, the device, the run name;
- ``engine.optimizers``: the synapse optimizer (Grad R, Deep R or Adam) and BatchNorm's Adam;
- ``engine.data``: the data loaders;
- ``engine.metrics``: sparsity, prune/regrow counts, firing rates, evaluation;
- ``engine.checkpoint``: checkpoints, generator states, ``metrics.jsonl`` after a crash;
- ``engine.logs``: TensorBoard, the per-epoch record and the console lines;
- ``engine.run``: one run, trained epoch by epoch, resumed, tested.

Conventions follow ``docs/method.md``, "Experiment conventions".
"""
from __future__ import annotations

import sys
import warnings
from typing import Sequence

import torch

# SpikingJelly 0.0.0.0.14 decorates its LIF kernels with torch.jit.script, which torch 2.14
# flags as deprecated at import time: noise for every run, nothing a user can act on.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)

from engine.checkpoint import atomic_copy, atomic_save, load_checkpoint  # noqa: E402
from engine.cli import (DEFAULT_SEED, MODES, REPO_ROOT, Experiment, UsageError,  # noqa: E402
                        build_parser, check_writable_dir, run_name, validate)
from engine.metrics import LINK_THRESHOLD, evaluate, sparsity_report  # noqa: E402
from engine.run import Run  # noqa: E402


def main(exp: Experiment, argv: Sequence[str] | None = None, datasets=None) -> int:
    """Parse the command line, validate it, then train (resuming) or run ``-test``.

    Args:
        exp: the dataset script's :class:`Experiment`.
        argv: command-line arguments (default ``sys.argv[1:]``).
        datasets: optional ``(train_set, test_set)`` used instead of ``exp.load_datasets``
            (tests pass stand-ins here).

    Returns the exit status: 0 on success, 2 on a usage error (one line on stderr, no file
    written).
    """
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    try:
        validate(args)
        torch.set_num_threads(args.threads)
        if args.test and not (args.dump_dir / 'models' / run_name(args) / 'checkpoint.pt').exists():
            raise UsageError(f'-test: no checkpoint of run {run_name(args)} under '
                             f'{args.dump_dir / "models"}; train it first (same flags without -test)')
        run = Run(exp, args, datasets if datasets is not None else exp.load_datasets(args))
        if not args.test:
            run.resume()
    except UsageError as err:
        print(f'{exp.prog}: error: {err}', file=sys.stderr)
        return 2
    if args.test:
        run.test()
    else:
        run.train()
    return 0
