"""Wall time of one small sweep grid at several ``--jobs`` values, run in turn, side by side.

First ``--warmup`` sweeps at the first ``--jobs`` value, not counted (they fill
torch.compile's kernel cache, which would otherwise weigh on the first run). Then each round
runs ``sweep.py`` once per ``--jobs`` value (the order alternates from round to
round: 1 2, 2 1, ...), each time into a fresh, empty dump folder, so every configuration
trains from scratch and the report runs at the end, as in a real sweep. Per run it prints
the wall seconds, the CPU seconds of all the sweep's processes (user + system, from the
OS's accounting of the finished children), the configurations finished per minute and the
1-minute load average before the run (what else the machine was doing); then per ``--jobs``
value the median wall seconds and its ratio to the first value's.

Usage: python benchmarks/sweep_jobs.py [--jobs 1,2] [--rounds 2] [--warmup 1] [--dataset mnist]
       [--methods grad,deep,soft,no_prune] [-s 0.95] [-- flags passed on to sweep.py]

Default grid: the four methods at ``-s 0.95`` on MNIST with ``--train-size 6000 -N 1``
(2 epochs of 46 steps each and the full test set after each), the script's default flags
otherwise (torch.compile where the toolchain is there: each configuration carries its
compile warm-up).

Errors: a bad ``--jobs`` or ``--rounds`` ends with one line and exit status 2; a sweep that
fails is printed with its exit status and the benchmark goes on.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def children_cpu_s() -> float:
    """User + system CPU seconds of every finished child process so far (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_sweep(jobs: int, grid: list[str]) -> tuple[float, float, int]:
    """Run ``sweep.py <grid> --jobs <jobs>`` into a fresh dump folder; returns
    ``(wall seconds, CPU seconds, exit status)``. Its output is discarded."""
    dump = tempfile.mkdtemp(prefix='sweep-jobs-')
    try:
        cpu0, t0 = children_cpu_s(), time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / 'sweep.py'), *grid, '--dump-dir', dump,
                               '--jobs', str(jobs)], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0, children_cpu_s() - cpu0, done.returncode
    finally:
        shutil.rmtree(dump, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--jobs', default='1,2', help='comma list of --jobs values to compare')
    p.add_argument('--rounds', type=int, default=2, help='runs of each --jobs value')
    p.add_argument('--warmup', type=int, default=1, help='sweeps run first and not counted')
    p.add_argument('--dataset', default='mnist')
    p.add_argument('--methods', default='grad,deep,soft,no_prune')
    p.add_argument('-s', default='0.95')
    p.add_argument('rest', nargs='*', help='flags passed on to sweep.py (after --)')
    a = p.parse_args(argv)
    try:
        values = [int(v) for v in a.jobs.split(',')]
    except ValueError:
        print(f'sweep_jobs.py: error: --jobs: not a comma list of integers: {a.jobs!r}', file=sys.stderr)
        return 2
    if a.rounds < 1 or a.warmup < 0 or min(values) < 1:
        print('sweep_jobs.py: error: --rounds and every --jobs value must be >= 1, --warmup >= 0',
              file=sys.stderr)
        return 2
    rest = a.rest or ['--train-size', '6000', '-N', '1']
    grid = [a.dataset, '--methods', a.methods, '-s', a.s, *rest]
    n_configs = len(a.methods.split(','))
    print(f'# sweep.py {" ".join(grid)}: {n_configs} configurations; {os.cpu_count()} CPU cores')
    print(f"{'round':>5s} {'jobs':>4s} {'wall s':>8s} {'cpu s':>8s} {'configs/min':>11s} {'load before':>11s}  status")
    for _ in range(a.warmup):
        wall, cpu, status = one_sweep(values[0], grid)
        print(f"{'warm':>5s} {values[0]:4d} {wall:8.1f} {cpu:8.1f} {'-':>11s} {os.getloadavg()[0]:11.2f}  {status}",
              flush=True)
    walls: dict[int, list[float]] = {v: [] for v in values}
    for r in range(a.rounds):
        for jobs in (values if r % 2 == 0 else values[::-1]):
            load = os.getloadavg()[0]
            wall, cpu, status = one_sweep(jobs, grid)
            walls[jobs].append(wall)
            print(f'{r:5d} {jobs:4d} {wall:8.1f} {cpu:8.1f} {60 * n_configs / wall:11.2f} {load:11.2f}  {status}',
                  flush=True)
    base = statistics.median(walls[values[0]])
    for jobs in values:
        median = statistics.median(walls[jobs])
        print(f'# --jobs {jobs}: median wall {median:.1f} s, {60 * n_configs / median:.2f} configurations/min, '
              f'{base / median:.2f}x the throughput of --jobs {values[0]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
