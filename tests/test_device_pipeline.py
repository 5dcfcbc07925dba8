"""The device data path (engine/data.py DevicePipeline, engine/augment.py) against the
released PIL path, and the new flags' checks (docs/method.md, "Data and augmentation",
"Differences from the 2021 release")."""
import math
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import engine
from c10 import c10
from engine.augment import (affine_nearest, affine_params, crop_flip, crop_flip_params, epoch_draws,
                            normalise)
from engine.data import DevicePipeline, ReleasedPipeline, decode
from helpers import config_for, REPO, read_metrics
from mnist import mnist

DATA = REPO / 'data'


@pytest.fixture(scope='module')
def mnist_sets():
    mnist.ensure_mnist(DATA)
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


def test_batched_crop_flip_matches_torchvision_exactly():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 32, 32), generator=g, dtype=torch.uint8)
    top, left, flip = crop_flip_params(epoch_draws(2, 5, 200, 3), padding=4)
    ours = crop_flip(images, top, left, flip, padding=4)
    for i in range(200):
        ref = TF.crop(TF.pad(images[i], [4]), int(top[i]), int(left[i]), 32, 32)
        if flip[i]:
            ref = TF.hflip(ref)
        assert torch.equal(ours[i], ref), i


def test_parameter_moments_are_torchvisions():
    n = 200_000
    angle, tx, ty, scale = affine_params(epoch_draws(0, 0, n, 4), 30, 0.15, (0.85, 1.11), (28, 28))
    # RandomAffine: angle ~ U(-30, 30): mean 0, variance 60^2 / 12 = 300
    assert abs(angle.mean()) < 0.1 and angle.var().item() == pytest.approx(300, rel=0.01)
    assert angle.min() >= -30 and angle.max() <= 30
    # translation round(U(-4.2, 4.2)): P(|t| = 4) = 0.7 / 8.4 each side, 1 / 8.4 for -3..3
    for t in (tx, ty):
        values, counts = t.unique(return_counts=True)
        assert values.tolist() == list(range(-4, 5))
        expected = [0.7 / 8.4] + [1 / 8.4] * 7 + [0.7 / 8.4]
        assert (counts / n).tolist() == pytest.approx(expected, abs=0.003)
    # scale ~ U(0.85, 1.11): mean 0.98, variance 0.26^2 / 12
    assert scale.mean().item() == pytest.approx(0.98, abs=0.001)
    assert scale.var().item() == pytest.approx(0.26 ** 2 / 12, rel=0.01)
    top, left, flip = crop_flip_params(epoch_draws(0, 0, n, 3), padding=4)
    for offset in (top, left):       # RandomCrop: uniform on 0..8
        assert (offset.bincount(minlength=9) / n).tolist() == pytest.approx([1 / 9] * 9, abs=0.003)
    assert flip.float().mean().item() == pytest.approx(0.5, abs=0.004)


def test_a_sample_is_augmented_alike_whatever_the_batch_split():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 1, 28, 28), generator=g, dtype=torch.uint8)
    aug = mnist.EXPERIMENT.augment
    u = epoch_draws(7, 3, 64, aug.draws)
    whole = aug.apply(images, u)
    order = torch.randperm(64, generator=g)
    for part in order.split(5):
        assert torch.equal(aug.apply(images[part], u[part]), whole[part])
    assert torch.equal(epoch_draws(7, 3, 64, 4), u) and not torch.equal(epoch_draws(7, 4, 64, 4), u)


def _args(*argv):
    return config_for(mnist.EXPERIMENT, '--device', 'cpu', *argv)


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


STAND_IN = (TensorDataset(torch.randn(48, 1, 28, 28), torch.arange(48) % 10),
            TensorDataset(torch.randn(16, 1, 28, 28), torch.arange(16) % 10))
SMALL = ['-m', 'grad', '-s', '0.95', '-b', '8', '-i1', '1', '--device', 'cpu', '--no-compile']


def test_device_path_resumes_bit_exactly(tmp_path):
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    assert engine.main(mnist.EXPERIMENT, [*SMALL, '-N', '2', '--dump-dir', str(straight)], datasets=STAND_IN) == 0
    assert engine.main(mnist.EXPERIMENT, [*SMALL, '-N', '0', '--dump-dir', str(resumed)], datasets=STAND_IN) == 0
    assert engine.main(mnist.EXPERIMENT, [*SMALL, '-N', '2', '--dump-dir', str(resumed)], datasets=STAND_IN) == 0
    (name,) = [p.name for p in (straight / 'logs').iterdir()]
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith('_seconds')} for r in rs]
    assert strip(read_metrics(straight / 'logs' / name)) == strip(read_metrics(resumed / 'logs' / name))
    a, b = (torch.load(d / 'models' / name / 'checkpoint.pt', weights_only=True) for d in (straight, resumed))
    assert a['data']['data_pipeline'] == 'device'
    assert torch.equal(a['data']['state']['generator'], b['data']['state']['generator'])
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_resume_with_the_other_pipeline_is_one_line(tmp_path, capsys):
    assert engine.main(mnist.EXPERIMENT, [*SMALL, '-N', '0', '--dump-dir', str(tmp_path)], datasets=STAND_IN) == 0
    capsys.readouterr()
    assert engine.main(mnist.EXPERIMENT, [*SMALL, '-N', '1', '--data-pipeline', 'released', '--workers', '0',
                                          '--dump-dir', str(tmp_path)], datasets=STAND_IN) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ('mnist.py: error: --data-pipeline released: run lr-1e-3-b-8-T-8-penalty-1e-3-s-0.95-grad '
                    'was trained with --data-pipeline device; resume it with --data-pipeline device')


def test_amp_without_bfloat16_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False)
    assert engine.main(mnist.EXPERIMENT, [*SMALL, '--amp', '--dump-dir', str(tmp_path / 'd')], datasets=STAND_IN) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('mnist.py: error: --amp: cpu has no native bfloat16 support')
    assert not (tmp_path / 'd').exists()


def test_compile_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine.cli.shutil, 'which', lambda name: None)
    argv = [a for a in SMALL if a != '--no-compile']
    assert engine.main(mnist.EXPERIMENT, [*argv, '--compile', '--dump-dir', str(tmp_path / 'd')], datasets=STAND_IN) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('mnist.py: error: --compile: no C++ compiler') and 'use --no-compile' in line
    config = config_for(mnist.EXPERIMENT, *argv, '--dump-dir', tmp_path / 'd')
    assert config.compile is False                  # the default falls back to eager
    assert not (tmp_path / 'd').exists()


def test_amp_keeps_float32_state_where_bfloat16_is_native(tmp_path):
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        # The CPU here has no bfloat16: run the same bookkeeping under a CPU autocast anyway
        # through the loop, which autocast supports on any CPU (only slower).
        from engine.loop import train_epoch
        from mnist.model import MNISTSNN
        model = MNISTSNN(T=2)
        opt = {'synapse': engine.optimizers.GradRewiring(list(model.parameters()), alpha=1e-3, s=0.9)}
        batches = [(torch.randn(8, 1, 28, 28), torch.arange(8))]
        train_epoch(model, opt, batches, 10, 0, 1, lambda *a: None, amp=True)
        state = opt['synapse'].state[model.static_fc[1].weight]
    else:
        assert engine.main(mnist.EXPERIMENT, [*SMALL, '-N', '0', '--amp', '--dump-dir', str(tmp_path)],
                           datasets=STAND_IN) == 0
        (models,) = (tmp_path / 'models').iterdir()
        state = torch.load(models / 'checkpoint.pt', weights_only=True)['optimizers']['synapse']['state'][0]
    for key in ('exp_avg', 'exp_avg_sq', 'strength'):
        assert state[key].dtype == torch.float32, key
    assert math.isfinite(state['strength'].sum().item())


@pytest.mark.parametrize('which, headers, expected', [
    (lambda name: f'/usr/bin/{name}', True, None),
    (lambda name: None, True, 'no C compiler (cc, gcc, clang or $CC), which Triton needs to build its launcher'),
    (lambda name: f'/usr/bin/{name}', False, 'no Python.h in'),
])
def test_compile_on_cuda_needs_triton_a_c_compiler_and_python_headers(which, headers, expected, tmp_path, monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: object() if name == 'triton' else real_find_spec(name))
    monkeypatch.setattr(engine.cli.shutil, 'which', which)
    if not headers:
        monkeypatch.setattr(engine.cli.sysconfig, 'get_paths', lambda: {'include': str(tmp_path)})
    missing = engine.cli.compile_toolchain_missing(torch.device('cuda'))
    assert missing == expected if expected is None else missing.startswith(expected)
    notes = []
    assert engine.cli.check_compile(None, torch.device('cuda'), notes.append) is (expected is None)
    assert len(notes) == (expected is not None)
    if expected is not None:
        with pytest.raises(engine.UsageError, match='--compile: .*use --no-compile'):
            engine.cli.check_compile(True, torch.device('cuda'))
