"""Host synchronisations in MNIST Grad R's training steps, as CUDA's sync debug mode sees them.

Builds the run as mnist.py does (the engine's parser, ``engine.resolve`` and ``engine.Run``), with
``--train-size`` = --steps x ``-b`` so that its epoch 0 is --steps training steps, and trains
that epoch (then the test pass and the checkpoint, as after any epoch) under
``torch.cuda.set_sync_debug_mode('warn')``. Every synchronising CUDA call it warns about (a copy
to the host, ``.item()``, ...) is listed by phase (training step k, end of training, test pass)
and place. The training loop waits for the device by design at its logging steps (global step
a multiple of ``-i2``, which includes step 0) and at the end of the epoch; a synchronisation at
any other step makes the exit status 1. Those that happen while torch.compile compiles are
listed apart and not counted. On the CPU the sync debug mode sees nothing: then this only
checks that the steps run.

Usage: python benchmarks/sync_check.py [--steps 20] [mnist.py flags, e.g. --device cuda -T 4]
(default flags: ``-m grad -s 0.95 -N 0 --test-size 1000`` and a temporary --dump-dir)
"""
import argparse
import collections
import contextlib
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMPILING = ('torch/_dynamo/convert_frame.py', 'torch/_inductor/compile_fx.py')
"""Files on the stack only while torch.compile compiles (not while compiled code runs)."""
PHASES = ('before training', 'steps', 'end of training', 'test pass, logs, checkpoint')
"""The phases of the epoch, in order; ``('step', k)`` stands for 'steps'."""


# ---- the engine, used here only: build the run, and name the phase its batches are in

def build_run(flags: list[str]):
    """MNIST's run from mnist.py's command-line flags, as ``engine.main`` builds it."""
    import torch

    import engine
    from mnist.mnist import EXPERIMENT
    config = engine.resolve(EXPERIMENT, engine.build_parser(EXPERIMENT).parse_args(flags))
    torch.set_num_threads(config.threads)
    return engine.Run(EXPERIMENT, config, EXPERIMENT.load_datasets(config))


def train_one_epoch(run, phase: list) -> None:
    """``run.train()`` (epoch 0 with -N 0), keeping ``phase[0]`` up to date: ``('step', k)``
    from the moment batch k is asked for, then ``'end of training'``, then ``'test pass,
    logs, checkpoint'``."""
    train_batches, test_batches = run.data.train_batches, run.data.test_batches

    def phased_train(epoch):
        batches = iter(train_batches(epoch))
        k = 0
        while True:
            phase[0] = ('step', k)
            try:
                batch = next(batches)
            except StopIteration:
                break
            yield batch
            k += 1
        phase[0] = PHASES[2]

    def phased_test():
        phase[0] = PHASES[3]
        return test_batches()

    run.data.train_batches, run.data.test_batches = phased_train, phased_test
    run.train()

# ----


def where(stack: list) -> str:
    """The innermost repository frame of ``stack`` (this file's excluded), and the innermost
    frame when it is another."""
    here = Path(__file__).resolve()
    ours = [f for f in stack if Path(f.filename).resolve().is_relative_to(REPO)
            and Path(f.filename).resolve() != here]
    text = ''
    if ours:
        f = ours[-1]
        text = f'{Path(f.filename).resolve().relative_to(REPO)}:{f.lineno} `{(f.line or "").strip()}`'
    inner = stack[-1] if stack else None
    if inner is not None and (not ours or inner is not ours[-1]):
        text += f' (in {Path(inner.filename).name}:{inner.lineno})'
    return text.strip()


@contextlib.contextmanager
def capture(phase: list, found: list):
    """Note each sync debug warning as ``(phase[0], compiling, place)`` in ``found``, instead
    of printing it; other warnings are shown as usual."""
    with warnings.catch_warnings():
        warnings.filterwarnings('always', message='.*synchroniz')
        shown = warnings.showwarning

        def note(message, category, filename, lineno, file=None, line=None):
            if 'synchroniz' not in str(message):
                return shown(message, category, filename, lineno, file, line)
            stack = [f for f in traceback.extract_stack()[:-1] if f.filename != warnings.__file__]
            compiling = any(f.filename.replace('\\', '/').endswith(COMPILING) for f in stack)
            found.append((phase[0], compiling, where(stack)))

        warnings.showwarning = note
        yield


def summary(found: list, steps: int, i2: int) -> tuple[list[str], int]:
    """Lines listing ``found`` by phase and place, and the number of synchronisations at
    steps that should not wait for the device (not a logging step, not while compiling)."""
    def order(item):            # before training, the steps in order, end of training, test pass
        ph = item[0][0]
        return (1, ph[1]) if isinstance(ph, tuple) else (PHASES.index(ph), 0)

    lines, unexpected = [], 0
    for (ph, compiling, place), n in sorted(collections.Counter(found).items(), key=order):
        if isinstance(ph, tuple):
            expected = ph[1] % i2 == 0
            label = f'step {ph[1]}' + (' (logging step)' if expected else '')
        else:
            expected, label = True, ph
        if compiling:
            label += ', while compiling (not counted)'
        elif not expected:
            unexpected += n
            label += ' UNEXPECTED'
        lines.append(f'  {n:4d} x {label}: {place}')
    lines.append(f'sync check: {len(found)} host synchronisations in all, {unexpected} at steps '
                 f'that should not wait for the device (of {steps})')
    return lines, unexpected


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                usage='%(prog)s [--steps N] [mnist.py flags]')
    p.add_argument('--steps', type=int, default=20, help='training steps (default 20)')
    mine, flags = p.parse_known_args()
    if mine.steps < 1:
        p.error('--steps must be >= 1')
    import torch

    import engine
    base = ['-m', 'grad', '-s', '0.95', '-N', '0', '--dump-dir', tempfile.mkdtemp(prefix='sync_check-')]
    if '--train-size' not in flags:
        b = next((int(flags[i + 1]) for i, f in enumerate(flags[:-1]) if f == '-b'), 128)
        base += ['--train-size', str(mine.steps * b)]
    if '--test-size' not in flags:
        base += ['--test-size', '1000']
    t0 = time.perf_counter()
    try:
        run = build_run(base + flags)
    except engine.UsageError as err:
        print(f'sync_check.py: error: {err}', file=sys.stderr)
        return 2
    cuda = run.device.type == 'cuda'
    phase, found = [PHASES[0]], []
    with capture(phase, found):
        if cuda:
            torch.cuda.set_sync_debug_mode('warn')
        try:
            train_one_epoch(run, phase)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    steps, i2 = run.step, run.config.i2
    logging = [k for k in range(steps) if k % i2 == 0]
    print(f'sync check: {steps} training steps of MNIST Grad R on {run.device} '
          f'(flags: {" ".join(flags) or "defaults"}), {time.perf_counter() - t0:.1f} s; '
          f'logging steps (-i2 {i2}): {", ".join(map(str, logging))}')
    if not cuda:
        print(f'sync check: sync debug mode is for CUDA only; on {run.device.type} the steps ran '
              f'and nothing can be seen')
        return 0
    lines, unexpected = summary(found, steps, i2)
    print('\n'.join(lines))
    return 1 if unexpected else 0


if __name__ == '__main__':
    sys.exit(main())
