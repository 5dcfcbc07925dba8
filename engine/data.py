"""Data pipelines: each yields the training batches of an epoch and the test batches, on
the run's device (``docs/method.md``, "Data and augmentation").

:class:`ReleasedPipeline` is the released scripts' path: torch DataLoaders over the
experiment's datasets, whose transforms run per sample on PIL images in worker processes.
"""
from __future__ import annotations

import argparse

from torch.utils.data import DataLoader, Dataset, Subset

from engine.cli import UsageError


def subset(ds: Dataset, k: int | None) -> Dataset:
    """The first ``k`` samples of ``ds`` (all when ``k`` is None)."""
    return ds if k is None else Subset(ds, range(min(k, len(ds))))


def make_loader(ds: Dataset, args: argparse.Namespace, shuffle: bool, batch_size: int | None = None,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader that draws its shuffling and worker seeds from torch's global generator.

    As in the released scripts (DataLoader without a generator): after seeding and building
    the model, each epoch's iterator draws the workers' base seed and then the shuffle seed
    from the global stream, so a run with a given ``--seed`` sees the released scripts' data
    order. Workers are not persistent: each epoch's workers are seeded anew from that stream,
    whose state the checkpoint keeps, so a resumed run shuffles and augments exactly as an
    uninterrupted one. ``batch_size`` defaults to ``-b``.
    """
    return DataLoader(ds, batch_size=batch_size or args.b, shuffle=shuffle,
                      num_workers=args.workers, pin_memory=args.device.type == 'cuda',
                      drop_last=drop_last)


def check_enough_samples(n: int, args: argparse.Namespace) -> None:
    """Training drops the last partial batch, as released: fewer than ``-b`` samples would
    train nothing.

    Raises:
        UsageError: ``n < -b``.
    """
    if n < args.b:
        raise UsageError(f'-b {args.b}: the training set has only {n} samples, fewer than one '
                         f'batch (the last partial batch is dropped, as released); lower -b')


class ReleasedPipeline:
    """The released data path: a shuffling training DataLoader that drops the last partial
    batch (MNIST 468 steps an epoch, CIFAR-10 3,125) and a test DataLoader that keeps every
    sample, both moving batches to ``args.device``.

    ``settings`` is what a resumed run must share with the checkpoint: the augmentation's
    random stream depends on the number of loader workers.
    """
    name = 'released'

    def __init__(self, datasets: tuple[Dataset, Dataset], args: argparse.Namespace):
        train_set, test_set = subset(datasets[0], args.train_size), subset(datasets[1], args.test_size)
        check_enough_samples(len(train_set), args)
        self.device = args.device
        self.train_loader = make_loader(train_set, args, shuffle=True, drop_last=True)
        self.test_loader = make_loader(test_set, args, shuffle=False, batch_size=args.eval_batch)
        self.settings = {'data_pipeline': self.name, 'workers': args.workers}

    def _to_device(self, loader):
        for img, label in loader:
            yield img.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int):
        """The training batches of ``epoch`` (order from torch's global generator)."""
        return self._to_device(self.train_loader)

    def test_batches(self):
        """The test batches, in order."""
        return self._to_device(self.test_loader)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def state_dict(self) -> dict:
        """Nothing of its own: its randomness is torch's global generator, checkpointed apart."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
