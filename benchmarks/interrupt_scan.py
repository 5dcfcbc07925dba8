"""Ctrl-C at many moments: send SIGINT (or SIGTERM) to the process group of a short MNIST run
with data-loader workers, as a terminal's Ctrl-C does, at evenly spaced moments after its
first epoch line, and check that each run ends with its exit status (130 or 143) and exactly
one line on stderr (the interrupt line, which names the checkpoint and the resuming command).

    python benchmarks/interrupt_scan.py --moments 40 --step 0.03 --signal SIGINT

The moments cover start-up of the data-loader workers, training steps, evaluation and
checkpoint saves of the next epochs. Prints one line per moment and the count of clean runs;
exits 1 unless all are clean. Uses about 3 minutes on 2 CPU cores for 40 moments.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / 'mnist' / 'mnist.py'
FLAGS = ['-m', 'grad', '-s', '0.95', '--train-size', '512', '--test-size', '256', '-b', '64', '-i1', '1',
         '--device', 'cpu', '--no-compile', '--data-pipeline', 'released', '-N', '40']


def interrupt_at(delay: float, signum: int, workers: int) -> tuple[int, list[str]]:
    """Start a run, wait for its epoch-0 line and ``delay`` seconds, signal its process
    group; returns (exit status, stderr lines)."""
    with tempfile.TemporaryDirectory() as dump:
        proc = subprocess.Popen([sys.executable, str(MNIST), *FLAGS, '--workers', str(workers), '--dump-dir', dump],
                                cwd=REPO, env={**os.environ, 'PYTHONUNBUFFERED': '1'}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        while not proc.stdout.readline().startswith('epoch 0:'):
            pass
        time.sleep(delay)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err.strip().splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--moments', type=int, default=40, help='number of runs (default 40)')
    parser.add_argument('--step', type=float, default=0.03, help='seconds between moments (default 0.03)')
    parser.add_argument('--signal', choices=['SIGINT', 'SIGTERM'], default='SIGINT')
    parser.add_argument('--workers', type=int, default=2, help='data-loader workers (default 2)')
    args = parser.parse_args()
    signum = getattr(signal, args.signal)
    clean = 0
    for k in range(args.moments):
        status, lines = interrupt_at(k * args.step, signum, args.workers)
        ok = status == 128 + signum and len(lines) == 1 and 'interrupted by' in lines[0]
        clean += ok
        print(f'{k * args.step:5.2f} s: exit {status}, {len(lines)} stderr line(s){"" if ok else " <- not clean"}',
              flush=True)
        if not ok:
            print('\n'.join('    ' + line for line in lines))
    print(f'{clean}/{args.moments} runs ended cleanly ({args.signal}, {args.workers} workers)')
    return 0 if clean == args.moments else 1


if __name__ == '__main__':
    sys.exit(main())
