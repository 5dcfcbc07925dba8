"""The training and evaluation engine shared by the MNIST and CIFAR-10 experiments.

A dataset script (``mnist/mnist.py``, ``c10/c10.py``) describes what differs, its model,
data and defaults, in an :class:`Experiment`, and hands it to :func:`main`, which owns
everything else: the released command line, run naming, optimizers, the training loop,
evaluation with firing rates, TensorBoard logs, ``metrics.jsonl``, checkpoints and resume,
and ``-test``. Conventions follow ``shared/spec/rewiring.md`` ("Experiment conventions").
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# SpikingJelly 0.0.0.0.14 decorates its LIF kernels with torch.jit.script, which torch 2.14
# flags as deprecated at import time: noise for every run, nothing a user can act on.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
from spikingjelly.activation_based import functional, neuron
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from deeprewire import DeepRewiring
from gradrewire import GradRewiring

REPO_ROOT = Path(__file__).resolve().parent
LINK_THRESHOLD = 1e-10
"""A synapse is linked while ``|w| >= LINK_THRESHOLD`` (spec, experiment conventions)."""
MODES = ('grad', 'deep', 'no_prune')
DEFAULT_SEED = 2020


class UsageError(Exception):
    """Bad command-line input or missing data/run: reported as one line, exit status 2."""


@dataclass
class Experiment:
    """What a dataset script contributes to the shared engine.

    Attributes:
        prog: script name shown in help and errors, e.g. ``'mnist.py'``.
        description: one paragraph for ``--help``.
        defaults: released defaults of the flags that differ per data set:
            ``b`` (batch size), ``lr``, ``N`` (last epoch), ``i1``, ``i2``.
        build_model: ``args -> nn.Module``; the module maps images [N, C, H, W] to output
            firing rates [N, num_classes] in multi-step mode and has LIF layers from
            SpikingJelly. Parameters with more than one dimension are the synapses that
            the rewiring optimizers prune; the others (BatchNorm) get a plain Adam.
        load_datasets: ``args -> (train_set, test_set)`` of (image tensor, int label)
            pairs; raises :class:`UsageError` with one line when the data cannot be had.
        num_classes: number of output classes (one-hot width of the MSE target).
    """
    prog: str
    description: str
    defaults: dict
    build_model: Callable[[argparse.Namespace], nn.Module]
    load_datasets: Callable[[argparse.Namespace], tuple[Dataset, Dataset]]
    num_classes: int = 10


# ----------------------------------------------------------------------------- command line

class _OneLineParser(argparse.ArgumentParser):
    """argparse, but every error is a single line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser(exp: Experiment) -> argparse.ArgumentParser:
    """The released command line with the experiment's defaults, plus the new flags."""
    d = exp.defaults
    p = _OneLineParser(prog=exp.prog, description=exp.description,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-b', type=int, default=d['b'], metavar='B', help='batch size')
    p.add_argument('-lr', type=float, default=d['lr'], metavar='LR', help='Adam learning rate (> 0)')
    p.add_argument('-penalty', type=float, default=1e-3, metavar='P',
                   help='prior strength: alpha of Grad R, l1 of Deep R (>= 0)')
    p.add_argument('-s', type=float, default=None, metavar='S',
                   help='target sparsity: Grad R needs 0.5 <= s < 1 (any s when -penalty is 0, '
                        'which turns its prior off), Deep R (max_s) 0 <= s <= 1; required with '
                        '-m grad and -m deep, ignored with -m no_prune')
    p.add_argument('-gpu', type=int, default=None, metavar='ID',
                   help='CUDA device index (same as --device cuda:ID)')
    p.add_argument('--dataset-dir', type=_folder, default=REPO_ROOT / 'data', metavar='DIR',
                   help='where the data set is read from (and downloaded to)')
    p.add_argument('--dump-dir', type=_folder, default=REPO_ROOT / 'runs', metavar='DIR',
                   help='logs go to DIR/logs/<run>, checkpoints to DIR/models/<run>')
    p.add_argument('-T', type=int, default=8, help='simulation time steps per sample')
    p.add_argument('-N', type=int, default=d['N'],
                   help=f"index of the last epoch: epochs 0..N are trained ({d['N'] + 1} by default)")
    p.add_argument('-m', choices=MODES, default='no_prune', help='pruning method')
    p.add_argument('-soft', action='store_true', help='soft Deep R (with -m deep)')
    p.add_argument('-test', action='store_true',
                   help="evaluate the run's latest checkpoint and save its firing rates")
    p.add_argument('-i1', type=int, default=d['i1'], metavar='E',
                   help='every E epochs: firing rates, histograms and a numbered checkpoint')
    p.add_argument('-i2', type=int, default=d['i2'], metavar='K',
                   help='every K training steps: log train/acc and train/loss')
    p.add_argument('--seed', type=int, default=DEFAULT_SEED, help='seed of every random generator')
    p.add_argument('--device', default=None,
                   help='torch device, e.g. cpu, cuda, cuda:1; None: CUDA if available, else CPU')
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='data-loading worker processes')
    p.add_argument('--deepr-regrowth', choices=('released', 'active'), default='released',
                   help="with -m deep: reactivated synapses as in the released runs (never "
                        "trained again) or as Bellec et al. 2018 (trained); see deeprewire.py")
    p.add_argument('--train-size', type=int, default=None, metavar='K',
                   help='train on the first K training samples only (a smoke test; named in the run)')
    p.add_argument('--test-size', type=int, default=None, metavar='K',
                   help='evaluate on the first K test samples only (named in the run)')
    return p


def _folder(text: str) -> Path:
    """argparse type of the folder flags: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f'a folder path is needed, got {text!r}')
    return Path(text)


def _sci(x: float) -> str:
    return np.format_float_scientific(x, trim='-', exp_digits=1)


def run_name(args: argparse.Namespace) -> str:
    """The released run name, e.g. ``lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad``.

    Flags the release did not have add a suffix when they differ from their defaults
    (``-seed-7``, ``-regrowth-active``, ``-train-K``, ``-test-K``), so that such runs do not
    resume each other; ``s`` is written in full (``0.95``, ``0.9500001``).
    """
    name = f'lr-{_sci(args.lr)}-b-{args.b}-T-{args.T}'
    pruning = args.m != 'no_prune'
    if pruning:
        name += f'-penalty-{_sci(args.penalty)}'
    if args.soft:
        name = 'soft-' + name
    if args.s is not None and pruning:
        name += f'-s-{args.s}'
    name += f'-{args.m}'
    if args.seed != DEFAULT_SEED:
        name += f'-seed-{args.seed}'
    if args.m == 'deep' and not args.soft and args.deepr_regrowth != 'released':
        name += f'-regrowth-{args.deepr_regrowth}'
    if args.train_size is not None:
        name += f'-train-{args.train_size}'
    if args.test_size is not None:
        name += f'-test-{args.test_size}'
    return name


def make_synapse_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    """The optimizer of the synapses (weights) for ``-m`` grad, deep or no_prune.

    Raises:
        ValueError: from the optimizer when -s / -penalty / -lr are out of range.
    """
    if args.m == 'grad':
        return GradRewiring(params, lr=args.lr, alpha=args.penalty, s=args.s)
    if args.m == 'deep':
        # Draws on the run's device (args.device, a torch.device after validate()).
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        return DeepRewiring(params, lr=args.lr, T=0, l1=args.penalty, max_s=args.s, soft=args.soft,
                            regrowth=args.deepr_regrowth, generator=generator)
    return torch.optim.Adam(params, lr=args.lr)


_FLAG_OF_ARGUMENT = {'s': '-s', 'max_s': '-s', 'alpha': '-penalty', 'l1': '-penalty', 'lr': '-lr'}
"""The flag that sets each optimizer argument named first in its ValueError."""


def validate(args: argparse.Namespace) -> None:
    """Check the flags before any work starts.

    Raises:
        UsageError: one line naming the flag and what is allowed.
    """
    args.device = resolve_device(args)
    positive = {'-b': args.b, '-T': args.T, '-i1': args.i1, '-i2': args.i2}
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f'{flag} must be an integer >= 1, got {value}')
    for flag, value in (('--train-size', args.train_size), ('--test-size', args.test_size)):
        if value is not None and value < 1:
            raise UsageError(f'{flag} must be an integer >= 1, got {value}')
    if not args.lr > 0 or not np.isfinite(args.lr):
        raise UsageError(f'-lr must be a number > 0, got {args.lr}')
    if not args.penalty >= 0 or not np.isfinite(args.penalty):
        raise UsageError(f'-penalty must be a number >= 0, got {args.penalty}')
    if args.N < 0:
        raise UsageError(f'-N (last epoch) must be >= 0, got {args.N}')
    if args.workers < 0:
        raise UsageError(f'--workers must be >= 0, got {args.workers}')
    check_writable_dir('--dump-dir', args.dump_dir)
    if args.soft and args.m != 'deep':
        raise UsageError(f'-soft applies to -m deep only, got -m {args.m}')
    if args.m != 'no_prune':
        if args.s is None and not (args.m == 'grad' and args.penalty <= 1e-8):
            allowed = '0.5 <= s < 1' if args.m == 'grad' else '0 <= s <= 1'
            raise UsageError(f'-s (target sparsity) is required with -m {args.m}; allowed: {allowed}')
        try:
            make_synapse_optimizer(args, [nn.Parameter(torch.zeros(1))])
        except ValueError as err:
            flag = _FLAG_OF_ARGUMENT.get(str(err).split()[0], '')
            raise UsageError(f'-m {args.m} {flag}: {err}'.replace('  ', ' ')) from None


def check_writable_dir(flag: str, folder: Path) -> None:
    """Check that ``folder`` is, or can be made, a writable directory.

    Raises:
        UsageError: an existing non-directory, or no write permission.
    """
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f'{flag} {folder}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f'{flag} {folder}: {existing} is not writable')
    try:                                       # e.g. a read-only mount, which os.access misses
        probe = tempfile.TemporaryFile(dir=existing)
    except OSError as err:
        raise UsageError(f'{flag} {folder}: cannot write in {existing} ({err.strerror})') from None
    probe.close()


def resolve_device(args: argparse.Namespace) -> torch.device:
    """``--device``, else ``cuda:<-gpu>``, else CUDA when available, else the CPU."""
    if args.device is not None and args.gpu is not None:
        raise UsageError('give either -gpu or --device, not both')
    if args.gpu is not None:
        spec = f'cuda:{args.gpu}'
    elif args.device is not None:
        spec = args.device
    else:
        spec = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f'--device: not a torch device: {spec!r} (e.g. cpu, cuda, cuda:0)') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'{spec}: CUDA is not available on this machine; use --device cpu')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f'{spec}: only {torch.cuda.device_count()} CUDA device(s) here')
    return device


# ----------------------------------------------------------------------------- measurements

def synapses(model: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable parameters: every parameter with more than one dimension (conv/linear)."""
    return {n: p for n, p in model.named_parameters() if p.dim() > 1}


def non_synapses(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that are never pruned (BatchNorm weights and biases): 1-D ones."""
    return [p for p in model.parameters() if p.dim() <= 1]


def linked(p: torch.Tensor) -> torch.Tensor:
    """Bool mask of linked synapses, ``|w| >= 1e-10`` (spec, experiment conventions)."""
    return p.detach().abs() >= LINK_THRESHOLD


def sparsity_report(model: nn.Module) -> dict:
    """Sparsity (fraction of ``|w| < 1e-10``) per synapse tensor and overall.

    Returns ``{'layers': {name: float}, 'overall': float}``, plus ``'with_bn'`` (all
    parameters) when the model has non-synapse parameters; ``'overall'`` then counts the
    synapses only ("without bn").
    """
    syn = synapses(model)
    layers, zeros, total = {}, 0, 0
    for name, p in syn.items():
        z = int((~linked(p)).sum())
        layers[name] = z / p.numel()
        zeros, total = zeros + z, total + p.numel()
    report = {'layers': layers, 'overall': zeros / total}
    others = non_synapses(model)
    if others:
        z_all = zeros + sum(int((~linked(p)).sum()) for p in others)
        report['with_bn'] = z_all / (total + sum(p.numel() for p in others))
    return report


class FiringRateMonitor:
    """Counts spikes of every LIF layer on the device during an evaluation pass.

    Forward hooks on each ``spikingjelly`` spiking neuron module (multi-step mode, output
    [T, N, *shape]) accumulate per-neuron spike counts and the number of (sample, neuron)
    pairs that stay silent for all T steps; nothing is copied to the host until
    :meth:`results`. Use as a context manager around the evaluation loop.
    """

    def __init__(self, model: nn.Module):
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, neuron.BaseNode)}
        self.spikes, self.silent, self.samples, self.T = {}, {}, 0, None
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, out):
            if out.dim() < 3:
                raise RuntimeError(f'{name}: FiringRateMonitor needs multi-step mode, output [T, N, ...]')
            per_sample = out.detach().sum(0)                     # [N, *shape] spike counts
            if name not in self.spikes:
                self.spikes[name] = torch.zeros(per_sample.shape[1:], device=out.device)
                self.silent[name] = torch.zeros((), dtype=torch.long, device=out.device)
            self.spikes[name] += per_sample.sum(0)
            self.silent[name] += (per_sample == 0).sum()
            self.T = out.shape[0]
        return hook

    def count_samples(self, n: int) -> None:
        """Add the ``n`` samples of the batch just simulated to the denominator of the rates."""
        self.samples += n

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def results(self) -> dict:
        """``{layer: {'avg_firing_rate', 'nonfire_prop', 'per_neuron'}}``.

        ``avg_firing_rate``: spikes per neuron per time step, averaged over neurons and
        samples; ``nonfire_prop``: fraction of (sample, neuron) pairs with no spike in T
        steps; ``per_neuron``: numpy array [*neuron shape], spikes per time step per sample.
        """
        out = {}
        for name, spikes in self.spikes.items():
            per_neuron = (spikes / (self.samples * self.T)).cpu().numpy()
            out[name] = {'avg_firing_rate': float(per_neuron.mean()),
                         'nonfire_prop': float(self.silent[name]) / (self.samples * spikes.numel()),
                         'per_neuron': per_neuron}
        return out


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = 'test'):
    """Evaluate ``model`` on ``loader`` in evaluation mode, without gradients.

    Returns:
        ``(accuracy, rates)``: the fraction of samples whose arg-max output firing rate (=
        spike count) is the label, and :meth:`FiringRateMonitor.results` of every LIF layer.
    """
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with FiringRateMonitor(model) as monitor:
        for img, label in tqdm(loader, desc=desc, leave=False, disable=None):
            img, label = img.to(device, non_blocking=True), label.to(device, non_blocking=True)
            correct += (model(img).argmax(1) == label).sum()
            monitor.count_samples(label.numel())
            functional.reset_net(model)
    return int(correct) / monitor.samples, monitor.results()


# ----------------------------------------------------------------------------- checkpoints

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


# ----------------------------------------------------------------------------- the run

def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators; deterministic cuDNN (spec, conventions)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _subset(ds: Dataset, k: int | None) -> Dataset:
    return ds if k is None else Subset(ds, range(min(k, len(ds))))


def _loader(ds, args, shuffle):
    """A DataLoader that draws its shuffling and worker seeds from torch's global generator.

    As in the released scripts (DataLoader without a generator): after seeding and building
    the model, each epoch's iterator draws the workers' base seed and then the shuffle seed
    from the global stream, so a run with a given ``--seed`` sees the released scripts' data
    order. Workers are not persistent: each epoch's workers are seeded anew from that stream,
    whose state the checkpoint keeps (:func:`rng_states`), so a resumed run shuffles and
    augments exactly as an uninterrupted one.
    """
    return DataLoader(ds, batch_size=args.b, shuffle=shuffle, num_workers=args.workers,
                      pin_memory=args.device.type == 'cuda', drop_last=False)


class Run:
    """One named run: its model, optimizers, loaders, writer, checkpoints and state."""

    def __init__(self, exp: Experiment, args: argparse.Namespace, datasets):
        self.exp, self.args = exp, args
        self.name = run_name(args)
        self.log_dir = args.dump_dir / 'logs' / self.name
        self.model_dir = args.dump_dir / 'models' / self.name
        self.checkpoint = self.model_dir / 'checkpoint.pt'
        self.device = args.device
        if self.device.type == 'cuda' and self.device.index is not None:
            torch.cuda.set_device(self.device)     # pinned memory and kernels on -gpu ID too
        seed_everything(args.seed)
        self.model = exp.build_model(args).to(self.device)
        others = non_synapses(self.model)
        self.optimizers = {'synapse': make_synapse_optimizer(args, list(synapses(self.model).values()))}
        if others:   # BatchNorm: never pruned, plain Adam with the same learning rate
            self.optimizers['bn'] = torch.optim.Adam(others, lr=args.lr)
        train_set, test_set = datasets
        self.train_loader = _loader(_subset(train_set, args.train_size), args, True)
        self.test_loader = _loader(_subset(test_set, args.test_size), args, False)
        self.epoch, self.step, self.best_acc = 0, 0, 0.0

    # -- persistence
    def state(self) -> dict:
        """The checkpoint: state dicts of model and optimizers, epoch just finished, step,
        best test accuracy, every random generator state and the run name."""
        return {'model': self.model.state_dict(),
                'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                'epoch': self.epoch, 'step': self.step, 'best_acc': self.best_acc,
                'rng': rng_states(),
                'run': self.name}

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint of :meth:`state`: the next epoch is the one after it."""
        self.model.load_state_dict(ckpt['model'])
        for k, o in self.optimizers.items():
            o.load_state_dict(ckpt['optimizers'][k])
        self.epoch, self.step, self.best_acc = ckpt['epoch'] + 1, ckpt['step'], ckpt['best_acc']
        set_rng_states(ckpt['rng'])

    def save(self) -> None:
        """Checkpoint the epoch just finished atomically; a numbered copy every -i1 epochs."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        atomic_save(self.state(), self.checkpoint)
        if self.epoch % self.args.i1 == 0:
            atomic_copy(self.checkpoint, self.model_dir / f'checkpoint-{self.epoch}.pt')

    # -- training
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

    def log_epoch(self, writer, acc, rates, before, train_s, test_s) -> dict:
        """Write the epoch's TensorBoard scalars/histograms and return its metrics.jsonl record.

        ``before`` maps each synapse tensor's name to its linked mask at the previous
        evaluation (updated in place) for the prune/regrow counts.
        """
        epoch, syn = self.epoch, synapses(self.model)
        report = sparsity_report(self.model)
        writer.add_scalar('test_acc', acc, epoch)
        if 'with_bn' in report:
            writer.add_scalar('sparsity/with bn', report['with_bn'], epoch)
            writer.add_scalar('sparsity/without bn', report['overall'], epoch)
        else:
            writer.add_scalar('sparsity', report['overall'], epoch)
        counts = {}
        for name, p in syn.items():
            now = linked(p)
            pruned, regrown = int((before[name] & ~now).sum()), int((~before[name] & now).sum())
            counts[name] = {'pruned': pruned, 'regrown': regrown}
            writer.add_scalar(f'layer sparsity/{name}', report['layers'][name], epoch)
            writer.add_scalar(f'prune_cnt/{name}', pruned, epoch)
            writer.add_scalar(f'regrow_cnt/{name}', regrown, epoch)
            writer.add_scalar(f'prune-regrow/{name}', pruned - regrown, epoch)
            before[name] = now
        if epoch % self.args.i1 == 0:
            for layer, r in rates.items():
                writer.add_scalar(f'avg_firing_rate/{layer}', r['avg_firing_rate'], epoch)
                writer.add_scalar(f'nonfire_prop/{layer}', r['nonfire_prop'], epoch)
            state = self.optimizers['synapse'].state
            for name, p in syn.items():
                writer.add_histogram(f'{name}-w', p.detach(), epoch)
                if 'strength' in state.get(p, {}):
                    writer.add_histogram(f'{name}-theta', state[p]['strength'], epoch)
        writer.flush()
        record = {'epoch': epoch, 'step': self.step, 'test_acc': acc,
                  'sparsity': report['overall'], 'layer_sparsity': report['layers'],
                  'prune_regrow': counts,
                  'firing_rate': {k: r['avg_firing_rate'] for k, r in rates.items()},
                  'train_seconds': round(train_s, 3), 'test_seconds': round(test_s, 3)}
        if 'with_bn' in report:
            record['sparsity_with_bn'] = report['with_bn']
        return record

    def train(self) -> None:
        """Resume from the run's checkpoint if there is one, then train epochs up to -N,
        testing, logging and checkpointing after each."""
        from torch.utils.tensorboard import SummaryWriter
        args = self.args
        if self.checkpoint.exists():
            self.restore(load_checkpoint(self.checkpoint))
            if self.epoch > args.N:
                print(f'{self.name}: epochs 0..{self.epoch - 1} are done; raise -N to train longer')
                return
            print(f'resuming {self.name} at epoch {self.epoch}')
        self.log_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.log_dir / 'metrics.jsonl'
        _truncate_metrics(metrics, self.epoch)
        writer = SummaryWriter(str(self.log_dir), purge_step=self.step if self.step else None)
        before = {n: linked(p) for n, p in synapses(self.model).items()}
        print(f'run {self.name} on {self.device}: logs {self.log_dir}, checkpoints {self.model_dir}')
        try:
            for self.epoch in range(self.epoch, args.N + 1):
                train_s = self.train_epoch(writer)
                t0 = time.perf_counter()
                acc, rates = evaluate(self.model, self.test_loader, self.device)
                test_s = time.perf_counter() - t0
                self.best_acc = max(self.best_acc, acc)
                record = self.log_epoch(writer, acc, rates, before, train_s, test_s)
                with open(metrics, 'a') as f:     # before the checkpoint: a crash in
                    f.write(json.dumps(record) + '\n')    # between redoes the epoch and
                    f.flush()                           # _truncate_metrics drops this line
                    os.fsync(f.fileno())
                self.save()
                syn = ', '.join(f'{k} {v:.4f}' for k, v in record['layer_sparsity'].items())
                print(f"epoch {self.epoch}: test_acc {acc:.4f} (best {self.best_acc:.4f}), "
                      f"sparsity {record['sparsity']:.4f} [{syn}], "
                      f"train {train_s:.1f} s, test {test_s:.1f} s", flush=True)
        finally:
            writer.close()

    def test(self) -> None:
        """Evaluate the latest checkpoint, print the figures, save firing rates as .npy."""
        ckpt = load_checkpoint(self.checkpoint)
        self.model.load_state_dict(ckpt['model'])
        acc, rates = evaluate(self.model, self.test_loader, self.device)
        report = sparsity_report(self.model)
        print(f'run {self.name}, checkpoint of epoch {ckpt["epoch"]}')
        print(f'test_acc {acc:.4f}')
        for name, s in report['layers'].items():
            print(f'layer sparsity {name}: {s:.4f}')
        if 'with_bn' in report:
            print(f"sparsity without bn {report['overall']:.4f}")
            print(f"sparsity with bn {report['with_bn']:.4f}")
        else:
            print(f"sparsity {report['overall']:.4f}")
        for layer, r in rates.items():
            path = self.model_dir / f'firing_rate-{layer}.npy'
            np.save(path, r['per_neuron'])
            print(f"firing rate {layer}: {r['avg_firing_rate']:.4f} (non-firing {r['nonfire_prop']:.4f}) -> {path}")


def _truncate_metrics(path: Path, first_epoch: int) -> None:
    """Keep the lines of epochs < first_epoch: a later line belongs to an epoch that was
    logged but not checkpointed (it is trained again), a half-written line to a crash."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)['epoch'] < first_epoch:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    path.write_text(''.join(line + '\n' for line in keep))


def main(exp: Experiment, argv: Sequence[str] | None = None, datasets=None) -> int:
    """Parse the command line, validate it, then train (resuming) or run ``-test``.

    Args:
        exp: the dataset script's :class:`Experiment`.
        argv: command-line arguments (default ``sys.argv[1:]``).
        datasets: optional ``(train_set, test_set)`` used instead of ``exp.load_datasets``
            (tests pass stand-ins here).

    Returns the exit status: 0 on success, 2 on a usage error (one line on stderr, no file
    written).
    """
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    try:
        validate(args)
        if args.test and not (args.dump_dir / 'models' / run_name(args) / 'checkpoint.pt').exists():
            raise UsageError(f'-test: no checkpoint of run {run_name(args)} under '
                             f'{args.dump_dir / "models"}; train it first (same flags without -test)')
        run = Run(exp, args, datasets if datasets is not None else exp.load_datasets(args))
    except UsageError as err:
        print(f'{exp.prog}: error: {err}', file=sys.stderr)
        return 2
    if args.test:
        run.test()
    else:
        run.train()
    return 0
