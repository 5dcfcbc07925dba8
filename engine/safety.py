"""What keeps a training run safe from the machine and from its users: the run's lock,
interrupts (SIGINT, SIGTERM) that end it cleanly between steps or after a save, and the
watch for NaN or Inf in the loss and the weights.

``engine.main`` turns each failure into one line and an exit status (README, "Crashes and
interruptions"): 2 for a run locked by another process, 1 for NaN/Inf or a failed save,
130 for SIGINT and 143 for SIGTERM.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from engine.errors import UsageError


# ---------------------------------------------------------------- the run's lock

class RunLocked(UsageError):
    """Another live process trains the same run (exit status 2)."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<model_dir>/lock``, held while a run trains.

    The OS releases it when its holder exits or dies (even by SIGKILL), so a crashed run
    never leaves a stale lock behind. The file records the holder's host and pid, for the
    message that a second process prints. Use as a context manager, or call
    :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, model_dir: Path):
        self.path = Path(model_dir) / 'lock'
        self._fd = None

    def acquire(self) -> RunLock:
        """Take the lock without waiting, then record this host and pid in the file.

        Raises:
            RunLocked: another process holds it; the message names its host and pid.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._locked(fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({'host': socket.gethostname(), 'pid': os.getpid()}) + '\n').encode(), 0)
        self._fd = fd
        return self

    def check_free(self) -> None:
        """Fail when another process holds the lock now. Reads only (the file, when it
        exists, is opened read-only and locked shared for an instant), so a second process
        can stop before it loads any data.

        Raises:
            RunLocked: as :meth:`acquire`.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked(fd) from None
        finally:
            os.close(fd)

    def _locked(self, fd: int) -> RunLocked:
        return RunLocked(f'run {self.path.parent.name} is being trained by {_read_holder(fd)} '
                         f'(lock {self.path}); wait for it to end or stop it first')

    def release(self) -> None:
        """Give the lock back (closing the file releases it); the file stays."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """'process <pid> on host <host>' from the lock file, or a placeholder while the
    holder has not written it yet."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {holder['pid']} on host {holder['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return 'another process (its host and pid are not recorded yet)'


# ---------------------------------------------------------------- interrupts

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""Exit status of a run ended by each signal: 128 + the signal number, as a shell reports."""


class Interrupted(BaseException):
    """The run got SIGINT or SIGTERM (workers ignore SIGINT; one that dies of SIGTERM
    counts as the run's, see :func:`interrupt_of`).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in between
    swallows it. ``signum`` is the signal; :attr:`exit_status` is 130 or 143.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.signum]


class InterruptGuard:
    """Turns SIGINT and SIGTERM into :class:`Interrupted` in the main process.

    Outside :meth:`deferred` the handler raises at once (while data are loaded). Inside it
    (a training epoch, a checkpoint being written) a signal is only noted: :meth:`poll`,
    called between training steps and between test batches, raises it, or the block's end
    does, so a save in progress always completes (and the first step, which carries the
    compile warm-up with ``--compile``, finishes first). Raised anywhere else,
    the exception could land in a weakref callback, an at-fork hook or a ``__del__``, where
    Python prints it as "Exception ignored" and goes on, or inside torch's hand-over of a
    batch from a data-loader worker, whose clean-up then prints tracebacks. A second signal
    raises at once (a stalled block stays interruptible; files are written atomically
    anyway). An exception that leaves a deferred block after a signal came (a collective
    whose peer was interrupted first, a data-loader worker that died of the same signal)
    becomes the :class:`Interrupted`.

    Processes forked from this one while the guard is installed (data-loader workers) move
    to their own process group at once, so that a terminal's Ctrl-C, or a signal to the
    run's process group, reaches only the main process, which then stops its workers in
    order. Until they have moved, SIGINT is ignored in them and SIGTERM ends them by its
    default action, without a Python exception that would print. Use as a context manager;
    the previous handlers come back on exit.
    """

    def __init__(self):
        self._pid = os.getpid()
        self._deferring = 0
        self._pending = None
        self._previous = {}

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:         # a forked data-loader worker, not moved yet
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self._deferring and self._pending is None:
            self._pending = signum
            return
        self._pending = self._pending or signum
        raise Interrupted(self._pending)

    def __enter__(self) -> InterruptGuard:
        for signum in EXIT_STATUS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def poll(self) -> None:
        """A point where raising is safe: raise :class:`Interrupted` for a noted signal."""
        if self._pending is not None:
            raise Interrupted(self._pending)

    @contextlib.contextmanager
    def deferred(self):
        """Note signals during the block; raise :class:`Interrupted` for the first at a
        :meth:`poll` inside it or when it ends (also in place of an exception leaving it)."""
        self._deferring += 1
        try:
            yield
        except Exception as err:
            if self._pending is None:
                raise
            raise Interrupted(self._pending) from err
        finally:
            self._deferring -= 1
        if not self._deferring:
            self.poll()


_active_guard: InterruptGuard | None = None


def _leave_process_group() -> None:
    """In a child forked under a guard: a process group of its own (see InterruptGuard)."""
    if _active_guard is not None:
        os.setpgrp()


os.register_at_fork(after_in_child=_leave_process_group)


@contextlib.contextmanager
def interrupts_raise():
    """Install an :class:`InterruptGuard` for the block (``engine.main``'s training path)."""
    global _active_guard
    with InterruptGuard() as guard:
        _active_guard = guard
        try:
            yield guard
        finally:
            _active_guard = None


def interrupts_deferred():
    """A context manager that defers SIGINT/SIGTERM for the block (a training epoch, a file
    being written), when a guard is installed; a no-op otherwise (library use, tests
    calling ``Run.save`` directly)."""
    return _active_guard.deferred() if _active_guard is not None else contextlib.nullcontext()


def poll_interrupted() -> None:
    """Raise :class:`Interrupted` for a signal that the installed guard noted (see
    :class:`InterruptGuard`); a no-op without a guard or signal."""
    if _active_guard is not None:
        _active_guard.poll()


def worker_death(err: BaseException) -> str | None:
    """How a DataLoader worker process died, from the RuntimeError its loader raised: the
    signal as ``signal.strsignal`` names it ('Interrupt', 'Terminated', 'Killed',
    'Segmentation fault', ...), or 'exited unexpectedly'; None when ``err`` is something
    else. (When the run's own SIGINT/SIGTERM came too, the deferred block has already turned
    the error into that :class:`Interrupted`.)"""
    text = str(err)
    if not isinstance(err, RuntimeError) or 'DataLoader worker' not in text:
        return None
    killed = re.search(r'killed by signal: ([^.]+)', text)
    if killed:
        return killed.group(1).strip()
    return 'exited unexpectedly' if 'exited unexpectedly' in text else None


def interrupt_of(death: str | None) -> signal.Signals | None:
    """SIGINT or SIGTERM when a worker died of one (see :func:`worker_death`), else None."""
    return next((sig for sig in EXIT_STATUS if death == signal.strsignal(sig)), None)


# ---------------------------------------------------------------- NaN and Inf

class NonFinite(Exception):
    """The loss or a weight became NaN or Inf at global step ``step`` (exit status 1).

    ``what`` is ``'loss'`` or ``'weights'``: which was first seen non-finite.
    """

    def __init__(self, step: int, what: str):
        super().__init__(f'the {what} became NaN or Inf at step {step}')
        self.step, self.what = step, what


class NonFiniteWatch:
    """Watches the loss and the parameters for NaN/Inf on the device, without a host
    synchronisation per step.

    :meth:`after_step` (after every optimizer step) folds the step's state into device
    tensors: the first bad global step (via ``torch.where`` on a step-counter tensor) and
    what was bad. Each parameter costs one sum per step: the sum of a tensor is finite
    exactly when all its elements are (barring overflow of sums near 3e38, itself a sign of
    divergence). :meth:`check` reads the flag (``.item()``), to be called only where the
    step already waits for the device (``-i2`` logging points) and at the end of an epoch.
    """

    LOSS, WEIGHTS = 1, 2

    def __init__(self, params, step: int, device: torch.device):
        self.params = [p for p in params]
        self.counter = torch.tensor(step, dtype=torch.long, device=device)
        self.first = torch.tensor(-1, dtype=torch.long, device=device)
        self.kind = torch.tensor(0, dtype=torch.long, device=device)

    @torch.no_grad()
    def after_step(self, loss: torch.Tensor) -> None:
        """Note whether this step's loss or the parameters after it are non-finite."""
        loss_bad = ~torch.isfinite(loss.detach())
        total = torch.stack([p.sum() for p in self.params]).sum()
        weights_bad = ~torch.isfinite(total)
        new = (self.first < 0) & (loss_bad | weights_bad)
        self.first = torch.where(new, self.counter, self.first)
        kind = torch.where(loss_bad, self.LOSS, self.WEIGHTS)
        self.kind = torch.where(new, kind, self.kind)
        self.counter += 1

    def check(self) -> None:
        """Read the flag (one host synchronisation).

        Raises:
            NonFinite: naming the first bad step and whether the loss or a weight was bad.
        """
        first = int(self.first.item())
        if first >= 0:
            raise NonFinite(first, 'loss' if int(self.kind.item()) == self.LOSS else 'weights')


class SharedWatch(NonFiniteWatch):
    """``engine.NonFiniteWatch`` whose :meth:`check` reads every rank's flag (one
    all-gather), so that all ranks stop at the same check point, naming the first bad step
    over the ranks."""

    def check(self) -> None:
        """Raises:
            engine.NonFinite: the loss or a weight of some rank became NaN or Inf.
        """
        mine = torch.stack([self.first, self.kind])
        rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, mine)
        bad = [(int(f), int(k)) for f, k in torch.stack(rows).tolist() if f >= 0]
        if bad:
            first, kind = min(bad)
            raise NonFinite(first, 'loss' if kind == self.LOSS else 'weights')
