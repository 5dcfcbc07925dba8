"""One named run: build it, train it epoch by epoch (resuming), test it."""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from engine import checkpoint as ckpt_io
from engine.cli import Experiment, run_name
from engine.data import make_loader, subset
from engine.logs import epoch_line, log_epoch, print_test_report
from engine.metrics import evaluate, linked
from engine.optimizers import make_optimizers, synapses
from engine.runinfo import write_run_info
from engine.sops import SynapticOpsMonitor, sops_lines


class Run:
    """One named run: its model, optimizers, loaders, folders, checkpoints and counters."""

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
        train_set, test_set = datasets
        self.train_loader = make_loader(subset(train_set, args.train_size), args, True)
        self.test_loader = make_loader(subset(test_set, args.test_size), args, False)
        self.epoch, self.step, self.best_acc = 0, 0, 0.0

    def state(self) -> dict:
        """The checkpoint: state dicts of model and optimizers, epoch just finished, step,
        best test accuracy, every random generator state and the run name."""
        return {'model': self.model.state_dict(),
                'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                'epoch': self.epoch, 'step': self.step, 'best_acc': self.best_acc,
                'rng': ckpt_io.rng_states(), 'run': self.name}

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint of :meth:`state`: the next epoch is the one after it."""
        self.model.load_state_dict(ckpt['model'])
        for k, o in self.optimizers.items():
            o.load_state_dict(ckpt['optimizers'][k])
        self.epoch, self.step, self.best_acc = ckpt['epoch'] + 1, ckpt['step'], ckpt['best_acc']
        ckpt_io.set_rng_states(ckpt['rng'])

    def save(self) -> None:
        """Checkpoint the epoch just finished atomically; a numbered copy every -i1 epochs."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_save(self.state(), self.checkpoint)
        if self.epoch % self.args.i1 == 0:
            ckpt_io.atomic_copy(self.checkpoint, self.model_dir / f'checkpoint-{self.epoch}.pt')

    def train_epoch(self, writer) -> float:
        """Train one epoch (MSE of output firing rate vs one-hot label); returns its seconds."""
        model, args = self.model, self.args
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f'epoch {self.epoch}/{args.N}', leave=False, disable=None)
        for img, label in bar:
            img, label = img.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)
            rate = model(img)
            loss = F.mse_loss(rate, F.one_hot(label, self.exp.num_classes).to(rate.dtype))
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in self.optimizers.values():
                opt.step()
            functional.reset_net(model)
            self.step += 1
            if self.step % args.i2 == 0:
                acc = (rate.argmax(1) == label).float().mean().item()
                writer.add_scalar('train/acc', acc, self.step)
                writer.add_scalar('train/loss', loss.item(), self.step)
                bar.set_postfix(loss=f'{loss.item():.4f}', acc=f'{acc:.3f}')
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def train(self) -> None:
        """Resume from the run's checkpoint if there is one, then train epochs up to -N,
        testing, logging and checkpointing after each."""
        args = self.args
        if self.checkpoint.exists():
            self.restore(ckpt_io.load_checkpoint(self.checkpoint))
            if self.epoch > args.N:
                print(f'{self.name}: epochs 0..{self.epoch - 1} are done; raise -N to train longer')
                return
            print(f'resuming {self.name} at epoch {self.epoch}')
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(self.log_dir, self.exp.prog, args, self.name, self.model)
        metrics = self.log_dir / 'metrics.jsonl'
        ckpt_io.truncate_metrics(metrics, self.epoch)
        writer = SummaryWriter(str(self.log_dir), purge_step=self.step if self.step else None)
        before = {n: linked(p) for n, p in synapses(self.model).items()}
        print(f'run {self.name} on {self.device}: logs {self.log_dir}, checkpoints {self.model_dir}')
        try:
            for self.epoch in range(self.epoch, args.N + 1):
                train_s = self.train_epoch(writer)
                t0 = time.perf_counter()
                sops = SynapticOpsMonitor(self.model).start() if self.epoch % args.i1 == 0 else None
                acc, rates = evaluate(self.model, self.test_loader, self.device)
                test_s = time.perf_counter() - t0
                self.best_acc = max(self.best_acc, acc)
                record = log_epoch(writer, self.model, self.optimizers['synapse'], self.epoch,
                                   self.step, self.epoch % args.i1 == 0, acc, rates, before,
                                   train_s, test_s)
                if sops is not None:
                    record['sops'] = sops.stop()
                # The metrics line before the checkpoint: a crash in between redoes the
                # epoch, and truncate_metrics drops the line on resume.
                ckpt_io.append_metrics(metrics, record)
                self.save()
                print(epoch_line(record, self.best_acc), flush=True)
        finally:
            writer.close()

    def test(self) -> None:
        """Evaluate the latest checkpoint, print the figures, save firing rates as .npy."""
        ckpt = ckpt_io.load_checkpoint(self.checkpoint)
        self.model.load_state_dict(ckpt['model'])
        sops = SynapticOpsMonitor(self.model).start()
        acc, rates = evaluate(self.model, self.test_loader, self.device)
        print_test_report(self.name, ckpt['epoch'], self.model, acc, rates, self.model_dir)
        print('\n'.join(sops_lines(sops.stop())))
