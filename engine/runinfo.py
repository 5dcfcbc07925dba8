"""``run.json``: the settings of a run, written when its training starts.

``report.py`` reads it to know each run's data set, method and flags without parsing the
run name, and the size of every synapse tensor (to turn connectivity into synapses kept).
Its ``starts`` say which code, on which machine, trained which epochs: one entry per start
or resume whose epochs ``metrics.jsonl`` still holds.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.nn as nn

from engine.cli import cpu_cores
from engine.config import REPO_ROOT, RunConfig
from snn import synapses

RUN_INFO = 'run.json'
"""File name of the settings record in a run's log folder."""


def code_version(repo: Path = REPO_ROOT) -> str:
    """``git describe --always --dirty`` of ``repo``, or ``'unknown'`` when git is missing,
    fails or takes longer than 10 s (never raises)."""
    try:
        done = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=repo,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else 'unknown'


CPU_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')
"""The CPU features recorded in ``run.json`` (those that change which float kernels run)."""


START_FLAGS = ('device', 'threads', 'compile', 'amp', 'data_pipeline', 'world_size')
"""The flags recorded with each start: a resume may change them, and they change which
kernels compute a run's numbers (the top-level ``flags`` are the latest start's)."""


def machine(device: torch.device | str = 'cpu', cpuinfo: Path = Path('/proc/cpuinfo')) -> dict:
    """What a run trains on: ``{'cpu': model name, 'cpu_flags': [those of CPU_FLAGS it has],
    'cpu_capability': the vector kernels ATen uses (``torch.backends.cpu``, e.g. 'AVX2'),
    'cores': cores this process may use (:func:`engine.cli.cpu_cores`), 'torch': version}``, plus ``'gpu'``
    (the device's name, 'unknown' if it cannot be read) for a CUDA device.

    The CPU's name and flags come from ``cpuinfo`` (Linux x86; ARM's lists no name or
    flags there), else ``platform.processor()`` and no flags. Raises only for a ``device``
    that ``torch.device`` refuses."""
    name, flags = None, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name' and name is None:
                    name = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
                    break
    except OSError:
        pass
    info = {'cpu': name or platform.processor() or 'unknown',
            'cpu_flags': [f for f in CPU_FLAGS if f in flags],
            'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'cores': cpu_cores(),
            'torch': torch.__version__}
    device = torch.device(device)
    if device.type == 'cuda':
        try:
            info['gpu'] = torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):
            info['gpu'] = 'unknown'
    return info


def _plain(value):
    """A flag value as JSON has it: numbers, strings, booleans and None unchanged, anything
    else (paths, torch devices) as its string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def run_info(config: RunConfig, model: nn.Module, epoch: int = 0, earlier: list | None = None) -> dict:
    """The ``run.json`` record of a run that starts (or resumes) training at ``epoch``.

    Args:
        config: the run's configuration (:meth:`RunConfig.flags` is recorded, paths and
            devices as strings).
        model: the run's network; its synapse tensors (``snn.synapses``, no BatchNorm) give
            ``synapse_counts``.
        epoch: the first epoch this start trains.
        earlier: the ``starts`` of the run's earlier record, if any.

    Returns ``{'dataset', 'method', 'run', 'flags', 'synapse_counts', 'code_version',
    'started', 'starts'}``; ``dataset`` is the script name without ``.py``, ``method`` the
    method's key (``engine.methods``), ``code_version`` and ``started`` (the local time in
    ISO 8601 with its UTC offset) those of this start. ``starts`` lists ``{'epoch',
    'started', 'code_version', 'flags', 'machine'}`` of each start (``flags``: those of
    :data:`START_FLAGS`; ``machine``: :func:`machine`, of rank 0 under torchrun), this one
    last, keeping only the earlier starts whose first epoch is before ``epoch`` or unknown
    (None), and none when ``epoch`` is 0 (the epochs of the others are trained again).
    """
    flags = {k: _plain(v) for k, v in config.flags().items()}
    now = {'epoch': epoch, 'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
           'code_version': code_version(), 'flags': {k: flags[k] for k in START_FLAGS if k in flags},
           'machine': machine(config.device)}
    kept = [s for s in earlier or [] if epoch > 0 and (s['epoch'] is None or s['epoch'] < epoch)]
    return {'dataset': config.prog.removesuffix('.py'),
            'method': config.method.key,
            'run': config.name,
            'flags': flags,
            'synapse_counts': {n: p.numel() for n, p in synapses(model).items()},
            'code_version': now['code_version'],
            'started': now['started'],
            'starts': [*kept, now]}


def _readable_start(start) -> bool:
    """Whether ``start`` (an entry of ``run.json``'s ``starts``) is a dict whose ``epoch`` is a
    whole number >= 0 or None."""
    epoch = start.get('epoch', '') if isinstance(start, dict) else ''
    return epoch is None or (type(epoch) is int and epoch >= 0)


def earlier_starts(path: Path) -> list:
    """The ``starts`` of the ``run.json`` at ``path`` whose first epoch reads as a whole
    number or None (others are dropped); for a record written before ``starts`` existed, its
    one start at an unknown epoch, ``{'epoch': None, 'started', 'code_version'}``; ``[]``
    when there is none or the file cannot be read."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    if isinstance(old.get('starts'), list):
        return [s for s in old['starts'] if _readable_start(s)]
    if 'started' in old:
        return [{'epoch': None, 'started': old['started'], 'code_version': old.get('code_version', 'unknown')}]
    return []


def write_run_info(log_dir: Path, config: RunConfig, model: nn.Module, epoch: int = 0) -> Path:
    """Write :func:`run_info` for a start at ``epoch`` to ``<log_dir>/run.json`` atomically
    (temporary file, flushed, renamed over the old one); a resumed run's record keeps the
    earlier starts (:func:`earlier_starts`) whose epochs it does not train again.

    Returns the path written. Raises ``OSError`` when the folder is not writable.
    """
    path = Path(log_dir) / RUN_INFO
    tmp = path.with_name(path.name + '.tmp')
    info = run_info(config, model, epoch, earlier_starts(path))
    with open(tmp, 'w') as f:
        json.dump(info, f, indent=1)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
