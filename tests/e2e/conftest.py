"""Session set-up of the end-to-end tests: real MNIST on disk before the first of them."""
import warnings

import pytest

import engine
from helpers import ensure_real_mnist


@pytest.fixture(scope='session', autouse=True)
def real_mnist_on_disk():
    """Real MNIST in the scripts' default ``--dataset-dir`` before any test runs.

    In a fresh clone the first script run downloads it and says so on stderr, which a test
    that expects exactly one line there (an interrupt, an error) would count. Offline, the
    tests that need real MNIST fail with the scripts' own message; the others still run.
    Under pytest-xdist every worker runs this; a file lock lets one fetch while the others
    wait, then find the files whole.
    """
    try:
        ensure_real_mnist()
    except engine.UsageError as err:
        warnings.warn(f'real MNIST is not available: {err}')
