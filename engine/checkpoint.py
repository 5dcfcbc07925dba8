"""Checkpoints and the state they carry: atomic files, random-generator states, the
``metrics.jsonl`` log that must agree with the checkpoint after a crash.

Checkpoints are plain state dicts (``torch.save``), loaded with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch


def rng_states() -> dict:
    """Python, NumPy and torch generator states and, where CUDA is, the state of the current
    CUDA device's generator (the run's device: ``engine.run`` makes it current), under
    ``'cuda'`` (a uint8 tensor); storable with weights_only.

    Only the run's own device is saved: a state per visible GPU would not resume where fewer
    GPUs are visible (and reading them starts a CUDA context on every GPU).
    """
    np_state = np.random.get_state()
    states = {'python': [list(s) if isinstance(s, tuple) else s for s in random.getstate()],
              'numpy': [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    """Restore the generator states saved by :func:`rng_states` (CUDA's only where CUDA is).

    ``states['cuda']`` is one state, restored into the current CUDA device's generator, or,
    in checkpoints written before, a list of one state per device the saving process saw:
    device i then gets state i for the devices present here, and the states of devices not
    present are skipped with a warning that names them.
    """
    py = states['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = states['numpy']
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(states['torch'])
    if 'cuda' not in states or not torch.cuda.is_available():
        return
    saved = states['cuda']
    if isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved)
        return
    present = torch.cuda.device_count()
    for device, state in enumerate(saved[:present]):
        torch.cuda.set_rng_state(state, device)
    if len(saved) > present:
        warnings.warn(f'the checkpoint holds the CUDA generator states of {len(saved)} devices, '
                      f'{present} here: the states of devices {present}..{len(saved) - 1} were not '
                      f'restored', stacklevel=2)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators; deterministic cuDNN."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


SAVE_PAUSE_ENV = 'GRADREWIRE_TEST_SAVE_PAUSE'
"""Test-only: seconds to sleep between writing a temporary file and renaming it, so that a
fault-injection test can kill a run inside the save window (``benchmarks/kill_resume.py``)."""


class CheckpointError(Exception):
    """A checkpoint cannot be used: unreadable, not a checkpoint, or made for another
    network or method. The message is one line naming the file and why."""


class SaveError(OSError):
    """Writing a checkpoint (or the metrics log) failed, e.g. a full disk; the file that was
    there before is unchanged. The message is one line naming the file and the reason."""


def _save_error(path: Path, err: OSError) -> SaveError:
    return SaveError(f'cannot write {path} ({err.strerror or err})')


def _write_atomically(path: Path, write: Callable) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over
    ``path`` and fsync the folder. On any failure the temporary file is removed and ``path``
    is untouched.

    Raises:
        SaveError: an OSError while writing, syncing or renaming.
    """
    tmp = path.with_name(path.name + '.tmp')
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        pause = float(os.environ.get(SAVE_PAUSE_ENV) or 0)
        if pause > 0:
            time.sleep(pause)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _save_error(path, err) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it.

    A crash at any point leaves either the previous file or the new one, never a partial one.

    Raises:
        SaveError: the write failed (full disk, unwritable folder); the previous file stays.
    """
    _write_atomically(path, lambda f: torch.save(obj, f))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` an independent copy of ``src`` (its own bytes, not a hard link),
    written atomically: copied to a temporary file, fsynced, renamed.

    Raises:
        SaveError: the write failed; ``dst`` is as it was.
    """
    def copy(f):
        with open(src, 'rb') as source:
            shutil.copyfileobj(source, f, 1 << 20)
    _write_atomically(dst, copy)


def atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same file as ``src`` atomically (a hard link renamed over
    ``dst``; a copy where the file system has no hard links).

    For ``checkpoint-prev.pt``: the next :func:`atomic_save` replaces ``checkpoint.pt`` by a
    rename, so the link then holds the previous epoch on its own, at no cost in disk writes.

    Raises:
        SaveError: the link or copy failed; ``dst`` is as it was.
    """
    tmp = dst.with_name(dst.name + '.tmp')
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_copy(src, dst)
        return
    try:
        os.replace(tmp, dst)
        tmp.unlink(missing_ok=True)        # rename does nothing when both name one file
        _fsync_dir(dst.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _save_error(dst, err) from err


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by this engine (state dicts only, ``weights_only=True``).

    Everything is loaded to the CPU: random generator states must stay CPU byte tensors and
    Adam's step counts CPU scalars; ``load_state_dict`` moves weights and moments to the
    device of their parameters.
    """
    return torch.load(path, map_location='cpu', weights_only=True)


def _first_sentence(err: BaseException) -> str:
    """The first line of an error message, up to its first full stop (torch appends advice)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.split('. ')[0].rstrip('.')


TRAINING_KEYS = ('model', 'optimizers', 'epoch', 'step', 'best_acc', 'rng')
"""What a checkpoint must hold to resume training; ``-test`` needs 'model' and 'epoch'."""


def read_checkpoint(path: Path, keys: Iterable[str] = TRAINING_KEYS) -> dict:
    """:func:`load_checkpoint`, checked: a dict holding ``keys``.

    Raises:
        CheckpointError: one line naming ``path`` and why: missing, cannot be read (e.g.
            truncated: the zip reader's message), not a checkpoint of this engine.
    """
    if not Path(path).is_file():
        raise CheckpointError(f'{path}: no such file')
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:           # torch.load: zip, pickle, EOF and OS errors alike
        with open(path, 'rb') as f:
            zipped = f.read(4) == b'PK\x03\x04'
        if not zipped:                 # torch's message would be about pickle internals
            raise CheckpointError(f'{path}: cannot be read (not a torch.save file)') from None
        raise CheckpointError(f'{path}: cannot be read ({_first_sentence(err)})') from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path}: not a checkpoint (it holds a {type(ckpt).__name__}, not a dict)')
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f'{path}: not a checkpoint of this engine (no {", ".join(missing)})')
    return ckpt


def check_compatible(path: Path, ckpt: dict, model: torch.nn.Module, optimizers: dict | None) -> None:
    """Check that ``ckpt`` was made for this network (state-dict keys and shapes) and, when
    ``optimizers`` is given, for these optimizers (same method and settings), before
    anything is loaded.

    Raises:
        CheckpointError: one line naming ``path`` and the first mismatch.
    """
    ours, theirs = model.state_dict(), ckpt['model']
    if not isinstance(theirs, dict) or set(theirs) != set(ours):
        names = sorted(set(theirs) ^ set(ours)) if isinstance(theirs, dict) else ['(not a state dict)']
        raise CheckpointError(f'{path}: made for another network (tensors differ: {", ".join(names[:3])})')
    for name, tensor in ours.items():
        if not isinstance(theirs[name], torch.Tensor) or theirs[name].shape != tensor.shape:
            shape = tuple(getattr(theirs[name], 'shape', ()))
            raise CheckpointError(f'{path}: made for another network ({name} is {shape}, '
                                  f'this network has {tuple(tensor.shape)})')
    if optimizers is None:
        return
    saved = ckpt['optimizers']
    if not isinstance(saved, dict) or set(saved) != set(optimizers):
        raise CheckpointError(f'{path}: made for another network or method (optimizers differ)')
    for key, opt in optimizers.items():
        groups = saved[key].get('param_groups') if isinstance(saved[key], dict) else None
        if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
            raise CheckpointError(f'{path}: made for another method (its {key} optimizer differs)')
        for group, mine in zip(groups, opt.param_groups):
            settings = {k: v for k, v in mine.items() if k != 'params'}
            if not isinstance(group, dict) or set(group) - {'params'} != set(settings):
                raise CheckpointError(f'{path}: made for another method (its {key} optimizer '
                                      f'is not {type(opt).__name__})')
            for name, value in settings.items():
                if not _same(group[name], value):
                    raise CheckpointError(f'{path}: made with other settings ({key} optimizer '
                                          f'{name} {group[name]!r}, this run has {value!r})')


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):      # tensors: compare their text
        return repr(a) == repr(b)


def first_usable(paths: Iterable[Path], use: Callable[[Path], object]) -> tuple[Path, object, list[str]]:
    """Try ``use(path)`` on each of ``paths`` in turn, until one does not raise
    :class:`CheckpointError`.

    Returns ``(path, use(path), failures)``: the first usable path, its result, and the
    one-line reasons of those that failed before it.

    Raises:
        CheckpointError: none was usable (the message joins every file's reason).
    """
    failures = []
    for path in paths:
        try:
            return path, use(path), failures
        except CheckpointError as err:
            failures.append(str(err))
    raise CheckpointError('; '.join(failures) or 'no checkpoint')


@contextlib.contextmanager
def loading(path: Path):
    """Turn the errors of ``load_state_dict`` and of restoring generator states inside the
    block (RuntimeError, ValueError, KeyError, TypeError, IndexError) into one
    :class:`CheckpointError` line naming ``path``."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f'{path}: does not fit this run ({type(err).__name__}: '
                              f'{_first_sentence(err)})') from None


def same_file(a: Path, b: Path) -> bool:
    """Both paths exist and name the same file (one inode: a hard link counts)."""
    return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)


def save_epoch(state: dict, latest: Path, prev: Path, prev_source: Path | None) -> None:
    """Write an epoch's checkpoint, each step atomic, so that a crash anywhere leaves a
    readable ``latest`` (old or new) and ``prev``:

    1. ``prev`` becomes ``prev_source`` (a hard link when that is ``latest``, which step 2
       then replaces by a rename; an independent copy otherwise; nothing when None);
    2. ``state`` is saved to ``latest``.

    Raises:
        SaveError: a write failed; the files of the steps before are complete, ``latest``
            is the old or the new checkpoint.
    """
    if prev_source is not None and Path(prev_source).exists():
        if Path(prev_source) == latest:
            atomic_link(latest, prev)
        elif not same_file(prev_source, prev):
            atomic_copy(prev_source, prev)
    atomic_save(state, latest)


def remove_temporaries(folder: Path) -> None:
    """Delete the ``*.tmp`` files a killed save left in ``folder`` (call it only while
    holding the run's lock: another process's save in progress has such a file too)."""
    for tmp in Path(folder).glob('*.tmp'):
        tmp.unlink(missing_ok=True)


def set_aside(path: Path, why: str = 'damaged') -> Path:
    """Rename a file to ``<name>.<why>`` (``.<why>-2``, ... when taken), e.g. a damaged
    checkpoint, so that it is kept for inspection and never overwritten; returns the new path."""
    target, n = path.with_name(f'{path.name}.{why}'), 1
    while target.exists():
        n += 1
        target = path.with_name(f'{path.name}.{why}-{n}')
    os.replace(path, target)
    return target


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
    """Append one JSON line to ``metrics.jsonl`` and flush it to disk.

    Raises:
        SaveError: the write failed (e.g. a full disk).
    """
    try:
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise _save_error(path, err) from err
