"""Both tiers under pytest-xdist (pytest.ini: ``-n auto --dist loadgroup``).

* Threads: each worker, and every script a test starts from it, gets an equal share of the
  CPU cores (``OMP_NUM_THREADS``, which the scripts take as their default ``--threads``), so
  that two workers on two cores do not run four threads; several PyTorch processes that
  each use all cores slow each other down many times over. A value the caller set stands.
* Module fixtures: a test that uses a module-scoped fixture (a training run that several
  tests read) is put in the xdist group of its module, so that the fixture runs once, on
  one worker, instead of once on every worker that gets one of those tests. The other tests
  are spread one by one.

Without xdist (``-n 0``) neither applies.
"""
import os

import pytest
import torch

WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0'))
"""How many xdist workers this session runs (0: none; this is then the only process)."""

if WORKERS and not os.environ.get('OMP_NUM_THREADS'):
    os.environ['OMP_NUM_THREADS'] = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


@pytest.hookimpl(tryfirst=True)             # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        fixtures = item._fixtureinfo.name2fixturedefs.values()
        if any(defs[-1].scope == 'module' for defs in fixtures):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split('::', 1)[0]))
