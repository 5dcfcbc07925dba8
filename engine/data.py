"""Data loading of the released scripts: torch DataLoaders over the experiment's datasets."""
from __future__ import annotations

import argparse

from torch.utils.data import DataLoader, Dataset, Subset


def subset(ds: Dataset, k: int | None) -> Dataset:
    """The first ``k`` samples of ``ds`` (all when ``k`` is None)."""
    return ds if k is None else Subset(ds, range(min(k, len(ds))))


def make_loader(ds: Dataset, args: argparse.Namespace, shuffle: bool) -> DataLoader:
    """A DataLoader that draws its shuffling and worker seeds from torch's global generator.

    As in the released scripts (DataLoader without a generator): after seeding and building
    the model, each epoch's iterator draws the workers' base seed and then the shuffle seed
    from the global stream, so a run with a given ``--seed`` sees the released scripts' data
    order. Workers are not persistent: each epoch's workers are seeded anew from that stream,
    whose state the checkpoint keeps, so a resumed run shuffles and augments exactly as an
    uninterrupted one.
    """
    return DataLoader(ds, batch_size=args.b, shuffle=shuffle, num_workers=args.workers,
                      pin_memory=args.device.type == 'cuda', drop_last=False)
