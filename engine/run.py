"""One named run: build it, resume it, train it epoch by epoch, test it."""
from __future__ import annotations

import time

import torch

from engine import checkpoint as ckpt_io
from engine import distributed, safety
from engine.cli import Experiment
from engine.config import RunConfig
from engine.data import make_pipeline
from engine.errors import UsageError
from engine.logs import NullWriter, epoch_line, log_epoch, print_test_report, resumed_writer
from engine.loop import train_epoch
from engine.metrics import evaluate, linked
from engine.optimizers import make_optimizers
from engine.persist import RunFiles
from engine.sops import SynapticOpsMonitor, sops_lines
from snn import convert_sync_batchnorm, synapses


class Run:
    """One named run: its model, optimizers, data pipeline, files (:class:`RunFiles`) and
    counters (``epoch``: the next to train; ``step``: training steps so far)."""

    def __init__(self, exp: Experiment, config: RunConfig, datasets):
        self.exp, self.config, self.device = exp, config, config.device
        self.files = RunFiles(config)
        if self.device.type == 'cuda' and self.device.index is not None:
            torch.cuda.set_device(self.device)     # pinned memory and kernels on -gpu ID too
        ckpt_io.seed_everything(config.seed)
        self.model = exp.build_model(config).to(self.device)
        if config.distributed and config.sync_bn:
            convert_sync_batchnorm(self.model)
        self.data = make_pipeline(datasets, config, exp)
        self.optimizers = make_optimizers(config, self.model, self.data.steps_per_epoch)
        self.forward = distributed.wrap(self.model, config.compile)
        self.epoch, self.step, self.best_acc = 0, 0, 0.0

    # ---------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        """The checkpoint: state dicts of model, optimizers and data pipeline, its settings,
        epoch just finished, step, best test accuracy, every random generator state, run name."""
        return {'model': self.model.state_dict(),
                'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                'data': {**self.data.settings, 'state': self.data.state_dict()},
                'epoch': self.epoch, 'step': self.step, 'best_acc': self.best_acc,
                'rng': ckpt_io.rng_states(), 'run': self.config.name}

    def load_state(self, path) -> dict:
        """Check the checkpoint at ``path`` against this run and load all of it; the next
        epoch is the one after it.

        Raises:
            CheckpointError: unreadable, or made for another network, method or settings.
            UsageError: made with other data settings (e.g. --workers).
        """
        ckpt = ckpt_io.read_checkpoint(path)
        ckpt_io.check_compatible(path, ckpt, self.model, self.optimizers)
        data = dict(ckpt.get('data', self.data.settings))
        data_state = data.pop('state', {})
        for key, value in data.items():
            if self.data.settings.get(key) != value:
                flag = '--' + key.replace('_', '-')
                raise UsageError(f'{flag} {self.data.settings.get(key)}: run {self.config.name} was '
                                 f'trained with {flag} {value}; resume it with {flag} {value}')
        with ckpt_io.loading(path):
            self.model.load_state_dict(ckpt['model'])
            for k, o in self.optimizers.items():
                o.load_state_dict(ckpt['optimizers'][k])
            self.data.load_state_dict(data_state)
            self.epoch, self.step, self.best_acc = ckpt['epoch'] + 1, ckpt['step'], ckpt['best_acc']
            ckpt_io.set_rng_states(ckpt['rng'])
        return ckpt

    def load_weights(self, path) -> dict:
        """``-test``'s loader: check the checkpoint at ``path`` and load its weights only.

        Raises:
            CheckpointError: unreadable, or made for another network.
        """
        ckpt = ckpt_io.read_checkpoint(path, ('model', 'epoch'))
        ckpt_io.check_compatible(path, ckpt, self.model, None)
        with ckpt_io.loading(path):
            self.model.load_state_dict(ckpt['model'])
        return ckpt

    # ---------------------------------------------------------------- training and testing

    def train(self) -> None:
        """Train epochs up to -N, after resuming from the run's checkpoint if any, testing,
        logging and checkpointing after each. Only rank 0 writes files."""
        config, files = self.config, self.files
        files.resume(self.load_state)
        if self.epoch > config.N:
            print(f'{config.name}: epochs 0..{self.epoch - 1} are done; raise -N to train longer')
            return
        if self.epoch:
            print(f'resuming {config.name} at epoch {self.epoch}')
        kept = files.start_logs(self.model, self.epoch)
        writer = resumed_writer(files.log_dir, self.epoch, kept) if config.is_main else NullWriter()
        before = {n: linked(p) for n, p in synapses(self.model).items()}
        print(f'run {config.name} on {self.device}: logs {files.log_dir}, checkpoints {files.model_dir}')
        try:
            for self.epoch in range(self.epoch, config.N + 1):
                with safety.interrupts_deferred():      # raised between steps (safety.InterruptGuard)
                    record = self.train_and_test_epoch(writer, before)
                    # The metrics line before the checkpoint: a crash in between redoes the
                    # epoch, and truncate_metrics drops the line on resume.
                    def keep():
                        files.append_metrics(record)
                        files.save(self.state(), self.epoch)
                    distributed.on_main(keep, ckpt_io.SaveError)
                    print(epoch_line(record, self.best_acc), flush=True)
        finally:
            writer.close()

    def train_and_test_epoch(self, writer, before: dict) -> dict:
        """Train epoch ``self.epoch``, test, log to TensorBoard; returns its metrics record.

        Raises:
            engine.safety.NonFinite: the loss or a weight became NaN or Inf.
            engine.distributed.RanksDiverged: the processes' weights differ.
        """
        config, train_log = self.config, []

        def log_train(step, acc, loss):
            acc, loss = distributed.mean(acc, loss)
            writer.add_scalar('train/acc', acc, step)
            writer.add_scalar('train/loss', loss, step)
            train_log.append([step, acc, loss])

        watch = (safety.SharedWatch if config.distributed else safety.NonFiniteWatch)(
            list(self.model.parameters()), self.step, self.device)
        distributed.seed_epoch(config.seed, self.epoch)
        self.step, train_s = train_epoch(
            self.model, self.optimizers, self.data.train_batches(self.epoch), self.exp.num_classes,
            self.step, config.i2, log_train, f'epoch {self.epoch}/{config.N}', self.forward, config.amp, watch)
        distributed.end_epoch(self.model, self.epoch)
        t0 = time.perf_counter()
        sops = SynapticOpsMonitor(self.model).start() if self.epoch % config.i1 == 0 else None
        acc, rates = evaluate(self.model, self.data.test_batches(), self.device, amp=config.amp)
        test_s = time.perf_counter() - t0
        self.best_acc = max(self.best_acc, acc)
        record = log_epoch(writer, self.model, config.method, self.optimizers['synapse'], self.epoch,
                           self.step, self.epoch % config.i1 == 0, acc, rates, before, train_s, test_s)
        if sops is not None:
            record['sops'] = sops.reduce().stop()
        return {**record, 'world_size': config.world_size, 'train': train_log}

    def test(self) -> None:
        """Evaluate the latest checkpoint (checkpoint-prev.pt when it cannot be read, or
        ``--resume-from PATH``), print the figures, save firing rates as .npy. Reads only.

        Raises:
            UsageError: no usable checkpoint (one line naming each file and why).
        """
        _, ckpt = self.files.load_first(self.load_weights)
        sops = SynapticOpsMonitor(self.model).start()
        acc, rates = evaluate(self.model, self.data.test_batches(), self.device, amp=self.config.amp)
        sops = sops.reduce().stop()
        if self.config.is_main:
            print_test_report(self.config.name, ckpt['epoch'], self.model, acc, rates, self.files.model_dir)
            print('\n'.join(sops_lines(sops)))
