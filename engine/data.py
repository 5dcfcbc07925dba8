"""Data pipelines: each yields the training batches of an epoch and the test batches, on
the run's device (``docs/method.md``, "Data and augmentation").

- :class:`DevicePipeline`, the default (``--data-pipeline device``): data sets decoded once
  into tensors on the device, augmented there in batches;
- :class:`ReleasedPipeline` (``--data-pipeline released``), the released scripts' path:
  torch DataLoaders over the experiment's datasets, whose transforms run per sample on PIL
  images in worker processes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from engine.augment import derived_seed, epoch_draws, normalise
from engine.config import RunConfig
from engine.distributed import shard_of
from engine.errors import UsageError


def subset(ds: Dataset, k: int | None) -> Dataset:
    """The first ``k`` samples of ``ds`` (all when ``k`` is None)."""
    return ds if k is None else Subset(ds, range(min(k, len(ds))))


def make_loader(ds: Dataset, config: RunConfig, shuffle: bool, batch_size: int | None = None,
                drop_last: bool = False, **kwargs) -> DataLoader:
    """A DataLoader that draws its shuffling and worker seeds from torch's global generator.

    As in the released scripts (DataLoader without a generator): after seeding and building
    the model, each epoch's iterator draws the workers' base seed and then the shuffle seed
    from the global stream, so a run with a given ``--seed`` sees the released scripts' data
    order. Workers are not persistent: each epoch's workers are seeded anew from that stream,
    whose state the checkpoint keeps, so a resumed run shuffles and augments exactly as an
    uninterrupted one. ``batch_size`` defaults to ``-b``; ``kwargs`` go to the DataLoader.
    """
    return DataLoader(ds, batch_size=batch_size or config.b, shuffle=shuffle,
                      num_workers=config.workers, pin_memory=config.device.type == 'cuda',
                      drop_last=drop_last, **kwargs)


def check_enough_samples(n: int, b: int) -> None:
    """Training drops the last partial batch, as released: fewer than ``-b`` samples would
    train nothing.

    Raises:
        UsageError: ``n < -b``.
    """
    if n < b:
        raise UsageError(f'-b {b}: the training set has only {n} samples, fewer than one '
                         f'batch (the last partial batch is dropped, as released); lower -b')


def check_test_shards(n: int, world_size: int) -> None:
    """Every process of a distributed run evaluates its own shard of the test set.

    Raises:
        UsageError: fewer test samples than processes.
    """
    if n < world_size:
        raise UsageError(f'the test set has {n} samples, fewer than the {world_size} '
                         f'processes that share it; use more test samples')


class ReleasedPipeline:
    """The released data path: a shuffling training DataLoader that drops the last partial
    batch (MNIST 468 steps an epoch, CIFAR-10 3,125) and a test DataLoader that keeps every
    sample, both moving batches to the run's device.

    Under torchrun (``config.world_size`` K > 1) each process trains on a
    ``DistributedSampler`` (seeded with ``--seed``, reshuffled per epoch) of b/K samples a
    step, its loader's worker seeds drawn from (seed, epoch, rank), and evaluates a
    contiguous shard of the test set.

    ``settings`` is what a resumed run must share with the checkpoint: the augmentation's
    random stream depends on the number of loader workers.

    Raises:
        UsageError: fewer training samples than one batch, or fewer test samples than
            processes.
    """
    name = 'released'

    def __init__(self, datasets: tuple[Dataset, Dataset], config: RunConfig):
        train_set, test_set = subset(datasets[0], config.train_size), subset(datasets[1], config.test_size)
        check_enough_samples(len(train_set), config.b)
        self.device, self.config = config.device, config
        self.sampler = self.generator = None
        if config.world_size > 1:
            check_test_shards(len(test_set), config.world_size)
            self.sampler = DistributedSampler(train_set, config.world_size, config.rank, shuffle=True,
                                              seed=config.seed, drop_last=True)
            self.generator = torch.Generator()
            self.train_loader = make_loader(train_set, config, False, config.b // config.world_size, True,
                                            sampler=self.sampler, generator=self.generator)
            test_set = Subset(test_set, shard_of(len(test_set), config.rank, config.world_size))
        else:
            self.train_loader = make_loader(train_set, config, shuffle=True, drop_last=True)
        self.test_loader = make_loader(test_set, config, shuffle=False, batch_size=config.eval_batch)
        self.settings = {'data_pipeline': self.name, 'workers': config.workers}

    def _to_device(self, loader):
        for img, label in loader:
            yield img.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int):
        """The training batches of ``epoch`` (order from torch's global generator, or under
        torchrun from the sampler's epoch)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            self.generator.manual_seed(derived_seed(self.config.seed, epoch, self.config.rank))
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


def decode(ds: Dataset, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` samples of a map-style dataset as ``(images [n, C, H, W], labels [n])``.

    Read once, without the dataset's transforms where its raw images can be had:
    torchvision's MNIST and CIFAR10 (``data`` and ``targets``: uint8 images), an
    ``ImageFolder`` (each file decoded to RGB uint8, in the dataset's sample order), also
    inside a ``Subset``. Any other dataset is read sample by sample as it returns them (e.g.
    float tensors that are already network inputs; they are then neither normalised nor, as
    uint8 would be, scaled).
    """
    indices = range(len(ds) if k is None else min(k, len(ds)))
    while isinstance(ds, Subset):
        indices, ds = [ds.indices[i] for i in indices], ds.dataset
    index = torch.as_tensor(list(indices), dtype=torch.long)
    if hasattr(ds, 'data') and hasattr(ds, 'targets'):
        images = torch.as_tensor(np.asarray(ds.data))[index]
        if images.dim() == 3:                                    # MNIST [n, H, W]
            images = images.unsqueeze(1)
        elif images.shape[-1] in (1, 3):                         # CIFAR10 [n, H, W, C]
            images = images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)[index]
    if hasattr(ds, 'samples') and hasattr(ds, 'loader'):         # ImageFolder
        images = [torch.from_numpy(np.array(ds.loader(ds.samples[i][0]).convert('RGB')))
                  for i in index.tolist()]
        labels = [ds.samples[i][1] for i in index.tolist()]
        return torch.stack(images).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(labels)
    samples = [ds[i] for i in index.tolist()]
    return (torch.stack([torch.as_tensor(x) for x, _ in samples]),
            torch.as_tensor([int(y) for _, y in samples], dtype=torch.long))


class DevicePipeline:
    """The fast data path (``docs/method.md``, "Differences from the 2021 release").

    Each data set is decoded once into one tensor on the run's device (uint8 for the real
    data sets: MNIST [60000, 1, 28, 28], CIFAR-10 [50000, 3, 32, 32]). Each epoch shuffles
    with a seeded ``torch.Generator`` whose state the checkpoint keeps, and augments each
    training batch on the device with the experiment's :class:`engine.augment.Augmentation`,
    whose draws depend on (seed, epoch, sample index) alone, then normalises it. The test set
    is normalised once. Training drops the last partial batch, as released; test batches of
    ``--eval-batch`` keep every sample.

    Under torchrun (``config.world_size`` K > 1) every process shuffles and augments exactly
    as one process would and trains on its slice ``[r*b/K, (r+1)*b/K)`` of each batch; it
    evaluates a contiguous shard of the test set.

    Raises:
        UsageError: fewer training samples than one batch, or fewer test samples than
            processes.
    """
    name = 'device'

    def __init__(self, datasets: tuple[Dataset, Dataset], config: RunConfig, augment,
                 mean: tuple, std: tuple):
        self.device, self.b, self.seed = config.device, config.b, config.seed
        self.augment, self.mean, self.std = augment, mean, std
        train_x, self.train_y = decode(datasets[0], config.train_size)
        check_enough_samples(len(train_x), config.b)
        test_x, test_y = decode(datasets[1], config.test_size)
        per_rank = config.b // config.world_size
        self.shard = slice(config.rank * per_rank, (config.rank + 1) * per_rank)   # of each batch
        if config.world_size > 1:
            check_test_shards(len(test_x), config.world_size)
            part = shard_of(len(test_x), config.rank, config.world_size)
            test_x, test_y = test_x[part.start:part.stop], test_y[part.start:part.stop]
        self.train_x, self.train_y = train_x.to(self.device), self.train_y.to(self.device)
        self.test = [(normalise(x.to(self.device), mean, std), y.to(self.device))
                     for x, y in zip(test_x.split(config.eval_batch), test_y.split(config.eval_batch))]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.settings = {'data_pipeline': self.name}

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_x) // self.b

    def train_batches(self, epoch: int):
        """The training batches of ``epoch``: (normalised images [b, C, H, W], labels [b]);
        only the columns ``self.shard`` of each batch (all by default)."""
        n = len(self.train_x)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        u = None
        if self.augment is not None:
            u = epoch_draws(self.seed, epoch, n, self.augment.draws).to(self.device, torch.float32)
        for batch in order[:self.steps_per_epoch * self.b].view(-1, self.b)[:, self.shard]:
            x = self.train_x[batch]
            if u is not None:
                x = self.augment.apply(x, u[batch])
            yield normalise(x, self.mean, self.std), self.train_y[batch]

    def test_batches(self):
        """The normalised test batches, in order."""
        return iter(self.test)

    def state_dict(self) -> dict:
        """The shuffling generator's state (a uint8 tensor)."""
        return {'generator': self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state['generator'])


def make_pipeline(datasets: tuple[Dataset, Dataset], config: RunConfig, exp):
    """The run's data pipeline for ``--data-pipeline``: :class:`DevicePipeline` with the
    experiment's augmentation and normalisation, or :class:`ReleasedPipeline`.

    Raises:
        UsageError: the training set is smaller than one batch.
    """
    if config.data_pipeline == 'released':
        return ReleasedPipeline(datasets, config)
    return DevicePipeline(datasets, config, exp.augment, exp.mean, exp.std)
