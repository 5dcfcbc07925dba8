"""Grad R, Deep R and soft Deep R on CIFAR-10 with the released 6-conv, 2-FC spiking network.

Examples (from the repository root, or from inside c10/ as ``python c10.py ...``)::

    python c10/c10.py -m grad -s 0.95            # Grad R, target sparsity 0.95
    python c10/c10.py -m deep -s 0.95            # Deep R
    python c10/c10.py -m deep -soft -s 0.95      # soft Deep R
    python c10/c10.py -m grad -s 0.95 -test      # evaluate the latest checkpoint

BatchNorm parameters are never pruned: the engine gives them a plain Adam with the same
learning rate. Everything but the model, the data and the defaults lives in ``engine.py``.
"""
import sys
from pathlib import Path

if __package__ in (None, ''):      # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchvision import datasets, transforms  # noqa: E402

import engine  # noqa: E402
from c10.model import CIFAR10SNN  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def load_datasets(args):
    """CIFAR-10 train set (random crop 32, padding 4, horizontal flip) and test set, [3, 32, 32].

    Uses ``<dataset-dir>/cifar-10-batches-py``, extracting ``cifar-10-python.tar.gz`` or
    downloading it when missing.

    Raises:
        engine.UsageError: the data are absent and cannot be downloaded (one line).
    """
    root = args.dataset_dir
    if not (root / 'cifar-10-batches-py').is_dir():
        engine.check_writable_dir('--dataset-dir', root)
    existed = root.exists()
    normalise = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                   transforms.RandomHorizontalFlip(), *normalise])
    try:
        return (datasets.CIFAR10(str(root), train=True, transform=train_tf, download=True),
                datasets.CIFAR10(str(root), train=False, transform=transforms.Compose(normalise)))
    except Exception as err:     # no internet, or a damaged archive
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()         # leave no empty folder behind from the failed download
        raise engine.UsageError(
            f'CIFAR-10 is not in {root} and could not be downloaded ({type(err).__name__}); '
            f'put cifar-10-python.tar.gz, or the extracted cifar-10-batches-py/, into {root}') from None


EXPERIMENT = engine.Experiment(
    prog='c10.py',
    description='Prune the CIFAR-10 spiking CNN (6 conv + 2 FC layers, LIF, T time steps) with '
                'Grad R, Deep R or soft Deep R (Chen et al., IJCAI 2021), or train it unpruned '
                '(-m no_prune). BatchNorm parameters are trained by a plain Adam, never pruned.',
    defaults={'b': 16, 'lr': 1e-4, 'N': 2047, 'i1': 128, 'i2': 1024},
    build_model=lambda args: CIFAR10SNN(T=args.T),
    load_datasets=load_datasets,
)


if __name__ == '__main__':
    sys.exit(engine.main(EXPERIMENT))
