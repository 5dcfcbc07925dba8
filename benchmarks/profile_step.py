"""Where one MNIST training step of the default path spends its time, on the CPU.

Builds the run as ``mnist.py -m grad -s 0.95 --device cpu --threads K`` does (real MNIST,
device data path, torch.compile unless ``--no-compile``), trains ``--warmup`` steps (the
compile warm-up), then:

1. times ``--steps`` steps of ``engine.loop.train_epoch`` as the run calls it (NaN watch and
   progress bar included): milliseconds and minor page faults (memory the OS hands the
   process afresh, e.g. for large buffers the C allocator took from it and gave back) per
   step; then, over the next ``--steps`` steps, each matrix product's own time inside the
   step (median and mean milliseconds per shape, and their share of those steps' time),
   timed around the call itself: the products that
   the compiled graphs call (``extern_kernels.mm``) or, with ``--no-compile``, every
   ``aten.mm`` (a ``TorchDispatchMode``). torch.profiler's per-op figures (2) can put
   other work of the step on a product;
2. profiles the next ``--steps`` steps with ``torch.profiler`` (CPU) and prints the ops with
   the most self CPU time, per step, then the matrix products (``aten::mm``) by shape;
3. profiles the next ``--steps`` steps with ``cProfile`` and prints, per step, the
   cumulative time of the Python pieces of the step loop (the batches, forward, backward,
   the optimizers, ``reset_net``, the NaN watch, the progress bar, the interrupt poll) and
   the functions with the most time of their own;
4. times, apart and in turn, the pieces the step loop calls around the matrix products:
   making one augmented, normalised batch (the device data path), the augmentation alone
   from float32 draws (as the device data path runs it) and from float64 draws, drawing an
   epoch's float64 table (``epoch_draws``, once an epoch), ``functional.reset_net``, the NaN
   watch's ``after_step``, and the optimizers' ``step`` (on gradients of zeros).

The profilers' own overhead inflates 2 and 3; the figures of 1 and 4 are without them.
Nothing here changes what a run computes.

``--time-only`` stops after 1 (to compare, e.g., environments side by side).

Usage: python benchmarks/profile_step.py [--threads 1] [--steps 60] [--warmup 40]
       [--no-compile] [--dataset-dir data] [--top 25] [--time-only]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_call_ms(fn, n: int) -> float:
    """Median over 5 rounds of the milliseconds per call of ``fn()`` called ``n`` times."""
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e3)
    return sorted(rounds)[2]


def build_run(threads: int, dataset_dir: str, compile: bool):
    """The ``engine.Run`` of ``mnist.py -m grad -s 0.95 --device cpu --threads THREADS
    --dataset-dir DATASET_DIR --[no-]compile`` (real MNIST, device data path), its dump
    folder a fresh temporary one, torch set to ``threads`` threads."""
    import torch

    import engine
    from mnist.mnist import EXPERIMENT
    argv = ['-m', 'grad', '-s', '0.95', '--device', 'cpu', '--threads', str(threads),
            '--dump-dir', tempfile.mkdtemp(), '--dataset-dir', dataset_dir,
            '--compile' if compile else '--no-compile']
    config = engine.resolve(EXPERIMENT, engine.build_parser(EXPERIMENT).parse_args(argv))
    torch.set_num_threads(config.threads)
    return engine.Run(EXPERIMENT, config, EXPERIMENT.load_datasets(config))


def mm_times(run_steps, compiled: bool) -> dict:
    """``{(shape of A, shape of B): [ms per call]}`` of every matrix product while
    ``run_steps()`` runs: the compiled graphs' ``extern_kernels.mm`` calls when ``compiled``,
    else every ``aten.mm`` dispatched (eager autograd)."""
    import torch
    from torch._inductor.select_algorithm import extern_kernels
    from torch.utils._python_dispatch import TorchDispatchMode

    times: dict = {}

    def note(a, b, seconds):
        times.setdefault((tuple(a.shape), tuple(b.shape)), []).append(seconds * 1e3)

    if compiled:
        original = extern_kernels.mm

        def timed(a, b, out=None):
            t0 = time.perf_counter()
            result = original(a, b, out=out)
            note(a, b, time.perf_counter() - t0)
            return result
        extern_kernels.mm = timed
        try:
            run_steps()
        finally:
            extern_kernels.mm = original
        return times

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.perf_counter()
            result = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.mm.default:
                note(args[0], args[1], time.perf_counter() - t0)
            return result
    with Timer():
        run_steps()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--steps', type=int, default=60)
    ap.add_argument('--warmup', type=int, default=40)
    ap.add_argument('--compile', action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument('--dataset-dir', default=str(REPO / 'data'))
    ap.add_argument('--top', type=int, default=25)
    ap.add_argument('--time-only', action='store_true', help='stop after the plain timing (1)')
    a = ap.parse_args()

    import torch
    from spikingjelly.activation_based import functional
    from torch.profiler import ProfilerActivity, profile

    from engine import safety
    from engine.augment import epoch_draws, normalise
    from engine.loop import train_epoch
    from mnist.mnist import EXPERIMENT

    run = build_run(a.threads, a.dataset_dir, a.compile)
    config = run.config
    batches = (batch for epoch in itertools.count() for batch in run.data.train_batches(epoch))
    watch = safety.NonFiniteWatch(list(run.model.parameters()), 0, run.device)

    def steps(n):
        run.step, _ = train_epoch(run.model, run.optimizers, (next(batches) for _ in range(n)),
                                  EXPERIMENT.num_classes, run.step, config.i2, lambda *x: None,
                                  forward=run.forward, amp=config.amp, watch=watch)

    print(f'# MNIST -m grad -s 0.95, {config.threads} thread(s), compile {config.compile}, '
          f'torch {torch.__version__}')
    steps(a.warmup)
    faults, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    steps(a.steps)
    seconds, faults = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(f'# 1. train_epoch: {seconds / a.steps * 1e3:.2f} ms/step, {faults / a.steps:.0f} minor page faults/step '
          f'over {a.steps} steps')
    if a.time_only:
        return
    print(f'# 1b. matrix products inside {a.steps} steps, by shape (A, B): ms per call (median, mean)')
    t0 = time.perf_counter()
    times = mm_times(lambda: steps(a.steps), a.compile)
    window = (time.perf_counter() - t0) / a.steps * 1e3
    for (shape_a, shape_b), ms in times.items():
        print(f'mm {str(shape_a):12s} x {str(shape_b):12s} {statistics.median(ms):8.3f} {statistics.mean(ms):8.3f} ms'
              f'  calls/step {len(ms) / a.steps:4.1f}')
    if not times:
        print('(no matrix product seen: these steps called neither extern_kernels.mm nor aten.mm)')
    total = sum(sum(ms) for ms in times.values()) / a.steps
    print(f'all products: {total:.3f} ms/step of the {window:.3f} ms/step these steps took ({100 * total / window:.0f}%)')

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        steps(a.steps)
    print(f'# 2. torch.profiler, {a.steps} steps: self CPU ms per step (top {a.top})')
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    for e in events[:a.top]:
        print(f'{e.key[:60]:60s} {e.self_cpu_time_total / 1e3 / a.steps:8.3f} ms '
              f'{100 * e.self_cpu_time_total / total:5.1f}%  calls/step {e.count / a.steps:6.1f}')
    print(f"{'(all ops)':60s} {total / 1e3 / a.steps:8.3f} ms")
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == 'aten::mm':
            print(f'aten::mm {str(e.input_shapes):50s} {e.self_cpu_time_total / 1e3 / a.steps:8.3f} ms  '
                  f'calls/step {e.count / a.steps:4.1f}')

    profiler = cProfile.Profile()
    profiler.enable()
    steps(a.steps)
    profiler.disable()
    stats = pstats.Stats(profiler)
    pieces = {('loop.py', 'train_epoch'): 'the whole step loop',
              ('data.py', 'train_batches'): 'making the batches (augment, normalise)',
              ('eval_frame.py', 'compile_wrapper'): 'compiled forward (with its Python)',
              ('_tensor.py', 'backward'): 'backward',
              ('optimizer.py', 'wrapper'): 'optimizer steps',
              ('functional.py', 'reset_net'): 'reset_net',
              ('safety.py', 'after_step'): 'NaN watch after_step',
              ('safety.py', 'poll_interrupted'): 'interrupt poll',
              ('std.py', '__iter__'): 'tqdm iteration (with the batches it draws)',
              ('functional.py', 'mse_loss'): 'mse_loss',
              ('autocast_mode.py', '__enter__'): 'autocast enter (disabled)'}
    print(f'# 3. cProfile, {a.steps} steps: cumulative ms per step')
    seen = set()
    for (path, _, func), (_, calls, own, cumulative, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3]):
        label = pieces.get((Path(path).name, func))
        if label is not None and label not in seen:
            seen.add(label)
            print(f'{label:60s} {cumulative / a.steps * 1e3:8.3f} ms  calls/step {calls / a.steps:5.1f}')
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats('tottime').print_stats(a.top)
    print(f'# 3b. cProfile, the {a.top} functions with the most time of their own (seconds over {a.steps} steps)')
    print('\n'.join(line for line in out.getvalue().splitlines()
                    if line.strip() and not line.lstrip().startswith(('Ordered', 'List'))))

    print('# 4. the pieces apart, ms per call (median of 5 rounds)')
    x = run.data.train_x[:config.b]
    u = epoch_draws(config.seed, 0, config.b, 4)
    aug = EXPERIMENT.augment.apply
    print(f'make one batch (augment + normalise)    {per_call_ms(lambda: next(batches), 40):.3f}')
    print(f'augment, float32 draws (as it runs)     {per_call_ms(lambda: aug(x, u.float()), 100):.3f}')
    print(f'augment, float64 draws (not used)       {per_call_ms(lambda: aug(x, u), 100):.3f}')
    print(f'epoch_draws, 60000 x 4 float64 (once an epoch) '
          f'{per_call_ms(lambda: epoch_draws(config.seed, 0, 60000, 4).float(), 5):.3f}')
    print(f'normalise                               {per_call_ms(lambda: normalise(x, (0.1307,), (0.3081,)), 200):.3f}')
    print(f'functional.reset_net                    {per_call_ms(lambda: functional.reset_net(run.model), 1000):.3f}')
    loss = torch.tensor(0.1)
    print(f'NaN watch after_step                    {per_call_ms(lambda: watch.after_step(loss), 1000):.3f}')
    for opt in run.optimizers.values():
        for group in opt.param_groups:
            for p in group['params']:
                p.grad = torch.zeros_like(p)

    def opt_step():
        for o in run.optimizers.values():
            o.step()
    print(f'optimizer steps (grads of zeros)        {per_call_ms(opt_step, 20):.3f}')


if __name__ == '__main__':
    main()
