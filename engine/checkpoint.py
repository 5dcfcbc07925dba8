"""Checkpoints and the state they carry: atomic files, random-generator states, the
``metrics.jsonl`` log that must agree with the checkpoint after a crash.

Checkpoints are plain state dicts (``torch.save``), loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_states() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, storable with weights_only."""
    np_state = np.random.get_state()
    states = {'python': [list(s) if isinstance(s, tuple) else s for s in random.getstate()],
              'numpy': [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore the generator states saved by :func:`rng_states` (CUDA's only where CUDA is)."""
    py = states['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = states['numpy']
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators; deterministic cuDNN."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it.

    A crash at any point leaves either the previous file or the new one, never a partial one.
    """
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (a hard link where the file system allows), atomically."""
    tmp = dst.with_name(dst.name + '.tmp')
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by this engine (state dicts only, ``weights_only=True``).

    Everything is loaded to the CPU: random generator states must stay CPU byte tensors and
    Adam's step counts CPU scalars; ``load_state_dict`` moves weights and moments to the
    device of their parameters.
    """
    return torch.load(path, map_location='cpu', weights_only=True)


def truncate_metrics(path: Path, first_epoch: int) -> list[dict]:
    """Keep the lines of epochs < first_epoch and return their records: a later line belongs
    to an epoch that was logged but not checkpointed (it is trained again), a half-written
    line to a crash."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            if record['epoch'] < first_epoch:
                keep.append((line, record))
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    path.write_text(''.join(line + '\n' for line, _ in keep))
    return [record for _, record in keep]


def append_metrics(path: Path, record: dict) -> None:
    """Append one JSON line to ``metrics.jsonl`` and flush it to disk."""
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())
