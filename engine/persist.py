"""The files of one run, and their one owner, :class:`RunFiles`.

Under ``<dump>/models/<run>/``: ``checkpoint.pt`` (the latest finished epoch),
``checkpoint-prev.pt`` (the one before), ``checkpoint-<epoch>.pt`` every ``-i1`` epochs and
``lock``; under ``<dump>/logs/<run>/``: ``run.json``, ``metrics.jsonl`` and TensorBoard's
events. Only rank 0 of a distributed run writes them; every rank reads the checkpoint rank 0
chose when it resumes. Formats: ``engine.checkpoint`` and ``engine.runinfo``.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable

from engine import checkpoint as ckpt_io
from engine import distributed, safety
from engine.config import RunConfig
from engine.errors import UsageError
from engine.runinfo import write_run_info


class RunFiles:
    """Saving and resuming one run; its logs' files. (Its lock: :func:`locked`.)

    Attributes:
        checkpoint, prev: ``checkpoint.pt`` and ``checkpoint-prev.pt``.
        saved: the last good checkpoint on disk as ``(path, epoch)``, or None.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.model_dir, self.log_dir = config.model_dir, config.log_dir
        self.checkpoint = self.model_dir / 'checkpoint.pt'
        self.prev = self.model_dir / 'checkpoint-prev.pt'
        self.metrics = self.log_dir / 'metrics.jsonl'
        self.saved: tuple | None = None
        self._prev_source: Path | None = None   # what becomes checkpoint-prev.pt at the next save
        self._replaced: list[Path] = []         # the run's own files the next save sets aside

    def numbered(self, epoch: int) -> Path | None:
        """``checkpoint-<epoch>.pt`` for the epochs that keep one (every ``-i1``), else None."""
        return self.model_dir / f'checkpoint-{epoch}.pt' if epoch % self.config.i1 == 0 else None

    def start_logs(self, model, epoch: int) -> list[dict]:
        """On rank 0: make the log folder, write ``run.json`` for ``model`` (a start at
        ``epoch``, the first to train) and cut ``metrics.jsonl`` back to the epochs before
        it; returns the records kept (``[]`` on the other ranks)."""
        if not self.config.is_main:
            return []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(self.log_dir, self.config, model, epoch)
        return ckpt_io.truncate_metrics(self.metrics, epoch)

    # ---------------------------------------------------------------- resuming

    def resume(self, load: Callable[[Path], dict]) -> dict | None:
        """The checkpoint the run continues from, loaded by ``load(path)`` (which checks it and
        raises ``engine.checkpoint.CheckpointError`` or UsageError): ``--resume-from PATH``,
        else ``checkpoint.pt``, else ``checkpoint-prev.pt``; None when the run has none.

        Rank 0 chooses and repairs: a damaged ``checkpoint.pt`` is set aside as
        ``checkpoint.pt.damaged`` (one line on stderr), temporary files of a killed save are
        deleted, and a numbered copy that a killed save did not get to is made. With
        ``--resume-from`` another file, the first :meth:`save` keeps the run's own
        ``checkpoint.pt`` and ``checkpoint-prev.pt`` as ``<name>.replaced``. The other
        ranks then load the file rank 0 chose.

        Raises:
            UsageError: no checkpoint can be used (the message names ``--resume-from``), or
                ``load`` refused it; every rank raises.
        """
        error, chosen, ckpt = None, None, None
        if self.config.is_main:
            try:
                ckpt = self._resume_on_main(load)
                chosen = None if ckpt is None else str(self.saved[0])
            except UsageError as err:
                error = err
        distributed.agree(error)
        chosen = distributed.broadcast_object(chosen)
        if not self.config.is_main and chosen is not None:
            try:
                ckpt = load(Path(chosen))
                self.saved = (Path(chosen), ckpt['epoch'])
            except (UsageError, ckpt_io.CheckpointError) as err:
                error = UsageError(f'{err} (under torchrun every node must see --dump-dir)')
        distributed.agree(error)
        return ckpt

    def _resume_on_main(self, load) -> dict | None:
        ckpt_io.remove_temporaries(self.model_dir)
        explicit = self.config.resume_from
        if explicit is None and not (self.checkpoint.exists() or self.prev.exists()):
            return None
        path, ckpt = self.load_first(load)
        if explicit is None:
            if path == self.prev and self.checkpoint.exists():
                ckpt_io.set_aside(self.checkpoint)
        elif not ckpt_io.same_file(path, self.checkpoint):
            self._replaced = [f for f in (self.checkpoint, self.prev)
                              if f.exists() and not ckpt_io.same_file(f, path)]
        self._prev_source = None if path == self.prev else path
        self.saved = (path, ckpt['epoch'])
        numbered = self.numbered(ckpt['epoch'])
        if numbered is not None and not numbered.exists():     # a save killed before it
            ckpt_io.atomic_copy(path, numbered)
        return ckpt

    def load_first(self, use: Callable[[Path], dict]) -> tuple[Path, dict]:
        """``use(path)`` on ``--resume-from``, or else on ``checkpoint.pt``, then
        ``checkpoint-prev.pt``; returns ``(path, result)``; a fallback is one line on stderr.

        Raises:
            UsageError: no usable file; one line naming each file and why.
        """
        explicit = self.config.resume_from
        paths = [explicit] if explicit is not None else [self.checkpoint, self.prev]
        try:
            path, ckpt, failures = ckpt_io.first_usable(paths, use)
        except ckpt_io.CheckpointError as err:
            if explicit is not None:
                raise UsageError(f'--resume-from: {err}') from None
            raise UsageError(f'no usable checkpoint of run {self.config.name}: {err}; resume from another '
                             f'file with --resume-from PATH (e.g. a numbered checkpoint-<epoch>.pt)') from None
        if failures and self.config.is_main:
            print(f'{self.config.prog}: {"; ".join(failures)}; using {path} (epoch {ckpt["epoch"]}) instead',
                  file=sys.stderr)
        return path, ckpt

    def last_good(self) -> str:
        """The last good checkpoint on disk, for the closing line of a stopped run."""
        if self.saved is None:
            return 'there is no checkpoint yet (no epoch finished)'
        return f'the last good checkpoint is {self.saved[0]} (epoch {self.saved[1]})'

    # ---------------------------------------------------------------- saving

    def save(self, state: dict, epoch: int) -> None:
        """Checkpoint epoch ``epoch`` atomically, the one before it kept as
        ``checkpoint-prev.pt``; an independent numbered copy every ``-i1`` epochs. Never over
        a good file: the run's own after ``--resume-from``, or a numbered copy of the epoch
        from a run that went further before it was resumed from an older file (both kept
        as ``*.replaced``). SIGINT/SIGTERM wait until it is done.

        Raises:
            SaveError: a write failed; the previous checkpoint is intact (or, when only the
                numbered copy failed, the new one, which ``saved`` names).
        """
        self.model_dir.mkdir(parents=True, exist_ok=True)
        numbered = self.numbered(epoch)
        with safety.interrupts_deferred():      # a deferred signal is raised after the update
            for own in self._replaced + ([numbered] if numbered is not None and numbered.exists() else []):
                print(f'{own} is kept as {ckpt_io.set_aside(own, "replaced").name}')
            self._replaced = []
            ckpt_io.save_epoch(state, self.checkpoint, self.prev, self._prev_source)
            self._prev_source, self.saved = self.checkpoint, (self.checkpoint, epoch)
            if numbered is not None:        # after: a failed copy still names the new checkpoint
                ckpt_io.atomic_copy(self.checkpoint, numbered)

    def append_metrics(self, record: dict) -> None:
        """One epoch's line of ``metrics.jsonl``, flushed to disk.

        Raises:
            SaveError: the write failed.
        """
        ckpt_io.append_metrics(self.metrics, record)


def check_test_source(config: RunConfig) -> None:
    """``-test`` needs a checkpoint of the run (or ``--resume-from``).

    Raises:
        UsageError: there is none.
    """
    files = RunFiles(config)
    if config.resume_from is None and not (files.checkpoint.exists() or files.prev.exists()):
        raise UsageError(f'-test: no checkpoint of run {config.name} under '
                         f'{config.dump_dir / "models"}; train it first (same flags without -test)')


def check_unlocked(config: RunConfig) -> None:
    """Before any data is loaded: stop (every rank) when another process holds the run's lock;
    rank 0 checks, creating nothing.

    Raises:
        UsageError: the run is locked (``engine.safety.RunLocked`` on rank 0).
    """
    error = None
    if config.is_main:
        try:
            safety.RunLock(config.model_dir).check_free()
        except safety.RunLocked as err:
            error = err
    distributed.agree(error)


@contextlib.contextmanager
def locked(config: RunConfig):
    """Hold the run's lock (rank 0) for the block; every rank stops when it cannot be had.

    Raises:
        UsageError: as :func:`check_unlocked`.
    """
    lock, error = (safety.RunLock(config.model_dir) if config.is_main else None), None
    try:
        if lock is not None:
            lock.acquire()
    except safety.RunLocked as err:
        lock, error = None, err
    distributed.agree(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
