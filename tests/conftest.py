"""Both tiers under pytest-xdist (pytest.ini: ``-n auto --dist loadgroup``).

* Threads: each worker, and every script a test starts from it, gets an equal share of the
  CPU cores (``OMP_NUM_THREADS``, which the scripts take as their default ``--threads``), so
  that two workers on two cores do not run four threads; several PyTorch processes that
  each use all cores slow each other down many times over. A value the caller set stands.
* Module fixtures: a test that uses a module-scoped fixture (a training run that several
  tests read) is put in the xdist group of its module, so that the fixture runs once, on
  one worker, instead of once on every worker that gets one of those tests. The other tests
  are spread one by one.

* Worker count: ``-n auto`` starts one worker per core this process may run on
  (``engine.cli.cpu_cores``, the affinity mask), not per physical core as xdist would with
  psutil installed: a container limited to 2 cores of a larger machine runs 2 workers.
* Threads are restored after each test: a test that runs ``engine.main`` in this process
  (e.g. with ``--threads 1``) does not leave the rest of the session on its thread count.

With ``-n 0`` (xdist installed, no workers) the first two do not apply. pytest.ini's
``-n auto`` needs pytest-xdist; without it, run ``python -m pytest -o addopts=-ra``.
"""
import os

import pytest
import torch

from engine.cli import cpu_cores

WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0'))
"""How many xdist workers this session runs (0: none; this is then the only process)."""

if WORKERS and not os.environ.get('OMP_NUM_THREADS'):
    os.environ['OMP_NUM_THREADS'] = str(max(1, cpu_cores() // WORKERS))
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may run on."""
    return cpu_cores()


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)             # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        info = getattr(item, '_fixtureinfo', None)
        if info is None:                     # e.g. a doctest: no fixtures to group by
            continue
        fixtures = info.name2fixturedefs.values()
        if any(defs[-1].scope == 'module' for defs in fixtures):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split('::', 1)[0]))
