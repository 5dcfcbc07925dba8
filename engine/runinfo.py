"""``run.json``: the settings of a run, written when its training starts.

``report.py`` reads it to know each run's data set, method and flags without parsing the
run name, and the size of every synapse tensor (to turn connectivity into synapses kept).
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

import torch.nn as nn

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


def _plain(value):
    """A flag value as JSON has it: numbers, strings, booleans and None unchanged, anything
    else (paths, torch devices) as its string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def run_info(config: RunConfig, model: nn.Module) -> dict:
    """The ``run.json`` record of a run.

    Args:
        config: the run's configuration (:meth:`RunConfig.flags` is recorded, paths and
            devices as strings).
        model: the run's network; its synapse tensors (``snn.synapses``, no BatchNorm) give
            ``synapse_counts``.

    Returns ``{'dataset', 'method', 'run', 'flags', 'synapse_counts', 'code_version',
    'started'}``; ``dataset`` is the script name without ``.py``, ``method`` the method's
    key (``engine.methods``) and ``started`` the local time in ISO 8601 with its UTC offset.
    """
    return {'dataset': config.prog.removesuffix('.py'),
            'method': config.method.key,
            'run': config.name,
            'flags': {k: _plain(v) for k, v in config.flags().items()},
            'synapse_counts': {n: p.numel() for n, p in synapses(model).items()},
            'code_version': code_version(),
            'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}


def write_run_info(log_dir: Path, config: RunConfig, model: nn.Module) -> Path:
    """Write :func:`run_info` to ``<log_dir>/run.json`` atomically (temporary file, flushed,
    renamed over the old one); a resumed run overwrites it with a new start time.

    Returns the path written. Raises ``OSError`` when the folder is not writable.
    """
    path = Path(log_dir) / RUN_INFO
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(run_info(config, model), f, indent=1)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
