"""Check that a refactor keeps results bit-identical: run a fixed set of short runs with the
code of a checkout, then compare two such dumps.

    python benchmarks/bit_identity.py run CHECKOUT DUMP      # e.g. a worktree of an older commit
    python benchmarks/bit_identity.py run . DUMP2
    python benchmarks/bit_identity.py compare DUMP DUMP2
    python benchmarks/bit_identity.py runs LOGS_A LOGS_B     # two runs' log folders, epoch by epoch

The runs (each in its own process, ``--threads 1``, default flags otherwise, so compiled where a
C++ compiler is found): MNIST (real data in ``--dataset-dir``, default ``<CHECKOUT>/data``)
with ``--train-size 6000 -N 2 -i1 2`` for Grad R, Deep R (once below and once above max_s),
soft Deep R and no pruning; CIFAR-10, two training steps of Grad R (T = 2, batch 8) on
seeded stand-in data. ``compare`` checks every ``metrics.jsonl`` line (the ``*_seconds``
timings left out) and every tensor of every checkpoint for equality, prints one line per run
and exits 1 when anything differs. ``runs`` compares the ``metrics.jsonl`` of two runs (e.g.
soft and hard Deep R at the same flags) over the epochs both logged and prints, per logged
quantity, the first epoch where they differ; it exits 1 when any epoch differs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

MNIST_RUNS = {
    'grad': ['-m', 'grad', '-s', '0.95'],
    'deep': ['-m', 'deep', '-s', '0.95'],
    'deep-above-max-s': ['-m', 'deep', '-s', '0.3', '-penalty', '1e-2'],
    'soft': ['-m', 'deep', '-soft', '-s', '0.95'],
    'no_prune': ['-m', 'no_prune'],
}
MNIST_COMMON = ['--train-size', '6000', '-N', '2', '-i1', '2', '--threads', '1']

C10_STAND_IN = """
import sys, torch
from torch.utils.data import TensorDataset
import engine
from c10 import c10

def stand_in(n, seed):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

argv = ['-m', 'grad', '-s', '0.95', '-T', '2', '-b', '8', '-N', '0', '-i1', '1', '-i2', '1',
        '--threads', '1', '--device', 'cpu', '--dump-dir', sys.argv[1]]
sys.exit(engine.main(c10.EXPERIMENT, argv, datasets=(stand_in(16, 0), stand_in(8, 1))))
"""


def run_all(checkout: Path, dump: Path, dataset_dir: Path) -> None:
    """Run every configuration with the code of ``checkout`` into ``dump/<config>``."""
    env = {**os.environ, 'PYTHONPATH': str(checkout), 'OMP_NUM_THREADS': '1'}
    for name, flags in MNIST_RUNS.items():
        cmd = [sys.executable, str(checkout / 'mnist' / 'mnist.py'), *flags, *MNIST_COMMON,
               '--dataset-dir', str(dataset_dir), '--dump-dir', str(dump / name)]
        done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
        print(f'{name}: exit {done.returncode}', flush=True)
        if done.returncode:
            sys.exit(done.stderr)
    done = subprocess.run([sys.executable, '-c', C10_STAND_IN, str(dump / 'c10')], cwd=checkout,
                          env=env, capture_output=True, text=True)
    print(f'c10: exit {done.returncode}', flush=True)
    if done.returncode:
        sys.exit(done.stderr)


def _differences(a, b, where: str) -> list[str]:
    """Paths inside two nested checkpoint objects whose values are not equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f'{where}: keys {sorted(map(str, set(a) ^ set(b)))}']
        return [d for k in a for d in _differences(a[k], b[k], f'{where}/{k}')]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f'{where}: length {len(a)} != {len(b)}']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f'{where}[{i}]')]
    return [] if a == b else [f'{where}: {a!r} != {b!r}']


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith('_seconds')}
            for line in path.read_text().splitlines()]


def compare(first: Path, second: Path) -> int:
    """Compare two dumps of :func:`run_all`; returns the number of runs that differ."""
    bad = 0
    for config in sorted(p.name for p in first.iterdir() if p.is_dir()):
        problems = []
        for sub in ('logs', 'models'):
            for f in sorted((first / config / sub).rglob('*')):
                other = second / config / f.relative_to(first / config)
                if f.suffix not in ('.pt', '.jsonl'):
                    continue
                if not other.exists():
                    problems.append(f'{other} is missing')
                elif f.suffix == '.jsonl':
                    problems += [f'{f.name}: differs'] if _metrics(f) != _metrics(other) else []
                else:
                    problems += _differences(torch.load(f, weights_only=False),
                                             torch.load(other, weights_only=False), f.name)
        checked = len(list((first / config).rglob('*.pt'))) + len(list((first / config).rglob('*.jsonl')))
        print(f'{config}: {"identical" if not problems else "DIFFERS"} ({checked} files)'
              + ''.join(f'\n  {p}' for p in problems[:10]))
        bad += bool(problems)
    return bad


def compare_runs(first: Path, second: Path) -> int:
    """Print how far two runs' ``metrics.jsonl`` (in log folders ``first`` and ``second``) agree.

    Compares the epochs both runs logged, quantity by quantity (``test_acc``, ``sparsity``,
    ``layer_sparsity``, ``prune_regrow``, ``firing_rate``, ``sops`` ...; the ``*_seconds``
    timings and ``step`` left out; a quantity one run logs at an epoch and the other does not
    differs there), and prints, for each quantity, ``identical`` or the first epoch where it
    differs. Returns the number of compared epochs that differ, or 1 when no epoch was
    compared.

    Raises:
        FileNotFoundError: a folder has no ``metrics.jsonl``.
        ValueError: the two runs' lines do not list the same epochs in the same order.
    """
    a, b = (_metrics(d / 'metrics.jsonl') for d in (first, second))
    n = min(len(a), len(b))
    if [m['epoch'] for m in a[:n]] != [m['epoch'] for m in b[:n]]:
        raise ValueError(f'{first} and {second} do not log the same epochs in the same order')
    keys = list(dict.fromkeys(k for m in a[:n] + b[:n] for k in m if k not in ('epoch', 'step')))
    print(f'{first.name} ({len(a)} epochs) against {second.name} ({len(b)} epochs): '
          f'{n} epochs compared')
    for key in keys:
        split = next((x for x, y in zip(a[:n], b[:n]) if x.get(key) != y.get(key)), None)
        print(f'  {key}: ' + ('identical' if split is None else
                              f'first differs at epoch {split["epoch"]}'))
    differing = sum(any(x.get(k) != y.get(k) for k in keys) for x, y in zip(a[:n], b[:n]))
    print(f'{n - differing} of {n} epochs identical in every quantity')
    return differing if n else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='verb', required=True)
    r = sub.add_parser('run', help='run the configurations with the code of CHECKOUT into DUMP')
    r.add_argument('checkout', type=Path)
    r.add_argument('dump', type=Path)
    r.add_argument('--dataset-dir', type=Path, default=None)
    c = sub.add_parser('compare', help='compare two dumps')
    c.add_argument('first', type=Path)
    c.add_argument('second', type=Path)
    rr = sub.add_parser('runs', help="compare two runs' metrics.jsonl epoch by epoch")
    rr.add_argument('first', type=Path, help="a run's log folder (holding metrics.jsonl)")
    rr.add_argument('second', type=Path)
    args = p.parse_args()
    if args.verb == 'run':
        checkout = args.checkout.resolve()
        run_all(checkout, args.dump.resolve(), (args.dataset_dir or checkout / 'data').resolve())
        return 0
    if args.verb == 'runs':
        return 1 if compare_runs(args.first, args.second) else 0
    return 1 if compare(args.first, args.second) else 0


if __name__ == '__main__':
    sys.exit(main())
