"""The device data path (engine/data.py DevicePipeline, engine/augment.py) against the
released PIL path, and the new flags' checks (docs/method.md, "Data and augmentation",
"Differences from the 2021 release")."""
import math

import pytest
import torch
from torchvision.transforms import functional as TF

import engine
from engine.augment import affine_params, crop_flip, crop_flip_params, epoch_draws
from helpers import config_for, mnist_main, read_metrics, stand_in, strip_times
from mnist import mnist

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


STAND_IN = (stand_in(48, 0, (1, 28, 28)), stand_in(16, 1, (1, 28, 28)))
SMALL = ['-m', 'grad', '-s', '0.95', '-b', '8', '-i1', '1', '--device', 'cpu', '--no-compile']


def test_device_path_resumes_bit_exactly(tmp_path):
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    assert mnist_main(*SMALL, '-N', '2', '--dump-dir', str(straight), datasets=STAND_IN) == 0
    assert mnist_main(*SMALL, '-N', '0', '--dump-dir', str(resumed), datasets=STAND_IN) == 0
    assert mnist_main(*SMALL, '-N', '2', '--dump-dir', str(resumed), datasets=STAND_IN) == 0
    (name,) = [p.name for p in (straight / 'logs').iterdir()]
    assert strip_times(read_metrics(straight / 'logs' / name)) == strip_times(read_metrics(resumed / 'logs' / name))
    a, b = (torch.load(d / 'models' / name / 'checkpoint.pt', weights_only=True) for d in (straight, resumed))
    assert a['data']['data_pipeline'] == 'device'
    assert torch.equal(a['data']['state']['generator'], b['data']['state']['generator'])
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_resume_with_the_other_pipeline_is_one_line(tmp_path, capsys):
    assert mnist_main(*SMALL, '-N', '0', '--dump-dir', str(tmp_path), datasets=STAND_IN) == 0
    capsys.readouterr()
    assert mnist_main(*SMALL, '-N', '1', '--data-pipeline', 'released', '--workers', '0',
                      '--dump-dir', str(tmp_path), datasets=STAND_IN) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ('mnist.py: error: --data-pipeline released: run lr-1e-3-b-8-T-8-penalty-1e-3-s-0.95-grad '
                    'was trained with --data-pipeline device; resume it with --data-pipeline device')


def test_amp_without_bfloat16_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False)
    assert mnist_main(*SMALL, '--amp', '--dump-dir', str(tmp_path / 'd'), datasets=STAND_IN) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('mnist.py: error: --amp: cpu has no native bfloat16 support')
    assert not (tmp_path / 'd').exists()


def test_compile_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine.cli.shutil, 'which', lambda name: None)
    argv = [a for a in SMALL if a != '--no-compile']
    assert mnist_main(*argv, '--compile', '--dump-dir', str(tmp_path / 'd'), datasets=STAND_IN) == 2
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
        from gradrewire import GradRewiring
        from mnist.model import MNISTSNN
        model = MNISTSNN(T=2)
        opt = {'synapse': GradRewiring(list(model.parameters()), alpha=1e-3, s=0.9)}
        batches = [(torch.randn(8, 1, 28, 28), torch.arange(8))]
        train_epoch(model, opt, batches, 10, 0, 1, lambda *a: None, amp=True)
        state = opt['synapse'].state[model.static_fc[1].weight]
    else:
        assert mnist_main(*SMALL, '-N', '0', '--amp', '--dump-dir', str(tmp_path),
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
