"""One named run: build it, resume it, train it epoch by epoch, test it."""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from engine import checkpoint as ckpt_io
from engine import safety
from engine.cli import Experiment, UsageError, run_name
from engine.data import DevicePipeline, ReleasedPipeline
from engine.logs import epoch_line, log_epoch, print_test_report
from engine.loop import train_epoch
from engine.metrics import evaluate, linked
from engine.optimizers import make_optimizers, synapses
from engine.runinfo import write_run_info
from engine.sops import SynapticOpsMonitor, sops_lines


class Run:
    """One named run: its model, optimizers, data pipeline, folders and counters."""

    def __init__(self, exp: Experiment, args: argparse.Namespace, datasets):
        self.exp, self.args, self.device = exp, args, args.device
        self.name = run_name(args)
        self.log_dir = args.dump_dir / 'logs' / self.name
        self.model_dir = args.dump_dir / 'models' / self.name
        self.checkpoint = self.model_dir / 'checkpoint.pt'
        if self.device.type == 'cuda' and self.device.index is not None:
            torch.cuda.set_device(self.device)     # pinned memory and kernels on -gpu ID too
        ckpt_io.seed_everything(args.seed)
        self.model = exp.build_model(args).to(self.device)
        self.optimizers = make_optimizers(args, self.model)
        self.forward = torch.compile(self.model) if args.compile else self.model
        if args.data_pipeline == 'released':
            self.data = ReleasedPipeline(datasets, args)
        else:
            self.data = DevicePipeline(datasets, args, exp.augment, exp.mean, exp.std)
        self.epoch, self.step, self.best_acc = 0, 0, 0.0

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
        from the previous epoch (which is trained again). Deletes the temporary files of a
        save that was killed, and makes the resumed epoch's numbered copy if that save did
        not get to it. Returns whether it resumed.

        Raises:
            UsageError: the checkpoint was made with other data settings (e.g. --workers),
                or no checkpoint can be used (the message names --resume-from PATH).
        """
        ckpt_io.remove_temporaries(self.model_dir)
        if self.args.resume_from is None and not (self.checkpoint.exists() or self.prev_checkpoint.exists()):
            return False
        path, ckpt = self._load_first(self._load_training_state)
        if path == self.prev_checkpoint and self.checkpoint.exists():
            ckpt_io.set_aside(self.checkpoint)
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
        if failures:
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
            SaveError: a write failed; the previous checkpoint is intact.
        """
        self.model_dir.mkdir(parents=True, exist_ok=True)
        numbered = self.model_dir / f'checkpoint-{self.epoch}.pt' if self.epoch % self.args.i1 == 0 else None
        with safety.interrupts_deferred():      # a deferred signal is raised after the update
            ckpt_io.save_epoch(self.state(), self.checkpoint, self.prev_checkpoint, self._prev_source, numbered)
            self._prev_source, self.saved = self.checkpoint, (self.checkpoint, self.epoch)

    def train(self) -> None:
        """Train epochs up to -N after :meth:`resume`, testing, logging and checkpointing
        after each."""
        args = self.args
        if self.epoch > args.N:
            print(f'{self.name}: epochs 0..{self.epoch - 1} are done; raise -N to train longer')
            return
        if self.epoch:
            print(f'resuming {self.name} at epoch {self.epoch}')
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(self.log_dir, self.exp.prog, args, self.name, self.model)
        metrics = self.log_dir / 'metrics.jsonl'
        kept = ckpt_io.truncate_metrics(metrics, self.epoch)
        writer = _writer_from(self.log_dir, self.epoch, kept)
        before = {n: linked(p) for n, p in synapses(self.model).items()}
        params = list(self.model.parameters())
        print(f'run {self.name} on {self.device}: logs {self.log_dir}, checkpoints {self.model_dir}')
        try:
            for self.epoch in range(self.epoch, args.N + 1):
                train_log = []

                def log_train(step, acc, loss):
                    writer.add_scalar('train/acc', acc, step)
                    writer.add_scalar('train/loss', loss, step)
                    train_log.append([step, acc, loss])

                watch = safety.NonFiniteWatch(params, self.step, self.device)
                self.step, train_s = train_epoch(
                    self.model, self.optimizers, self.data.train_batches(self.epoch),
                    self.exp.num_classes, self.step, args.i2, log_train, f'epoch {self.epoch}/{args.N}',
                    self.forward, args.amp, watch)
                t0 = time.perf_counter()
                sops = SynapticOpsMonitor(self.model).start() if self.epoch % args.i1 == 0 else None
                acc, rates = evaluate(self.model, self.data.test_batches(), self.device, amp=self.args.amp)
                test_s = time.perf_counter() - t0
                self.best_acc = max(self.best_acc, acc)
                record = log_epoch(writer, self.model, self.optimizers['synapse'], self.epoch,
                                   self.step, self.epoch % args.i1 == 0, acc, rates, before,
                                   train_s, test_s)
                if sops is not None:
                    record['sops'] = sops.stop()
                # The metrics line before the checkpoint: a crash in between redoes the
                # epoch, and truncate_metrics drops the line on resume.
                ckpt_io.append_metrics(metrics, {**record, 'train': train_log})
                self.save()
                print(epoch_line(record, self.best_acc), flush=True)
        finally:
            writer.close()

    def test(self) -> None:
        """Evaluate the latest checkpoint (checkpoint-prev.pt when it cannot be read, or
        ``--resume-from PATH``), print the figures, save firing rates as .npy. Reads only.

        Raises:
            UsageError: no usable checkpoint (one line naming each file and why).
        """
        def load_model(path):
            ckpt = ckpt_io.read_checkpoint(path, ('model', 'epoch'))
            ckpt_io.check_compatible(path, ckpt, self.model, None)
            with ckpt_io.loading(path):
                self.model.load_state_dict(ckpt['model'])
            return ckpt

        _, ckpt = self._load_first(load_model)
        sops = SynapticOpsMonitor(self.model).start()
        acc, rates = evaluate(self.model, self.data.test_batches(), self.device, amp=self.args.amp)
        print_test_report(self.name, ckpt['epoch'], self.model, acc, rates, self.model_dir)
        print('\n'.join(sops_lines(sops.stop())))


def _writer_from(log_dir, epoch: int, kept: list[dict]) -> SummaryWriter:
    """A TensorBoard writer that continues the run's log at ``epoch``.

    TensorBoard purges every tag of a folder from one step on, while the per-epoch tags count
    epochs and ``train/*`` counts steps. So the log is purged from step ``epoch`` (every
    per-epoch point of an epoch that is trained again goes), and the ``train/*`` points of
    finished epochs at steps >= ``epoch``, which the purge also removes, are written again
    from ``metrics.jsonl``. Afterwards every per-epoch tag has one point per finished epoch
    and no ``train/*`` point of a finished epoch is lost.
    """
    writer = SummaryWriter(str(log_dir), purge_step=epoch)
    for record in kept:
        for step, acc, loss in record.get('train', []):
            if step >= epoch:
                writer.add_scalar('train/acc', acc, step)
                writer.add_scalar('train/loss', loss, step)
    return writer
