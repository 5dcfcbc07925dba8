"""A run's checkpoints: what they hold, saving an epoch, resuming from the latest usable one
(``checkpoint.pt``, else ``checkpoint-prev.pt``, or ``--resume-from PATH``).

:class:`Checkpointing` is the part of :class:`engine.run.Run` that reads and writes them; it
uses the run's ``model``, ``optimizers``, ``data``, ``args``, ``name``, ``model_dir``,
``checkpoint`` and counters.
"""
from __future__ import annotations

import sys

from engine import checkpoint as ckpt_io
from engine import safety
from engine.cli import UsageError


class Checkpointing:
    """Saving and resuming a run (mixed into :class:`engine.run.Run`)."""

    def state(self) -> dict:
        """The checkpoint: state dicts of model, optimizers and data pipeline, its settings,
        epoch just finished, step, best test accuracy, every random generator state, run name."""
        return {'model': self.model.state_dict(),
                'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                'data': {**self.data.settings, 'state': self.data.state_dict()},
                'epoch': self.epoch, 'step': self.step, 'best_acc': self.best_acc,
                'rng': ckpt_io.rng_states(), 'run': self.name}

    # Set by resume() and save(): the last good checkpoint on disk as (path, epoch), and
    # the file that becomes checkpoint-prev.pt at the next save (None: prev is already right).
    saved: tuple | None = None
    _prev_source = None
    _replaced: list = []        # the run's own checkpoints that the next save sets aside

    @property
    def prev_checkpoint(self):
        """``checkpoint-prev.pt``: the epoch before the latest, the fallback when
        ``checkpoint.pt`` cannot be read."""
        return self.model_dir / 'checkpoint-prev.pt'

    def resume(self) -> bool:
        """Continue from the run's checkpoint, if any (or ``--resume-from PATH``): the next
        epoch is the one after it.

        When ``checkpoint.pt`` cannot be used but ``checkpoint-prev.pt`` can, says so in one
        line on stderr, sets the damaged file aside as ``checkpoint.pt.damaged`` and resumes
        from the previous epoch (which is trained again). With ``--resume-from`` another
        file, the first :meth:`save` keeps the run's own ``checkpoint.pt`` and
        ``checkpoint-prev.pt`` as ``<name>.replaced`` before it takes their names. Deletes
        the temporary files of a save that was killed, and makes the resumed epoch's
        numbered copy if that save did not get to it. Returns whether it resumed.

        Raises:
            UsageError: the checkpoint was made with other data settings (e.g. --workers),
                or no checkpoint can be used (the message names --resume-from PATH).
        """
        ckpt_io.remove_temporaries(self.model_dir)
        if self.args.resume_from is None and not (self.checkpoint.exists() or self.prev_checkpoint.exists()):
            return False
        path, ckpt = self._load_first(self._load_training_state)
        if self.args.resume_from is None:
            if path == self.prev_checkpoint and self.checkpoint.exists():
                ckpt_io.set_aside(self.checkpoint)
        elif not ckpt_io.same_file(path, self.checkpoint):     # the first save keeps the run's own
            self._replaced = [f for f in (self.checkpoint, self.prev_checkpoint)
                              if f.exists() and not ckpt_io.same_file(f, path)]
        self._prev_source = None if path == self.prev_checkpoint else path
        self.saved = (path, ckpt['epoch'])
        numbered = self.model_dir / f'checkpoint-{ckpt["epoch"]}.pt'
        if ckpt['epoch'] % self.args.i1 == 0 and not numbered.exists():    # a save killed before it
            ckpt_io.atomic_copy(path, numbered)
        return True

    def _load_first(self, use):
        """``use(path)`` on ``--resume-from`` or else on checkpoint.pt, then
        checkpoint-prev.pt; returns ``(path, result)``; a fallback is one line on stderr.

        Raises:
            UsageError: no usable file; one line naming each file and why.
        """
        explicit = self.args.resume_from
        paths = [explicit] if explicit is not None else [self.checkpoint, self.prev_checkpoint]
        try:
            path, ckpt, failures = ckpt_io.first_usable(paths, use)
        except ckpt_io.CheckpointError as err:
            if explicit is not None:
                raise UsageError(f'--resume-from: {err}') from None
            raise UsageError(f'no usable checkpoint of run {self.name}: {err}; resume from another '
                             f'file with --resume-from PATH (e.g. a numbered checkpoint-<epoch>.pt)') from None
        if failures and self.dist.is_main:      # one line, from rank 0 of a distributed run
            print(f'{self.exp.prog}: {"; ".join(failures)}; using {path} (epoch {ckpt["epoch"]}) instead',
                  file=sys.stderr)
        return path, ckpt

    def _load_training_state(self, path):
        """Check the checkpoint at ``path`` against this run and load all of it.

        Raises:
            CheckpointError: unreadable, or made for another network, method or settings.
            UsageError: made with other data settings (--workers).
        """
        ckpt = ckpt_io.read_checkpoint(path)
        ckpt_io.check_compatible(path, ckpt, self.model, self.optimizers)
        data = dict(ckpt.get('data', self.data.settings))
        data_state = data.pop('state', {})
        for key, value in data.items():
            if self.data.settings.get(key) != value:
                flag = '--' + key.replace('_', '-')
                raise UsageError(f'{flag} {self.data.settings.get(key)}: run {self.name} was trained '
                                 f'with {flag} {value}; resume it with {flag} {value}')
        with ckpt_io.loading(path):
            self.model.load_state_dict(ckpt['model'])
            for k, o in self.optimizers.items():
                o.load_state_dict(ckpt['optimizers'][k])
            self.data.load_state_dict(data_state)
            self.epoch, self.step, self.best_acc = ckpt['epoch'] + 1, ckpt['step'], ckpt['best_acc']
            ckpt_io.set_rng_states(ckpt['rng'])
        return ckpt

    def last_good(self) -> str:
        """The last good checkpoint on disk, for the closing line of a stopped run."""
        if self.saved is None:
            return 'there is no checkpoint yet (no epoch finished)'
        return f'the last good checkpoint is {self.saved[0]} (epoch {self.saved[1]})'

    def save(self) -> None:
        """Checkpoint the epoch just finished atomically, the one before it kept as
        checkpoint-prev.pt; an independent numbered copy every -i1 epochs. SIGINT/SIGTERM
        wait until it is done.

        Raises:
            SaveError: a write failed; the previous checkpoint is intact (or, when only the
                numbered copy failed, the new one, which ``self.saved`` names).
        """
        self.model_dir.mkdir(parents=True, exist_ok=True)
        numbered = self.model_dir / f'checkpoint-{self.epoch}.pt' if self.epoch % self.args.i1 == 0 else None
        with safety.interrupts_deferred():      # a deferred signal is raised after the update
            # Never over a good file: the run's own after --resume-from, or a numbered copy of
            # the epoch from a run that went further before it was resumed from an older file.
            for own in self._replaced + ([numbered] if numbered is not None and numbered.exists() else []):
                print(f'{own} is kept as {ckpt_io.set_aside(own, "replaced").name}')
            self._replaced = []
            ckpt_io.save_epoch(self.state(), self.checkpoint, self.prev_checkpoint, self._prev_source)
            self._prev_source, self.saved = self.checkpoint, (self.checkpoint, self.epoch)
            if numbered is not None:        # after: a failed copy still names the new checkpoint
                ckpt_io.atomic_copy(self.checkpoint, numbered)

    def load_model_only(self, path):
        """``-test``'s loader: check the checkpoint at ``path`` and load its weights only.

        Raises:
            CheckpointError: unreadable, or made for another network.
        """
        ckpt = ckpt_io.read_checkpoint(path, ('model', 'epoch'))
        ckpt_io.check_compatible(path, ckpt, self.model, None)
        with ckpt_io.loading(path):
            self.model.load_state_dict(ckpt['model'])
        return ckpt
