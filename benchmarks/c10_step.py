"""Time and memory of one CIFAR-10 training step: multi-step fast path vs step loop.

One training step = zero_grad, forward of CIFAR10SNN (T time steps), MSE loss
between the output firing rate and the one-hot label, backward, Adam step
(lr 1e-4), reset_net. Runs on the CPU, or on --device.

Each variant runs in its own subprocess (fresh interpreter, so neither sees the
other's allocations). Both build the model with the same seed, so they hold
the same weights, train on the same batch with the same dropout masks; each
reports a weight checksum, its first-step loss and the norm of the gradient of
every parameter at the first step, and the parent checks that the two variants
agree (gradient norms within a relative 1e-4). Weights after several Adam steps
are not compared: Adam divides by sqrt of the second moment and so turns
rounding-level gradient differences of near-zero gradients into lr-sized
steps.

Time: one warm-up step, then the median wall-clock time of --repeats steps.

The machine may be shared: the script also reports the process CPU time of
each step (time.process_time, all threads) and the 1-minute load average, so
that contention from other processes can be recognised.

Memory: peak resident set size of the process during the warm-up and timed
steps (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux) minus the
current RSS right after building the model, the optimizer and the input batch
(read from /proc/self/status). This counts activations kept for backward,
gradients, and Adam's two moment buffers (created on the first step, about
2 x 147 MB), plus any memory the allocator keeps; it does not include the
model weights themselves.

Usage: python benchmarks/c10_step.py [--batch 16] [--T 8] [--repeats 3] [--threads N] [--rounds R]
       [--device cuda]   (on a GPU: synchronised timings and peak GPU memory allocated)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def current_rss_mib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError('VmRSS not found in /proc/self/status')


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_variant(variant: str, batch: int, T: int, repeats: int, seed: int, threads: int,
                device: str = 'cpu') -> dict:
    """Run in a child process; returns the measurements as a dict."""
    sys.path.insert(0, REPO_ROOT)
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    from spikingjelly.activation_based import functional
    from c10.model import CIFAR10SNN
    from engine.loop import rate_loss

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = CIFAR10SNN(T=T, multi_step=(variant == 'fast')).to(dev)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    images, labels = images.to(dev), labels.to(dev)

    def sync():
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
    checksum = float(sum(p.double().sum() for p in model.parameters()))

    baseline_rss = current_rss_mib()
    peak_before = peak_rss_mib()
    if dev.type == 'cuda':
        gpu_baseline = torch.cuda.memory_allocated(dev) / 2 ** 20
        torch.cuda.reset_peak_memory_stats(dev)

    grad_norms = {}

    def step(record=False):
        optimizer.zero_grad(set_to_none=True)
        rate = model(images)
        loss = rate_loss(rate, labels, 10)
        loss.backward()
        if record:
            grad_norms.update({n: p.grad.norm().item() for n, p in model.named_parameters()})
        optimizer.step()
        functional.reset_net(model)
        return loss.item()

    torch.manual_seed(seed + 2)  # same dropout mask in both variants
    first_loss = step(record=True)  # warm-up; its gradients are compared across variants
    times, cpu_times = [], []
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = peak_rss_mib()
    gpu = {}
    if dev.type == 'cuda':
        gpu = {'gpu_baseline_mib': gpu_baseline,
               'gpu_peak_increase_mib': torch.cuda.max_memory_allocated(dev) / 2 ** 20 - gpu_baseline}
    return {**gpu,
        'device': device,
        'variant': variant,
        'batch': batch,
        'T': T,
        'threads': torch.get_num_threads(),
        'weight_checksum': checksum,
        'first_loss': first_loss,
        'step_times_s': times,
        'median_step_s': statistics.median(times),
        'cpu_times_s': cpu_times,
        'median_cpu_s': statistics.median(cpu_times),
        'loadavg_1min_end': os.getloadavg()[0],
        'baseline_rss_mib': baseline_rss,
        'peak_rss_before_steps_mib': peak_before,
        'peak_rss_mib': peak,
        'peak_increase_mib': peak - baseline_rss,
        'first_grad_norms': grad_norms,
    }


def _rel_diffs(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return [abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) if (a[k] or b[k]) else 0.0 for k in a]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0].rstrip('.') + '. The fast path runs all T steps of each layer in '
        "one call (SpikingJelly's multi-step mode); the loop simulates one time step after the "
        'other. On 2 CPU cores the default settings take about a minute.')
    parser.add_argument('--batch', type=int, default=16, help='batch size (default 16, as released)')
    parser.add_argument('--T', type=int, default=8, help='time steps (default 8)')
    parser.add_argument('--repeats', type=int, default=3, help='timed steps after one warm-up step')
    parser.add_argument('--seed', type=int, default=2020, help='seed of weights, batch and dropout')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch intra-op threads (0: torch default). With 1 thread the CPU '
                             'time is a measure of work that is robust to other load')
    parser.add_argument('--rounds', type=int, default=1,
                        help='run both variants this many times, alternating their order')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--variant', choices=['fast', 'ref'], default=None,
                        help=argparse.SUPPRESS)   # internal: one variant in this process, JSON out
    args = parser.parse_args()

    if args.variant is not None:
        print(json.dumps(run_variant(args.variant, args.batch, args.T, args.repeats, args.seed,
                                      args.threads, args.device)))
        return

    rounds = []
    for r in range(args.rounds):
        load_before = os.getloadavg()[0]
        results = {'load_before': load_before}
        # alternate the order so that a change of machine load hits both variants
        for variant in (('fast', 'ref') if r % 2 == 0 else ('ref', 'fast')):
            cmd = [sys.executable, os.path.abspath(__file__), '--variant', variant,
                   '--batch', str(args.batch), '--T', str(args.T),
                   '--repeats', str(args.repeats), '--seed', str(args.seed),
                   '--threads', str(args.threads), '--device', args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.append(results)

    first = rounds[0]['fast']
    print(f'CIFAR10SNN training step on {args.device}: batch {args.batch}, T {args.T}, '
          f'{first["threads"]} threads, Adam; per variant and round: 1 warm-up step, '
          f'median of {args.repeats} timed steps')
    print(f'{"round":<6}{"path":<20}{"median wall s":>14}{"median CPU s":>13}'
          f'{"wall s of each step":>28}{"peak RSS +MiB":>15}{"load 1min":>11}')
    for k, res in enumerate(rounds):
        for name, key in (('multi-step (fast)', 'fast'), ('step-by-step loop', 'ref')):
            r = res[key]
            steps = ' '.join(f'{t:.2f}' for t in r['step_times_s'])
            print(f'{k:<6}{name:<20}{r["median_step_s"]:>14.3f}{r["median_cpu_s"]:>13.3f}'
                  f'{steps:>28}{r["peak_increase_mib"]:>15.0f}{r["loadavg_1min_end"]:>11.2f}')
    best = {key: min(res[key]['median_step_s'] for res in rounds) for key in ('fast', 'ref')}
    best_cpu = {key: min(res[key]['median_cpu_s'] for res in rounds) for key in ('fast', 'ref')}
    peak = {key: max(res[key]['peak_increase_mib'] for res in rounds) for key in ('fast', 'ref')}
    print(f'best median wall s/step: fast {best["fast"]:.3f}, loop {best["ref"]:.3f} '
          f'-> loop/fast {best["ref"] / best["fast"]:.2f}x')
    print(f'best median CPU s/step:  fast {best_cpu["fast"]:.3f}, loop {best_cpu["ref"]:.3f} '
          f'-> loop/fast {best_cpu["ref"] / best_cpu["fast"]:.2f}x')
    print(f'peak RSS increase over the model+optimizer baseline '
          f'(~{first["baseline_rss_mib"]:.0f} MiB): fast {peak["fast"]:.0f} MiB, '
          f'loop {peak["ref"]:.0f} MiB')
    if 'gpu_peak_increase_mib' in first:
        gpu_peak = {key: max(res[key]['gpu_peak_increase_mib'] for res in rounds) for key in ('fast', 'ref')}
        print(f'peak GPU memory allocated over the model+optimizer baseline '
              f'(~{first["gpu_baseline_mib"]:.0f} MiB): fast {gpu_peak["fast"]:.0f} MiB, '
              f'loop {gpu_peak["ref"]:.0f} MiB')

    for res in rounds:
        for key in ('fast', 'ref'):
            r = res[key]
            if r['peak_rss_mib'] <= r['peak_rss_before_steps_mib']:
                print(f'warning: {key}: the RSS peak was reached before the training steps; '
                      f'the memory figure underestimates the training step')

    ok = True
    for res in rounds:
        fast, ref = res['fast'], res['ref']
        ok &= fast['weight_checksum'] == ref['weight_checksum']
        ok &= abs(fast['first_loss'] - ref['first_loss']) <= 1e-5
        ok &= max(_rel_diffs(fast['first_grad_norms'], ref['first_grad_norms'])) <= 1e-4
    fast, ref = rounds[0]['fast'], rounds[0]['ref']
    print(f'same initial weights: {fast["weight_checksum"] == ref["weight_checksum"]}; '
          f'first-step loss fast {fast["first_loss"]:.6f}, loop {ref["first_loss"]:.6f}; '
          f'max relative difference of the per-parameter gradient norms (first step): '
          f'{max(_rel_diffs(fast["first_grad_norms"], ref["first_grad_norms"])):.1e}')
    if not ok:
        sys.exit('the two variants disagree')

if __name__ == '__main__':
    main()
