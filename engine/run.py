"""One named run: build it, resume it, train it epoch by epoch, test it."""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from engine import checkpoint as ckpt_io
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

    def resume(self) -> bool:
        """Continue from the run's checkpoint, if any: the next epoch is the one after it.

        Raises:
            UsageError: the checkpoint was made with other data settings (e.g. --workers).
        """
        if not self.checkpoint.exists():
            return False
        ckpt = ckpt_io.load_checkpoint(self.checkpoint)
        data = dict(ckpt.get('data', self.data.settings))
        data_state = data.pop('state', {})
        for key, value in data.items():
            if self.data.settings.get(key) != value:
                flag = '--' + key.replace('_', '-')
                raise UsageError(f'{flag} {self.data.settings.get(key)}: run {self.name} was trained '
                                 f'with {flag} {value}; resume it with {flag} {value}')
        self.model.load_state_dict(ckpt['model'])
        for k, o in self.optimizers.items():
            o.load_state_dict(ckpt['optimizers'][k])
        self.data.load_state_dict(data_state)
        self.epoch, self.step, self.best_acc = ckpt['epoch'] + 1, ckpt['step'], ckpt['best_acc']
        ckpt_io.set_rng_states(ckpt['rng'])
        return True

    def save(self) -> None:
        """Checkpoint the epoch just finished atomically; a numbered copy every -i1 epochs."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_save(self.state(), self.checkpoint)
        if self.epoch % self.args.i1 == 0:
            ckpt_io.atomic_copy(self.checkpoint, self.model_dir / f'checkpoint-{self.epoch}.pt')

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
        print(f'run {self.name} on {self.device}: logs {self.log_dir}, checkpoints {self.model_dir}')
        try:
            for self.epoch in range(self.epoch, args.N + 1):
                train_log = []

                def log_train(step, acc, loss):
                    writer.add_scalar('train/acc', acc, step)
                    writer.add_scalar('train/loss', loss, step)
                    train_log.append([step, acc, loss])

                self.step, train_s = train_epoch(
                    self.model, self.optimizers, self.data.train_batches(self.epoch),
                    self.exp.num_classes, self.step, args.i2, log_train, f'epoch {self.epoch}/{args.N}',
                    self.forward, args.amp)
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
        """Evaluate the latest checkpoint, print the figures, save firing rates as .npy."""
        ckpt = ckpt_io.load_checkpoint(self.checkpoint)
        self.model.load_state_dict(ckpt['model'])
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
