"""The training and evaluation engine shared by the MNIST and CIFAR-10 experiments.

A dataset script (``mnist/mnist.py``, ``c10/c10.py``) describes what differs, its model,
data and defaults, in an :class:`Experiment`, and hands it to :func:`main`, which owns
everything else. Modules, by concern:

- ``engine.methods``: the pruning methods, one record each (Grad R, Deep R, soft Deep R,
  no pruning, STDS), which everything else reads;
- ``engine.cli``: the released command line, its validation, the device, the run name, and
  ``engine.config``: the run's configuration, resolved once and frozen;
- ``engine.optimizers``: the method's synapse optimizer and BatchNorm's Adam;
- ``engine.data``: the data pipelines;
- ``engine.metrics`` and ``engine.sops``: sparsity, prune/regrow counts, firing rates,
  evaluation, synaptic operations;
- ``engine.checkpoint``: checkpoint files, generator states, ``metrics.jsonl`` after a crash,
  and ``engine.persist``: the one owner of a run's files;
- ``engine.logs``: TensorBoard, the per-epoch record and the console lines;
- ``engine.safety``: the run's lock, SIGINT/SIGTERM, the NaN/Inf watch;
- ``engine.distributed``: ranks, collectives and the launch under torchrun;
- ``engine.run``: one run, trained epoch by epoch, resumed, tested.

The spiking-network pieces (LIF neurons, per-time-step BatchNorm, what a synapse is) are in
the top-level package ``snn``.

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

from engine import distributed, methods, persist, safety  # noqa: E402
from engine.checkpoint import (CheckpointError, SaveError, atomic_copy, atomic_save,  # noqa: E402
                               load_checkpoint, read_checkpoint)
from engine.cli import DEFAULT_SEED, Experiment, build_parser, check_writable_dir, resolve, run_name  # noqa: E402
from engine.config import REPO_ROOT, RunConfig  # noqa: E402
from engine.errors import UsageError  # noqa: E402
from engine.metrics import LINK_THRESHOLD, evaluate, sparsity_report  # noqa: E402
from engine.run import Run  # noqa: E402


def main(exp: Experiment, argv: Sequence[str] | None = None, datasets=None) -> int:
    """Parse the command line, check it, then train (resuming) or run ``-test``.

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
    args = build_parser(exp).parse_args(argv)
    ranks = distributed.Ranks.from_env()
    command = _resume_command(exp, argv, ranks)
    run = config = None
    try:
        config = resolve(exp, args, ranks)
        distributed.start(ranks, config.device)
        torch.set_num_threads(config.threads)
        data = (lambda: datasets) if datasets is not None else (lambda: _load_datasets(exp, config, ranks))
        if config.test:
            persist.check_test_source(config)
            Run(exp, config, data()).test()
            return 0
        persist.check_unlocked(config)
        with safety.interrupts_raise():
            try:
                try:
                    run = Run(exp, config, data())
                    with persist.locked(config):
                        run.train()
                    return 0
                except RuntimeError as err:
                    death = safety.worker_death(err)
                    if death is None:
                        raise
                    sig = safety.interrupt_of(death)
                    if sig is not None:
                        return _stopped(exp, run, f'interrupted (a data-loader worker got {sig.name})',
                                        command, safety.EXIT_STATUS[sig])
                    return _stopped(exp, run, f'a data-loader worker died ({death})', command, 1,
                                    any_rank=True)
                except safety.NonFinite as err:
                    distributed.say(f'{exp.prog}: stopped at epoch {run.epoch}: {err}; nothing of epoch '
                                    f'{run.epoch} was saved; {run.files.last_good()}')
                    return 1
                except (SaveError, distributed.RanksDiverged) as err:
                    distributed.say(f'{exp.prog}: stopped at epoch {run.epoch}: {err}; {run.files.last_good()}')
                    return 1
            # Outside: also a signal that arrives while another error is handled (under
            # torchrun, a collective fails when a peer that got the signal first has ended).
            except safety.Interrupted as sig:
                return _stopped(exp, run, f'interrupted by {sig}', command, sig.exit_status)
    except UsageError as err:
        # Before the process group: rank 0 of each node says it (another node's rank 0
        # cannot hear the first node's).
        distributed.say(f'{exp.prog}: error: {err}', any_rank=ranks.local_rank == 0, ranks=ranks)
        return 2
    except OSError as err:      # a file that cannot be read, made or moved (a failed save: SaveError)
        what = str(err).splitlines()[0]     # (a loader worker's error carries its traceback)
        if args.test:
            distributed.say(f'{exp.prog}: error: {what}', any_rank=True, ranks=ranks)
            return 1
        return _stopped(exp, run, f'stopped: {what}', command, 1, any_rank=True, ranks=ranks)
    finally:
        distributed.close(ranks)


def _load_datasets(exp: Experiment, config: RunConfig, ranks):
    """``exp.load_datasets(config)``; under torchrun the first process of each node loads first
    (it may fetch, check or set aside data files), then the others, and a failure stops every
    process with its one line.

    Raises:
        UsageError: the data cannot be had (on every process).
    """
    if not ranks.active:
        return exp.load_datasets(config)
    error, sets = None, None
    if ranks.local_rank == 0:
        try:
            sets = exp.load_datasets(config)
        except UsageError as err:
            error = err
    distributed.agree(error)
    return sets if ranks.local_rank == 0 else exp.load_datasets(config)


def _stopped(exp: Experiment, run, what: str, command: list, status: int, any_rank: bool = False,
             ranks=None) -> int:
    """The one line of a run that stopped before its end: ``what``, the last good
    checkpoint and the command that resumes (less ``--resume-from`` once the run has saved
    its own checkpoint); returns ``status``. Rank 0's line, or with ``any_rank`` the line
    of any rank that got there (a failure of its own)."""
    kept = run.files.last_good() if run is not None else 'nothing was written'
    if run is not None and run.files.saved is not None and run.files.saved[0] == run.files.checkpoint:
        command = _without_resume_from(command)
    distributed.say(f'{exp.prog}: {what}; {kept}; to resume, run the same command again: '
                    f'{shlex.join(command)}', any_rank=any_rank, ranks=ranks)
    return status


def _resume_command(exp: Experiment, argv, ranks) -> list:
    """The command of the resume line: ``argv`` after the program name when given (in-process
    calls); else the script as started, after ``python``, or under torchrun after
    ``torchrun --nproc_per_node K`` (one machine) or ``torchrun <its options>`` (several)."""
    if argv is not None:
        return [exp.prog, *argv]
    if not ranks.active:
        return ['python', sys.argv[0], *sys.argv[1:]]
    if ranks.world_size == ranks.local_world_size:
        return ['torchrun', '--nproc_per_node', str(ranks.local_world_size), sys.argv[0], *sys.argv[1:]]
    return ['torchrun', '<its options>', sys.argv[0], *sys.argv[1:]]


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
