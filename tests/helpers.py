"""Shared helpers of the end-to-end and CLI tests."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = Path(os.environ.get('CIFAR10_JPEG') or REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.tar.gz')
"""The team's JPEG copy of CIFAR-10 (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``),
beside the repository unless the environment variable ``CIFAR10_JPEG`` names it."""


def need_cifar10_jpeg() -> Path:
    """The JPEG copy of CIFAR-10; the calling test is skipped when it is absent (a user's
    clone), and fails instead under CI (``CI`` set), where it must be there.
    """
    if CIFAR10_JPEG.is_file():
        return CIFAR10_JPEG
    reason = f'needs the JPEG copy of CIFAR-10 at {CIFAR10_JPEG} (set CIFAR10_JPEG to its path)'
    if os.environ.get('CI'):
        pytest.fail(f'{reason}; CI has it, so its absence is a failure', pytrace=False)
    pytest.skip(reason)


MNIST_LOCK = Path(tempfile.gettempdir()) / f'gradrewire-mnist-{hashlib.md5(str(REPO).encode()).hexdigest()[:8]}.lock'
"""The lock that one process at a time holds while it checks (or fetches) the real MNIST of
this checkout's data/ folder: pytest-xdist workers (or two test sessions) would otherwise
both fetch it, or take the other's half-written file for a damaged one and set it aside."""


_MNIST_FAILURE = []
"""The error of this process's first failed fetch: later calls raise it again at once
instead of trying every mirror again (offline, once per test)."""


def ensure_real_mnist():
    """``mnist.ensure_mnist(REPO / 'data')`` under :data:`MNIST_LOCK`; raises as that does
    (after a failure, the same error again without a new attempt)."""
    from filelock import FileLock

    from mnist import mnist
    if _MNIST_FAILURE:
        raise _MNIST_FAILURE[0]
    with FileLock(MNIST_LOCK):
        try:
            mnist.ensure_mnist(REPO / 'data')
        except Exception as err:
            _MNIST_FAILURE.append(err)
            raise


def run_script(script, *args, cwd=REPO, timeout=600):
    """Run ``python <script> <args>`` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def mnist_main(*argv, datasets=None) -> int:
    """``engine.main`` of mnist.py in this process, as the script runs it but without the
    seconds of a new Python importing torch; ``argv`` items may be paths or numbers.
    Returns the exit status (argparse's own errors raise SystemExit)."""
    import engine
    from mnist import mnist
    return engine.main(mnist.EXPERIMENT, [str(a) for a in argv], datasets=datasets)


def config_for(exp, *argv):
    """The :class:`engine.config.RunConfig` of ``argv`` for experiment ``exp``, checked as
    ``engine.main`` checks it (one process)."""
    import engine
    return engine.resolve(exp, engine.build_parser(exp).parse_args([str(a) for a in argv]))


def stand_in(n, seed, shape=(3, 32, 32)):
    """``n`` seeded random images of ``shape`` (float32, already network inputs) with labels
    0..9: a data set for runs whose numbers do not matter (CIFAR-10's shape by default,
    ``(1, 28, 28)`` for MNIST's)."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


def strip_times(records):
    """Metrics records without their ``*_seconds`` timings, which differ between runs."""
    return [{k: v for k, v in r.items() if not k.endswith('_seconds')} for r in records]


def read_metrics(log_dir):
    """The list of per-epoch records of ``<log_dir>/metrics.jsonl``."""
    return [json.loads(line) for line in (Path(log_dir) / 'metrics.jsonl').read_text().splitlines()]


def tensorboard_tags(log_dir):
    """``{'scalars': [...], 'histograms': [...]}`` written to the TensorBoard log in log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={'scalars': 0, 'histograms': 0})
    acc.Reload()
    tags = acc.Tags()
    return acc, {'scalars': set(tags['scalars']), 'histograms': set(tags['histograms'])}


f64 = dict(dtype=torch.float64)
"""Hand-worked optimizer tests use float64 so that the expected values are exact."""


def param(values):
    """A float64 parameter tensor with the given values (a list)."""
    return torch.nn.Parameter(torch.tensor(values, **f64))


def step_with(opt, w, grad):
    """Set ``w.grad`` to the given values and take one optimizer step."""
    w.grad = torch.tensor(grad, **f64)
    opt.step()


def assert_matches_adam(make_rewiring, weight_decay, amsgrad):
    """Six steps of ``make_rewiring(params)`` on weights in [5, 6) equal torch.optim.Adam bit for bit.

    With no prior pull and weights far from 0 no synapse is pruned, so a rewiring optimizer
    must reduce to Adam: same weights and same Adam state ('step', moments). Returns the
    rewiring optimizer's final weights.
    """
    gen = torch.Generator().manual_seed(1)
    w0 = 5.0 + torch.rand(4, 3, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(6)]
    weights, states = [], []
    for make in (make_rewiring,
                 lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=weight_decay, amsgrad=amsgrad)):
        w = torch.nn.Parameter(w0.clone())
        opt = make([w])
        for g in grads:
            w.grad = g.clone()
            opt.step()
        weights.append(w.detach().clone())
        states.append(opt.state[w])
    assert torch.equal(weights[0], weights[1])
    adam_keys = ["step", "exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * amsgrad
    assert sorted(states[1]) == sorted(adam_keys)
    assert all(torch.equal(states[0][key], states[1][key]) for key in adam_keys)
    return weights[0]


def run_and_resume(make, n, seed=3, steps=20, save_at=10):
    """Train a fresh tensor of ``n`` weights for ``steps`` random-gradient steps with
    ``make(w, first=True)``, saving weights and ``state_dict()`` (through torch.save) before
    step ``save_at``; then rebuild with ``make(w, first=False)``, load, and redo the rest.

    Returns ``(history, resumed, optimizer, saved_state_dict)``: the weights before the first
    step and after every step of the uninterrupted run, the resumed run's final weights and
    optimizer, and the optimizer state dict as it came back from disk.
    """
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(n, generator=gen)
    grads = [torch.randn(n, generator=gen) for _ in range(steps)]
    w = torch.nn.Parameter(w0.clone())
    opt = make(w, first=True)
    buffer = io.BytesIO()
    history = [w0]
    for i, g in enumerate(grads):
        if i == save_at:
            torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buffer)
        w.grad = g.clone()
        opt.step()
        history.append(w.detach().clone())
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = torch.nn.Parameter(saved["w"])
    opt2 = make(resumed, first=False)
    opt2.load_state_dict(saved["opt"])
    for g in grads[save_at:]:
        resumed.grad = g.clone()
        opt2.step()
    return history, resumed.detach(), opt2, saved["opt"]
