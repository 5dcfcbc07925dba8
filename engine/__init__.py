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
- ``engine.safety``: the run's lock, SIGINT/SIGTERM, the NaN/Inf watch;
- ``engine.distributed``: one run over several torchrun processes (DistributedDataParallel);
- ``engine.run``: one run, trained epoch by epoch, resumed, tested.

Conventions follow ``docs/method.md``, "Experiment conventions".
"""
from __future__ import annotations

import logging
import shlex
import sys
import warnings
from typing import Sequence

import torch

# SpikingJelly 0.0.0.0.14 decorates its LIF kernels with torch.jit.script, which torch 2.14
# flags as deprecated at import time: noise for every run, nothing a user can act on.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
# torch.compile on a CPU-only machine with a CUDA build of torch warns once per process that no
# CUDA runtime is found: true, and nothing to act on.
logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)

from engine import distributed, safety  # noqa: E402
from engine.checkpoint import (CheckpointError, SaveError, atomic_copy, atomic_save,  # noqa: E402
                               load_checkpoint, read_checkpoint)
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

    Returns the exit status, after one line on stderr for each failure:
    0 on success; 2 on a usage error before any work (no file written), a run locked by
    another process, or no usable checkpoint; 1 when the loss or a weight became NaN/Inf or
    a checkpoint or another file could not be written (the last good checkpoint is kept and
    named), or a data-loader worker died of something other than SIGTERM; 130 / 143 on SIGINT /
    SIGTERM during training (SIGTERM also to a worker; the last finished epoch's checkpoint
    is intact; the line gives the command that resumes).

    Under torchrun (``engine.distributed``) every process calls it and returns its own status;
    only rank 0 prints the lines. A ``-b`` that the number of processes does not divide is a
    usage error (2); processes whose weights differ after an epoch stop with 1.
    """
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    command = [exp.prog, *(sys.argv[1:] if argv is None else argv)]
    dist = distributed.Context.from_env()
    run = None
    try:
        dist.share_cores(args)
        validate(args)
        dist.start(args)
        torch.set_num_threads(args.threads)
        if args.test:
            _check_test_source(args)
            Run(exp, args, datasets if datasets is not None else exp.load_datasets(args)).test()
            return 0
        dist.check_unlocked(args.dump_dir / 'models' / run_name(args))
        with safety.interrupts_raise():
            try:
                try:
                    run = Run(exp, args, datasets if datasets is not None else exp.load_datasets(args))
                    with dist.run_lock(run.model_dir):
                        dist.resume(run)
                        run.train()
                    return 0
                except RuntimeError as err:
                    death = safety.worker_death(err)
                    if death is None:
                        raise
                    sig = safety.interrupt_of(death)
                    if sig is not None:
                        return _stopped(exp, run, f'interrupted (a data-loader worker got {sig.name})',
                                        command, safety.EXIT_STATUS[sig], dist)
                    return _stopped(exp, run, f'a data-loader worker died ({death})', command, 1, dist,
                                    any_rank=True)
                except safety.NonFinite as err:
                    dist.say(f'{exp.prog}: stopped at epoch {run.epoch}: {err}; nothing of epoch '
                             f'{run.epoch} was saved; {run.last_good()}')
                    return 1
                except (SaveError, distributed.RanksDiverged) as err:
                    dist.say(f'{exp.prog}: stopped at epoch {run.epoch}: {err}; {run.last_good()}')
                    return 1
            # Outside: also a signal that arrives while another error is handled (under
            # torchrun, a collective fails when a peer that got the signal first has ended).
            except safety.Interrupted as sig:
                return _stopped(exp, run, f'interrupted by {sig}', command, sig.exit_status, dist)
    except UsageError as err:
        dist.say(f'{exp.prog}: error: {err}')
        return 2
    except OSError as err:      # a file that cannot be read, made or moved (a failed save: SaveError)
        what = str(err).splitlines()[0]     # (a loader worker's error carries its traceback)
        if args.test:
            dist.say(f'{exp.prog}: error: {what}', any_rank=True)
            return 1
        return _stopped(exp, run, f'stopped: {what}', command, 1, dist, any_rank=True)
    finally:
        dist.close()


def _check_test_source(args) -> None:
    """``-test`` needs a checkpoint of the run (or ``--resume-from``).

    Raises:
        UsageError: there is none.
    """
    model_dir = args.dump_dir / 'models' / run_name(args)
    if args.resume_from is None and not any((model_dir / f).exists() for f in ('checkpoint.pt', 'checkpoint-prev.pt')):
        raise UsageError(f'-test: no checkpoint of run {run_name(args)} under '
                         f'{args.dump_dir / "models"}; train it first (same flags without -test)')


def _stopped(exp: Experiment, run, what: str, command: list, status: int, dist,
             any_rank: bool = False) -> int:
    """The one line of a run that stopped before its end: ``what``, the last good
    checkpoint and the command that resumes (less ``--resume-from`` once the run has saved
    its own checkpoint); returns ``status``. Rank 0's line, or with ``any_rank`` the line
    of any rank that got there (a failure of its own)."""
    kept = run.last_good() if run is not None else 'nothing was written'
    if run is not None and run.saved is not None and run.saved[0] == run.checkpoint:
        command = _without_resume_from(command)
    dist.say(f'{exp.prog}: {what}; {kept}; to resume, run the same command again: '
             f'{shlex.join(command)}', any_rank=any_rank)
    return status


def _without_resume_from(command: list) -> list:
    """``command`` less its ``--resume-from PATH`` (also ``=PATH`` and argparse's
    abbreviations, e.g. ``--resume-f``)."""
    kept, skip = [], False
    for token in command:
        flag = token.split('=', 1)[0]
        if skip:
            skip = False
        elif len(flag) > 2 and '--resume-from'.startswith(flag):
            skip = '=' not in token
        else:
            kept.append(token)
    return kept
