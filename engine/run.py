"""One named run: build it, resume it, train it epoch by epoch, test it."""
from __future__ import annotations

import argparse
import time

import torch

from engine import checkpoint as ckpt_io
from engine import distributed, safety
from engine.cli import Experiment, run_name
from engine.data import make_pipeline
from engine.logs import NullWriter, epoch_line, log_epoch, print_test_report, resumed_writer
from engine.loop import train_epoch
from engine.metrics import evaluate, linked
from engine.optimizers import make_optimizers, synapses
from engine.persist import Checkpointing
from engine.runinfo import write_run_info
from engine.sops import SynapticOpsMonitor, sops_lines


class Run(Checkpointing):
    """One named run: its model, optimizers, data pipeline, folders and counters."""

    def __init__(self, exp: Experiment, args: argparse.Namespace, datasets):
        self.exp, self.args, self.device = exp, args, args.device
        self.name = run_name(args)
        self.log_dir = args.dump_dir / 'logs' / self.name
        self.model_dir = args.dump_dir / 'models' / self.name
        self.checkpoint = self.model_dir / 'checkpoint.pt'
        self.dist = distributed.current()
        if self.device.type == 'cuda' and self.device.index is not None:
            torch.cuda.set_device(self.device)     # pinned memory and kernels on -gpu ID too
        ckpt_io.seed_everything(args.seed)
        self.model = self.dist.prepare_model(exp.build_model(args).to(self.device), args.sync_bn)
        self.optimizers = make_optimizers(args, self.model)
        self.forward = self.dist.wrap(self.model, args.compile)
        self.data = make_pipeline(datasets, args, exp)
        self.dist.shard_data(self.data, args)
        self.epoch, self.step, self.best_acc = 0, 0, 0.0

    def train(self) -> None:
        """Train epochs up to -N after :meth:`resume`, testing, logging and checkpointing
        after each. Only rank 0 of a distributed run writes files."""
        args, main = self.args, self.dist.is_main
        if self.epoch > args.N:
            print(f'{self.name}: epochs 0..{self.epoch - 1} are done; raise -N to train longer')
            return
        if self.epoch:
            print(f'resuming {self.name} at epoch {self.epoch}')
        metrics, writer = self.log_dir / 'metrics.jsonl', NullWriter()
        if main:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            write_run_info(self.log_dir, self.exp.prog, args, self.name, self.model)
            kept = ckpt_io.truncate_metrics(metrics, self.epoch)
            writer = resumed_writer(self.log_dir, self.epoch, kept)
        before = {n: linked(p) for n, p in synapses(self.model).items()}
        print(f'run {self.name} on {self.device}: logs {self.log_dir}, checkpoints {self.model_dir}')
        try:
            for self.epoch in range(self.epoch, args.N + 1):
                with safety.interrupts_deferred():      # raised between steps (safety.InterruptGuard)
                    record = self.train_and_test_epoch(writer, before)
                    # The metrics line before the checkpoint: a crash in between redoes the
                    # epoch, and truncate_metrics drops the line on resume.
                    def keep():
                        ckpt_io.append_metrics(metrics, record)
                        self.save()
                    self.dist.on_main(keep, ckpt_io.SaveError)
                    print(epoch_line(record, self.best_acc), flush=True)
        finally:
            writer.close()

    def train_and_test_epoch(self, writer, before: dict) -> dict:
        """Train epoch ``self.epoch``, test, log to TensorBoard; returns its metrics record.

        Raises:
            engine.safety.NonFinite: the loss or a weight became NaN or Inf.
            engine.distributed.RanksDiverged: the processes' weights differ.
        """
        args, train_log = self.args, []

        def log_train(step, acc, loss):
            acc, loss = self.dist.mean(acc, loss)
            writer.add_scalar('train/acc', acc, step)
            writer.add_scalar('train/loss', loss, step)
            train_log.append([step, acc, loss])

        watch = self.dist.watch(list(self.model.parameters()), self.step, self.device)
        self.dist.start_epoch(self.epoch, args.seed)
        self.step, train_s = train_epoch(
            self.model, self.optimizers, self.data.train_batches(self.epoch), self.exp.num_classes,
            self.step, args.i2, log_train, f'epoch {self.epoch}/{args.N}', self.forward, args.amp, watch)
        self.dist.after_epoch(self.model, self.epoch)
        t0 = time.perf_counter()
        sops = SynapticOpsMonitor(self.model).start() if self.epoch % args.i1 == 0 else None
        acc, rates = evaluate(self.model, self.data.test_batches(), self.device, amp=args.amp,
                              reduce=self.dist.reduce_evaluation)
        test_s = time.perf_counter() - t0
        self.best_acc = max(self.best_acc, acc)
        record = log_epoch(writer, self.model, self.optimizers['synapse'], self.epoch, self.step,
                           self.epoch % args.i1 == 0, acc, rates, before, train_s, test_s)
        if sops is not None:
            record['sops'] = self.dist.reduce_sops(sops).stop()
        return {**record, 'world_size': self.dist.world_size, 'train': train_log}

    def test(self) -> None:
        """Evaluate the latest checkpoint (checkpoint-prev.pt when it cannot be read, or
        ``--resume-from PATH``), print the figures, save firing rates as .npy. Reads only.

        Raises:
            UsageError: no usable checkpoint (one line naming each file and why).
        """
        _, ckpt = self._load_first(self.load_model_only)
        sops = SynapticOpsMonitor(self.model).start()
        acc, rates = evaluate(self.model, self.data.test_batches(), self.device, amp=self.args.amp,
                              reduce=self.dist.reduce_evaluation)
        sops = self.dist.reduce_sops(sops).stop()
        if self.dist.is_main:
            print_test_report(self.name, ckpt['epoch'], self.model, acc, rates, self.model_dir)
            print('\n'.join(sops_lines(sops)))
