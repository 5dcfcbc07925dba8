"""The device data path (engine/data.py, engine/augment.py) on real MNIST: the batched
augmentation against torchvision's PIL path, the test set normalised once, the training set
decoded once."""
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from engine.augment import affine_nearest, affine_params, epoch_draws, normalise
from engine.data import DevicePipeline, ReleasedPipeline, decode
from helpers import REPO, config_for, ensure_real_mnist
from mnist import mnist

DATA = REPO / 'data'


def _args(*argv):
    return config_for(mnist.EXPERIMENT, '--device', 'cpu', *argv)


@pytest.fixture(scope='module')
def mnist_sets():
    ensure_real_mnist()
    return mnist.load_datasets(Namespace(dataset_dir=DATA))


def test_batched_affine_matches_torchvision_on_pil(mnist_sets):
    """2,000 real MNIST digits, each with its own random parameters: the batched gather
    against torchvision's affine of the PIL image on the same parameters."""
    images, _ = decode(mnist_sets[0], 2000)
    u = epoch_draws(seed=1, epoch=0, n=2000, draws=4)
    angle, tx, ty, scale = affine_params(u, mnist.DEGREES, mnist.TRANSLATE, mnist.SCALE, (28, 28))
    ours = affine_nearest(images, angle, tx, ty, scale)
    equal = []
    for i in range(2000):
        ref = TF.affine(Image.fromarray(images[i, 0].numpy(), mode='L'), angle[i].item(),
                        [int(tx[i]), int(ty[i])], scale[i].item(), [0.0, 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=0)
        equal.append((torch.from_numpy(np.array(ref)) == ours[i, 0]).float().mean().item())
    assert np.mean(equal) >= 0.97 and min(equal) >= 0.94, (np.mean(equal), min(equal))


def test_test_set_is_normalised_once_as_the_released_path(mnist_sets, tmp_path):
    args = _args('--test-size', '3000', '--train-size', '256', '--dump-dir', str(tmp_path))
    device, released = DevicePipeline(mnist_sets, args, mnist.EXPERIMENT.augment, (mnist.MEAN,), (mnist.STD,)), \
        ReleasedPipeline(mnist_sets, _args('--test-size', '3000', '--train-size', '256', '--workers', '0',
                                           '--data-pipeline', 'released', '--dump-dir', str(tmp_path)))
    ours, theirs = list(device.test_batches()), list(released.test_batches())
    assert [x.shape for x, _ in ours] == [(1000, 1, 28, 28)] * 3
    assert torch.equal(torch.cat([x for x, _ in ours]), torch.cat([x for x, _ in theirs]))
    assert torch.equal(torch.cat([y for _, y in ours]), torch.cat([y for _, y in theirs]))


def test_training_batches_decoded_once_drop_the_last_partial_batch(mnist_sets, tmp_path):
    args = _args('--train-size', '1000', '--dump-dir', str(tmp_path))
    data = DevicePipeline(mnist_sets, args, mnist.EXPERIMENT.augment, (mnist.MEAN,), (mnist.STD,))
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (1000, 1, 28, 28)
    batches = list(data.train_batches(0))
    assert data.steps_per_epoch == 7 and [len(y) for _, y in batches] == [128] * 7
    x, _ = batches[0]
    assert x.dtype == torch.float32
    background = (0 - mnist.MEAN) / mnist.STD               # fill 0 and black pixels, normalised
    assert x.min().item() == pytest.approx(background) and x.max().item() == pytest.approx((1 - mnist.MEAN) / mnist.STD)
    labels = torch.cat([y for _, y in batches])
    assert len(labels.unique()) == 10


def test_decode_reads_raw_images_without_transforms(mnist_sets):
    images, labels = decode(mnist_sets[1], 5)
    assert torch.equal(images[:, 0], mnist_sets[1].data[:5]) and labels.tolist() == mnist_sets[1].targets[:5].tolist()
    assert torch.equal(normalise(images, (mnist.MEAN,), (mnist.STD,)),
                       torch.stack([mnist_sets[1][i][0] for i in range(5)]))
