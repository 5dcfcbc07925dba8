"""Seconds and peak memory of one steady-state epoch, per configuration, side by side.

MNIST (default MNIST flags, `-m grad -s 0.95`, on --device):
  released pipeline (DataLoader + PIL in worker processes) with the default thread split and
  with the old oversubscribed one (2 torch threads + 2 workers on 2 cores), then the device
  pipeline without and with --compile, and with --amp where the device has bfloat16.
CIFAR-10 (on CUDA, or on the CPU when --only names a CIFAR-10 configuration; `-m grad
  -s 0.95`): the device pipeline in fp32 (TF32 convolutions allowed, PyTorch's default) and
  with --amp; a timed slice of --c10-steps training steps and the full test pass, extrapolated
  to a 3,125-step epoch and labelled as such. The data are random stand-in images unless
  --c10-data names a folder that c10.py can read.

Each configuration runs in its own subprocess (a fresh interpreter: peak memory is its own):
one warm-up epoch (it carries any compile warm-up, reported apart; for CIFAR-10,
--c10-warmup-steps steps and the test pass), then a timed epoch, measured inside the process
(time.perf_counter around training and around the test pass; CUDA synchronised). Peak
memory: the process's peak resident set size (ru_maxrss) and, on CUDA,
torch.cuda.max_memory_allocated. A configuration that fails or outlasts --timeout is reported
as such, and the exit status is then 1.

Usage: python benchmarks/epoch.py [--device cpu|cuda] [--only NAME ...] [--c10-steps 300]
       [--c10-warmup-steps N] [--c10-data DIR] [--mnist-data DIR] [--extra FLAGS]
       [--timeout SECONDS]
"""
import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MNIST_CONFIGS = {
    'released, default threads': ['--data-pipeline', 'released', '--no-compile'],
    'released, 2 threads + 2 workers': ['--data-pipeline', 'released', '--no-compile',
                                        '--threads', '2', '--workers', '2'],
    'device, eager': ['--no-compile'],
    'device, --compile (default)': ['--compile'],
    'device, --compile --amp': ['--compile', '--amp'],
}
C10_CONFIGS = {
    'c10 device, fp32 --compile': ['--compile'],
    'c10 device, --compile --amp': ['--compile', '--amp'],
}


def one(dataset: str, flags: list[str], device: str, c10_steps: int, c10_data: str | None,
        c10_warmup_steps: int | None = None, mnist_data: str | None = None) -> dict:
    """Run the warm-up and the timed epoch of one configuration in this process."""
    import tempfile

    import torch
    from torch.utils.data import TensorDataset

    import engine
    from engine.loop import train_epoch
    from engine.metrics import evaluate
    if dataset == 'mnist':
        from mnist.mnist import EXPERIMENT
    else:
        from c10.c10 import EXPERIMENT
    tmp = tempfile.mkdtemp()
    data_dir = c10_data if dataset == 'c10' else mnist_data
    argv = ['-m', 'grad', '-s', '0.95', '--device', device, '--dump-dir', tmp,
            *(['--dataset-dir', data_dir] if data_dir else []), *flags]
    try:
        config = engine.resolve(EXPERIMENT, engine.build_parser(EXPERIMENT).parse_args(argv))
    except engine.UsageError as err:
        return {'skipped': str(err)}
    torch.set_num_threads(config.threads)
    datasets = None
    if dataset == 'c10' and not c10_data:      # stand-in images of CIFAR-10's shape
        g = torch.Generator().manual_seed(0)
        datasets = (TensorDataset(torch.randint(0, 256, (50_000, 3, 32, 32), generator=g, dtype=torch.uint8),
                                  torch.randint(0, 10, (50_000,), generator=g)),
                    TensorDataset(torch.randint(0, 256, (10_000, 3, 32, 32), generator=g, dtype=torch.uint8),
                                  torch.randint(0, 10, (10_000,), generator=g)))
    run = engine.Run(EXPERIMENT, config, datasets if datasets is not None else EXPERIMENT.load_datasets(config))
    cuda = run.device.type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize(run.device)

    def epoch(e, steps=None):
        batches = run.data.train_batches(e)
        if steps is not None:
            batches = (b for _, b in zip(range(steps), batches))
        sync()
        t0 = time.perf_counter()
        first = run.step
        run.step, _ = train_epoch(run.model, run.optimizers, batches, EXPERIMENT.num_classes, run.step,
                                  config.i2, lambda *a: None, forward=run.forward, amp=config.amp)
        sync()
        t1 = time.perf_counter()
        acc, _ = evaluate(run.model, run.data.test_batches(), run.device, amp=config.amp)
        sync()
        return t1 - t0, time.perf_counter() - t1, acc, run.step - first

    steps = c10_steps if dataset == 'c10' else None
    warm_train, warm_test, _, _ = epoch(0, (c10_warmup_steps or steps) if dataset == 'c10' else None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    train_s, test_s, acc, done = epoch(1, steps)
    out = {'threads': config.threads, 'workers': config.workers, 'warmup_train_s': warm_train,
           'train_s': train_s, 'test_s': test_s, 'test_acc': acc,
           'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    full = run.data.steps_per_epoch
    if done < full:         # the steps actually run: --train-size may leave fewer than --c10-steps
        out.update(timed_steps=done, train_s=train_s * full / done, extrapolated_from=done,
                   extrapolated_to=full)
    if cuda:
        out['peak_gpu_mib'] = torch.cuda.max_memory_allocated(run.device) / 2 ** 20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default=None, help='cpu or cuda (default: CUDA when available)')
    p.add_argument('--only', nargs='*', default=None, help='configurations to run: a full name selects that one alone, else every name containing it')
    p.add_argument('--c10-steps', type=int, default=300, help='CIFAR-10 training steps timed per epoch')
    p.add_argument('--c10-warmup-steps', type=int, default=None,
                   help='CIFAR-10 training steps of the warm-up epoch (default: --c10-steps)')
    p.add_argument('--c10-data', default=None, help='a CIFAR-10 folder for c10.py (default: stand-in images)')
    p.add_argument('--mnist-data', default=None, help="MNIST's --dataset-dir (default: mnist.py's)")
    p.add_argument('--extra', default='', metavar='FLAGS',
                   help="flags appended to every configuration's, one string (e.g. '-T 2 --train-size "
                        "1024'); they override the configuration's own, and the table's header names them")
    p.add_argument('--timeout', type=float, default=None, metavar='SECONDS',
                   help='stop a configuration that runs longer than this (default: no limit)')
    p.add_argument('--one', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        job = json.loads(a.one)
        print(json.dumps(one(job['dataset'], job['flags'], a.device, a.c10_steps, a.c10_data,
                             a.c10_warmup_steps, a.mnist_data)))
        return
    import torch
    device = a.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    extra = shlex.split(a.extra)
    jobs = [('mnist', name, flags + extra) for name, flags in MNIST_CONFIGS.items()]
    jobs += [('c10', name, flags + extra) for name, flags in C10_CONFIGS.items()]
    if a.only:
        names = {j[1] for j in jobs}
        jobs = [j for j in jobs if any(s == j[1] if s in names else s in j[1] for s in a.only)]
    elif not device.startswith('cuda'):         # CIFAR-10 on a CPU: only when asked by name
        jobs = [j for j in jobs if j[0] == 'mnist']
    machine = torch.cuda.get_device_name() if device.startswith('cuda') else f'{os.cpu_count()} CPU cores'
    print(f'# one steady epoch (after a warm-up epoch) on {device} ({machine}), torch {torch.__version__}')
    if extra:
        print(f'# every configuration also has: {shlex.join(extra)}')
    print(f"{'configuration':34s} {'thr':>3s} {'wrk':>3s} {'train s':>8s} {'test s':>7s} {'epoch s':>8s} "
          f"{'warm-up s':>9s} {'peak RSS MiB':>12s} {'peak GPU MiB':>12s}  test acc")
    failed = 0
    for dataset, name, flags in jobs:
        cmd = [sys.executable, __file__, '--device', device, '--c10-steps', str(a.c10_steps),
               '--one', json.dumps({'dataset': dataset, 'flags': flags})]
        for flag, value in (('--c10-data', a.c10_data), ('--mnist-data', a.mnist_data),
                            ('--c10-warmup-steps', a.c10_warmup_steps)):
            if value is not None:
                cmd += [flag, str(value)]
        try:   # on timeout the child is killed; torch.compile's workers end when their parent does
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            print(f'{name:34s} timed out after {a.timeout:g} s', flush=True)
            failed += 1
            continue
        if done.returncode != 0:
            print(f'{name:34s} failed: {done.stderr.strip().splitlines()[-1:]}', flush=True)
            failed += 1
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if 'skipped' in r:
            print(f"{name:34s} skipped: {r['skipped']}")
            continue
        note = (f" (train s extrapolated from {r['extrapolated_from']} to {r['extrapolated_to']} steps)"
                if 'extrapolated_from' in r else '')
        gpu = f"{r['peak_gpu_mib']:12.0f}" if 'peak_gpu_mib' in r else f"{'-':>12s}"
        print(f"{name:34s} {r['threads']:3d} {r['workers']:3d} {r['train_s']:8.2f} {r['test_s']:7.2f} "
              f"{r['train_s'] + r['test_s']:8.2f} {r['warmup_train_s']:9.2f} {r['peak_rss_mib']:12.0f} "
              f"{gpu}  {r['test_acc']:.4f}{note}", flush=True)
    if failed:
        sys.exit(f'epoch.py: {failed} of {len(jobs)} configurations failed or timed out')


if __name__ == '__main__':
    main()
