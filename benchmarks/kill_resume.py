"""Fault injection: kill a short MNIST training run with SIGKILL at random moments (inside
training steps and inside checkpoint saves), resume it by running the same command again,
and check that it ends exactly as a run that was never interrupted.

    python benchmarks/kill_resume.py --kills 20 --seed 0

A reference run trains uninterrupted. Then each interrupted run is started, killed
(``--kills-per-run`` times, default once, each kill followed by a start of the same
command), and finally run to its end. A run is *equal* when its final model and optimizer
state and its ``metrics.jsonl`` records (timing fields aside) are those of the reference.
Saves pause ``--save-pause`` seconds between writing the temporary file and renaming it
(``GRADREWIRE_TEST_SAVE_PAUSE``). Of every four kills, two come at a random moment of the
training (uniform in the first 60% of the reference run's training time, so inside steps,
test passes and saves alike), one waits for a save to start and lands inside it, and one
comes at a random moment after the start (0-3 s: start-up or the first steps). Prints the
kills, where each landed (startup, training, save), and the equal / not equal counts; exits
1 unless all are equal. With the defaults (20 kills, 20 runs) it takes about 10 minutes on
2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / 'mnist' / 'mnist.py'
FLAGS = ['-m', 'grad', '-s', '0.95', '--train-size', '1024', '--test-size', '256', '-N', '3',
         '-b', '64', '-i1', '1', '--workers', '0', '--device', 'cpu', '--no-compile']
NAME = 'lr-1e-3-b-64-T-8-penalty-1e-3-s-0.95-grad-train-1024-test-256'


def start(dump: Path, save_pause: float, flags=FLAGS, step_pause: int | None = None) -> subprocess.Popen:
    """Start the training command on ``dump``; its stdout/stderr go to files in ``dump``.
    ``step_pause``: the run stops for a minute before that training step and says so on
    stderr (``GRADREWIRE_TEST_STEP_PAUSE``)."""
    dump.mkdir(parents=True, exist_ok=True)
    # One thread: a BLAS that picks its thread count by the machine's load sums in another
    # order, and runs must be bit-identical to be compared.
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'GRADREWIRE_TEST_SAVE_PAUSE': str(save_pause),
           'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    if step_pause is not None:
        env['GRADREWIRE_TEST_STEP_PAUSE'] = f'{step_pause}:60'
    out = open(dump / 'stdout.txt', 'w')
    err = open(dump / 'stderr.txt', 'a')
    proc = subprocess.Popen([sys.executable, str(MNIST), *flags, '--dump-dir', str(dump)],
                            stdout=out, stderr=err, env=env, cwd=REPO)
    out.close()
    err.close()
    return proc


def in_save(dump: Path, since: float = 0.0) -> bool:
    """A checkpoint's temporary file written at or after ``since`` (time.time()) exists: a
    save is in progress (an older one was left by an earlier kill)."""
    for tmp in (dump / 'models').glob('*/*.tmp'):
        try:
            if tmp.stat().st_mtime >= since:
                return True
        except FileNotFoundError:
            pass
    return False


def landing(dump: Path, since: float = 0.0) -> str:
    """Where the run started at ``since`` stands now: 'save', 'training' (or testing) or
    'startup' (before its first line)."""
    if in_save(dump, since):
        return 'save'
    text = (dump / 'stdout.txt').read_text() if (dump / 'stdout.txt').exists() else ''
    return 'training' if 'run ' in text else 'startup'


def kill_once(dump: Path, moment: tuple, save_pause: float, flags=FLAGS) -> str | None:
    """Start the run and SIGKILL it at ``moment``: ``('start', seconds)`` after the start,
    ``('time', seconds)`` after training began (the run's first line), ``('step', k)``
    before training step k (global count; the run pauses there and says so), or ``('save',
    fraction)`` of the save pause after a save began. Returns where the kill
    landed, or None when the run finished first (rc 0 is required then).

    Raises:
        RuntimeError: the run ended with another status than 0.
    """
    since = time.time()
    kind, value = moment
    stderr_before = len((dump / 'stderr.txt').read_text()) if (dump / 'stderr.txt').exists() else 0
    proc = start(dump, save_pause, flags, step_pause=value if kind == 'step' else None)
    t0 = time.monotonic()
    while proc.poll() is None:
        if kind == 'start' and time.monotonic() - t0 >= value:
            break
        if kind == 'step' and f'paused at step {value}' in (dump / 'stderr.txt').read_text()[stderr_before:]:
            break
        if kind == 'time' and landing(dump, since) != 'startup':
            kind, t0 = 'train', time.monotonic()
        if kind == 'train' and time.monotonic() - t0 >= value:
            break
        if kind == 'save' and in_save(dump, since):
            time.sleep(value * save_pause)
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        if proc.returncode != 0:
            raise RuntimeError(f'run ended with status {proc.returncode}: {(dump / "stderr.txt").read_text()[-2000:]}')
        return None
    where = landing(dump, since)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return where


def run_to_end(dump: Path, save_pause: float, flags=FLAGS) -> float:
    """Run the command until it finishes; returns the seconds it trained (from its first
    line to its end).

    Raises:
        RuntimeError: it ended with another status than 0.
    """
    proc = start(dump, save_pause, flags)
    t_train = None
    while proc.poll() is None:
        if t_train is None and landing(dump) != 'startup':
            t_train = time.monotonic()
        time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f'run ended with status {proc.returncode}: {(dump / "stderr.txt").read_text()[-2000:]}')
    return time.monotonic() - (t_train or time.monotonic())


def _records(dump: Path) -> list[dict]:
    lines = (dump / 'logs' / NAME / 'metrics.jsonl').read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith('_seconds')} for line in lines]


def _equal_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_tensors(x, y) for x, y in zip(a, b))
    return a == b


def same_result(reference: Path, dump: Path) -> bool:
    """Final model and optimizer states and metrics records (timing aside) are equal."""
    load = lambda d: torch.load(d / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    a, b = load(reference), load(dump)
    return (_equal_tensors(a['model'], b['model']) and _equal_tensors(a['optimizers'], b['optimizers'])
            and (a['epoch'], a['step']) == (b['epoch'], b['step']) and _records(reference) == _records(dump))


def interrupted_run(dump: Path, moments: list, save_pause: float, flags=FLAGS) -> list:
    """Kill the run at each of ``moments`` in turn, then run it to its end; returns where
    each kill landed (None: the run had finished before it)."""
    landed = [kill_once(dump, moment, save_pause, flags) for moment in moments]
    run_to_end(dump, save_pause, flags)
    return landed


def main(argv=None) -> int:
    """Run the benchmark; exit status 0 when every interrupted run equals the reference."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--kills', type=int, default=20, help='SIGKILLs in all')
    p.add_argument('--kills-per-run', type=int, default=1, help='kills before a run is let finish')
    p.add_argument('--seed', type=int, default=0, help='seed of the kill moments')
    p.add_argument('--save-pause', type=float, default=0.3, help='seconds each save pauses before its rename')
    p.add_argument('--keep', type=Path, default=None, help='keep the runs in this folder')
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix='kill_resume-'))
    t_ref = run_to_end(root / 'reference', args.save_pause)
    print(f'reference run: {t_ref:.1f} s of training', flush=True)
    runs = math.ceil(args.kills / args.kills_per_run)
    landings, equal = [], 0
    for r in range(runs):
        n = min(args.kills_per_run, args.kills - r * args.kills_per_run)
        kinds = [('time', 'save', 'time', 'start')[(r * args.kills_per_run + i) % 4] for i in range(n)]
        moments = [(k, {'save': rng.random(), 'start': rng.uniform(0, 3),
                        'time': rng.uniform(0, 0.6) * t_ref}[k]) for k in kinds]
        dump = root / f'run-{r}'
        landed = interrupted_run(dump, moments, args.save_pause)
        same = same_result(root / 'reference', dump)
        equal += same
        landings += landed
        where = ', '.join(f'{k} {v:.2f}: {w or "finished first"}' for (k, v), w in zip(moments, landed))
        print(f'run {r}: {"equal" if same else "NOT EQUAL"} ({where})', flush=True)
    counts = {w: sum(1 for x in landings if x == w) for w in ('startup', 'training', 'save', None)}
    print(f'kills: {len(landings) - counts[None]} of {len(landings)} planned '
          f'(startup {counts["startup"]}, training {counts["training"]}, save {counts["save"]}, '
          f'run finished first {counts[None]})')
    print(f'resumed runs equal to the uninterrupted one: {equal} of {runs}; not equal: {runs - equal}')
    print(f'runs kept in {root}' if args.keep else f'(runs in {root})')
    return 0 if equal == runs else 1


if __name__ == '__main__':
    sys.exit(main())
