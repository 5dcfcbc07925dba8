"""The command line shared by ``mnist.py`` and ``c10.py``: flags, validation, device, run name.

Everything here runs before any work starts: a bad flag ends as one :class:`UsageError` line
(exit status 2) and no file is written. Flags and defaults are those of the 2021 release
(``docs/method.md``, "Experiment conventions"), plus the flags this reproduction adds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from engine import methods
from engine.augment import Augmentation
from engine.config import REPO_ROOT, RunConfig
from engine.distributed import Ranks
from engine.errors import UsageError

DEFAULT_SEED = 2020


@dataclass
class Experiment:
    """What a dataset script contributes to the shared engine.

    Attributes:
        prog: script name shown in help and errors, e.g. ``'mnist.py'``.
        description: one paragraph for ``--help``.
        defaults: released defaults of the flags that differ per data set:
            ``b`` (batch size), ``lr``, ``N`` (last epoch), ``i1``, ``i2``, and
            ``eval_batch`` (batch of the test pass).
        build_model: ``config -> nn.Module`` (config: :class:`engine.config.RunConfig`); the module maps images [N, C, H, W] to output
            firing rates [N, num_classes] in multi-step mode and has LIF layers from
            SpikingJelly. Parameters with more than one dimension are the synapses that
            the rewiring optimizers prune; the others (BatchNorm) get a plain Adam.
        load_datasets: ``config -> (train_set, test_set)`` of (image tensor, int label)
            pairs; raises :class:`UsageError` with one line when the data cannot be had.
        data_source: ``dataset_dir -> str``: which copy of the data set a run reads (recorded
            in ``run.json``), for a data set with several layouts; None: one layout.
        num_classes: number of output classes (one-hot width of the MSE target).
        augment: the training augmentation of the device data path
            (:class:`engine.augment.Augmentation`), the released one batched; None: none.
        mean, std: per-channel normalisation of the images (after scaling to [0, 1]).
    """
    prog: str
    description: str
    defaults: dict
    build_model: Callable[[RunConfig], nn.Module]
    load_datasets: Callable[[RunConfig], tuple[Dataset, Dataset]]
    num_classes: int = 10
    augment: Augmentation | None = None
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    data_source: Callable[[Path], str] | None = None


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but every error is a single line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser(exp: Experiment) -> argparse.ArgumentParser:
    """The released command line with the experiment's defaults, plus the new flags."""
    d = exp.defaults
    p = _OneLineParser(prog=exp.prog, description=exp.description,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-b', type=int, default=d['b'], metavar='B', help='batch size')
    p.add_argument('-lr', type=float, default=d['lr'], metavar='LR', help='Adam learning rate (> 0)')
    p.add_argument('-penalty', type=float, default=1e-3, metavar='P',
                   help='prior strength: alpha of Grad R, l1 of Deep R (>= 0); not read by the '
                        'methods that do not take it (no_prune, stds)')
    p.add_argument('-s', type=float, default=None, metavar='S',
                   help='target sparsity: Grad R needs 0.5 <= s < 1 (any s when -penalty is 0, '
                        'which turns its prior off), Deep R (max_s) 0 <= s <= 1; required with '
                        '-m grad and -m deep, not read by the methods that do not take it')
    p.add_argument('-gpu', type=int, default=None, metavar='ID',
                   help='CUDA device index (same as --device cuda:ID)')
    p.add_argument('--dataset-dir', type=_folder, default=REPO_ROOT / 'data', metavar='DIR',
                   help='where the data set is read from (and downloaded to)')
    p.add_argument('--dump-dir', type=_folder, default=REPO_ROOT / 'runs', metavar='DIR',
                   help='logs go to DIR/logs/<run>, checkpoints to DIR/models/<run>')
    p.add_argument('-T', type=int, default=8, help='simulation time steps per sample')
    p.add_argument('-N', type=int, default=d['N'],
                   help=f"index of the last epoch: epochs 0..N are trained ({d['N'] + 1} by default)")
    p.add_argument('-m', choices=list(dict.fromkeys(m.cli for m in methods.METHODS.values())),
                   default='no_prune', help='pruning method: ' + ', '.join(
                       f'{" ".join(m.argv[1:])} ({m.label})' for m in methods.METHODS.values()))
    for option in methods.options():
        p.add_argument(*option.flags, **option.kwargs)
    p.add_argument('-test', action='store_true',
                   help="evaluate the run's latest checkpoint and save its firing rates")
    p.add_argument('-i1', type=int, default=d['i1'], metavar='E',
                   help='every E epochs: firing rates, histograms and a numbered checkpoint')
    p.add_argument('-i2', type=int, default=d['i2'], metavar='K',
                   help='every K training steps: log train/acc and train/loss')
    p.add_argument('--seed', type=int, default=DEFAULT_SEED, help='seed of every random generator')
    p.add_argument('--device', default=None,
                   help='torch device, e.g. cpu, cuda, cuda:1; None: CUDA if available, else CPU')
    p.add_argument('--data-pipeline', choices=('device', 'released'), default='device',
                   help='device: data decoded once into tensors on --device and augmented there '
                        'in batches (fast); released: the released DataLoader/PIL path, with its '
                        'shuffle order. A run resumes only with the pipeline it started with')
    p.add_argument('--workers', type=int, default=None,
                   help='data-loading worker processes of --data-pipeline released (None: '
                        'min(4, CPU cores)); their number shapes the augmentation draws, so a run '
                        'resumes only with the same --workers. The device pipeline uses none')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (None: $OMP_NUM_THREADS if set, else the CPU cores '
                        'not given to loader workers, at least 1)')
    p.add_argument('--amp', action='store_true',
                   help='bfloat16 autocast for forward and backward (CUDA, or a CPU with native '
                        'bfloat16); weights, theta and Adam moments stay float32. Off: the '
                        'released numerics are float32')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network's training forward and backward and the "
                        "optimizer's update into fused kernels (a C++ compiler on the CPU, Triton "
                        "on CUDA); None: on when that toolchain is there. The first steps of a "
                        "run carry the compile warm-up")
    p.add_argument('--eval-batch', type=int, default=d['eval_batch'], metavar='B',
                   help='batch size of the test pass (BatchNorm in evaluation mode: results '
                        'do not depend on it)')
    p.add_argument('--train-size', type=int, default=None, metavar='K',
                   help='train on the first K training samples only (a smoke test; named in the run)')
    p.add_argument('--resume-from', type=_folder, default=None, metavar='PATH',
                   help="resume training (or -test) from this checkpoint file instead of the run's own")
    p.add_argument('--test-size', type=int, default=None, metavar='K',
                   help='evaluate on the first K test samples only (named in the run)')
    p.add_argument('--sync-bn', action='store_true',
                   help='under torchrun: BatchNorm normalises each time step with the statistics '
                        'of the whole global batch over all processes (default: each process its '
                        'own b/K samples); nothing changes in one process')
    return p


def _folder(text: str) -> Path:
    """argparse type of the folder flags: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f'a folder path is needed, got {text!r}')
    return Path(text)


def run_name(flags: dict, method: methods.Method) -> str:
    """The released run name, e.g. ``lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad``.

    ``flags`` are the parsed flags by name. Flags the release did not have add a suffix when
    they differ from their defaults (``-seed-7``, the method's own, e.g. ``-regrowth-active``,
    ``-train-K``, ``-test-K``), so that such runs do not resume each other; ``s`` is written
    in full (``0.95``, ``0.9500001``).
    """
    name = f'{method.name_prefix}lr-{methods.sci(flags["lr"])}-b-{flags["b"]}-T-{flags["T"]}'
    name += f'{methods.grid_name(method, flags)}-{method.cli}'
    if flags['seed'] != DEFAULT_SEED:
        name += f'-seed-{flags["seed"]}'
    name += method.name_tail(flags)
    if flags['train_size'] is not None:
        name += f'-train-{flags["train_size"]}'
    if flags['test_size'] is not None:
        name += f'-test-{flags["test_size"]}'
    return name


def resolve(exp: Experiment, args: argparse.Namespace, ranks: Ranks | None = None) -> RunConfig:
    """Check every flag, before any work starts, and resolve the run's configuration for
    this process (``ranks``: its place under torchrun; one process by default).

    Raises:
        UsageError: one line naming the flag and what is allowed.
    """
    ranks = ranks or Ranks()
    flags = dict(vars(args))
    positive = {'-b': args.b, '-T': args.T, '-i1': args.i1, '-i2': args.i2,
                '--eval-batch': args.eval_batch}
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f'{flag} must be an integer >= 1, got {value}')
    for flag, value in (('--train-size', args.train_size), ('--test-size', args.test_size)):
        if value is not None and value < 1:
            raise UsageError(f'{flag} must be an integer >= 1, got {value}')
    if args.train_size is not None and args.train_size < args.b:
        raise UsageError(f'--train-size {args.train_size} is smaller than one batch (-b {args.b}): '
                         f'the last partial batch is dropped, as released, so nothing would train')
    if not args.lr > 0 or not np.isfinite(args.lr):
        raise UsageError(f'-lr must be a number > 0, got {args.lr}')
    if not args.penalty >= 0 or not np.isfinite(args.penalty):
        raise UsageError(f'-penalty must be a number >= 0, got {args.penalty}')
    if args.N < 0:
        raise UsageError(f'-N (last epoch) must be >= 0, got {args.N}')
    if ranks.active and args.b % ranks.world_size:
        raise UsageError(f'-b {args.b}: the global batch must be a multiple of the {ranks.world_size} '
                         f'processes (each takes b/{ranks.world_size} samples of every batch)')
    device = resolve_device(args, ranks)
    workers, threads = choose_threads(args.data_pipeline, args.workers, args.threads, ranks)
    check_amp(args.amp, device)
    compile = check_compile(args.compile, device, note=(lambda line: print(f'{exp.prog}: {line}', file=sys.stderr))
                            if ranks.is_main else None)
    check_writable_dir('--dump-dir', args.dump_dir)
    try:
        method = methods.select(flags)
        if method.check is not None:
            method.check(flags)
    except methods.MethodError as err:
        raise UsageError(str(err)) from None
    own = {o.dest for o in method.options}
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(
        prog=exp.prog, name=run_name(flags, method), method=method,
        options={k: v for k, v in flags.items() if k in own},
        **{k: v for k, v in flags.items() if k in shared and k not in ('device', 'workers', 'threads', 'compile')},
        device=device, workers=workers, threads=threads, compile=compile,
        data_source=exp.data_source(args.dataset_dir) if exp.data_source is not None else None,
        rank=ranks.rank, local_rank=ranks.local_rank, world_size=ranks.world_size,
        distributed=ranks.active)


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else
    every core), at least 1: what ``--threads`` and ``sweep.py --jobs`` share out."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def choose_threads(pipeline: str, workers: int | None, threads: int | None,
                   ranks: Ranks) -> tuple[int, int]:
    """Share the CPU cores between torch threads and loader workers (no oversubscription):
    workers only for ``--data-pipeline released`` (default min(4, cores)); threads default,
    under torchrun, to an equal share of the node's cores per process, else to
    ``OMP_NUM_THREADS`` when the environment sets it to a positive integer, else to the cores
    left, at least 1.
    Returns ``(workers, threads)``.

    Raises:
        UsageError: a negative --workers, or --threads below 1.
    """
    cores = cpu_cores()
    if workers is None:
        workers = min(4, cores) if pipeline == 'released' else 0
    if workers < 0:
        raise UsageError(f'--workers must be >= 0, got {workers}')
    omp = os.environ.get('OMP_NUM_THREADS', '')          # (torchrun sets it to 1 for every process)
    if threads is None and not ranks.active and omp.isdigit() and int(omp) > 0:
        threads = int(omp)
    if threads is None:
        threads = max(1, cores // ranks.local_world_size) if ranks.active else max(1, cores - workers)
    if threads < 1:
        raise UsageError(f'--threads must be >= 1, got {threads}')
    return workers, threads


def check_amp(amp: bool, device: torch.device) -> None:
    """``--amp`` needs bfloat16 on the run's device: ``torch.cuda.is_bf16_supported()`` on
    CUDA, native bfloat16 instructions (AVX512-BF16 or AMX) on a CPU.

    Raises:
        UsageError: --amp on a device without bfloat16.
    """
    if not amp:
        return
    if device.type == 'cuda':
        with torch.cuda.device(device):
            ok = torch.cuda.is_bf16_supported()
    elif device.type == 'cpu':
        ok = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        ok = False
    if not ok:
        raise UsageError(f'--amp: {device} has no native bfloat16 support '
                         f'(CUDA with bf16, or a CPU with AVX512-BF16 or AMX); drop --amp')


def compile_toolchain_missing(device: torch.device) -> str | None:
    """What torch.compile lacks on ``device``, or None: a C++ compiler on the CPU; on CUDA,
    Triton, and the C compiler and ``Python.h`` with which Triton builds its launcher."""
    if device.type == 'cuda':
        import importlib.util
        if importlib.util.find_spec('triton') is None:
            return 'Triton is not installed'
        if not any(shutil.which(cc) for cc in (os.environ.get('CC', 'cc'), 'cc', 'gcc', 'clang')):
            return 'no C compiler (cc, gcc, clang or $CC), which Triton needs to build its launcher'
        if not (Path(sysconfig.get_paths()['include']) / 'Python.h').exists():
            return f"no Python.h in {sysconfig.get_paths()['include']} (the Python headers, which Triton needs)"
        return None
    if device.type == 'cpu':
        compilers = (os.environ.get('CXX', 'g++'), 'g++', 'c++', 'clang++')
        return None if any(shutil.which(cc) for cc in compilers) else 'no C++ compiler (g++, c++, clang++ or $CXX) found'
    return f'no torch.compile backend is set up here for {device.type}'


def check_compile(wanted: bool | None, device: torch.device, note=None) -> bool:
    """Whether the run compiles: ``--compile`` needs torch.compile's toolchain
    (:func:`compile_toolchain_missing`); by default (None) it is on when the toolchain is
    there, else off, with ``note(line)`` told why.

    Raises:
        UsageError: --compile given and the toolchain is missing.
    """
    missing = compile_toolchain_missing(device)
    if wanted is None:
        if missing and note is not None:
            note(f'note: {missing}, so torch.compile cannot run on {device.type}; training runs eagerly '
                 f'(give --no-compile to silence this)')
        return missing is None
    if wanted and missing:
        raise UsageError(f'--compile: {missing}, which torch.compile needs on {device.type}; '
                         f'use --no-compile')
    return wanted


def check_writable_dir(flag: str, folder: Path) -> None:
    """Check that ``folder`` is, or can be made, a writable directory.

    Raises:
        UsageError: an existing non-directory, or no write permission.
    """
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f'{flag} {folder}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f'{flag} {folder}: {existing} is not writable')
    try:                                       # e.g. a read-only mount, which os.access misses
        probe = tempfile.TemporaryFile(dir=existing)
    except OSError as err:
        raise UsageError(f'{flag} {folder}: cannot write in {existing} ({err.strerror})') from None
    probe.close()


def resolve_device(args: argparse.Namespace, ranks: Ranks) -> torch.device:
    """``--device``, else ``cuda:<-gpu>``, else CUDA when available, else the CPU; under
    torchrun on CUDA, ``cuda:LOCAL_RANK``.

    Raises:
        UsageError: both flags given, not a device, a CUDA device that is not here, or under
            torchrun a CUDA index given, or fewer CUDA devices on the node than processes.
    """
    if args.device is not None and args.gpu is not None:
        raise UsageError('give either -gpu or --device, not both')
    if args.gpu is not None:
        spec = f'cuda:{args.gpu}'
    elif args.device is not None:
        spec = args.device
    else:
        spec = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f'--device: not a torch device: {spec!r} (e.g. cpu, cuda, cuda:0)') from None
    if device.type != 'cuda':
        return device
    if not torch.cuda.is_available():
        raise UsageError(f'{spec}: CUDA is not available on this machine; use --device cpu')
    present = torch.cuda.device_count()
    if not ranks.active:
        if device.index is not None and device.index >= present:
            raise UsageError(f'{spec}: only {present} CUDA device(s) here')
        return device
    if device.index is not None:
        raise UsageError(f'{device}: under torchrun each process uses cuda:LOCAL_RANK; '
                         f'give --device cuda (or nothing) instead of -gpu / --device cuda:ID')
    if ranks.local_world_size > present:
        raise UsageError(f'{ranks.local_world_size} processes on this node but only {present} CUDA device(s)')
    return torch.device('cuda', ranks.local_rank)
