"""End to end for c10.py through the engine, on stand-in data of CIFAR-10's shape.

CIFAR-10 cannot be downloaded here; torchvision's loader is what c10.py uses, and the
engine takes the datasets from the caller, so these tests pass a few dozen random
3x32x32 images with 10 classes. T=2 keeps each step to about a second on a CPU.
"""
import numpy as np
import pytest
import torch

import engine
from c10 import c10
from helpers import REPO, read_metrics, run_script, stand_in, strip_times, tensorboard_tags

WEIGHTS = ['static_conv.0.weight', 'conv.1.weight', 'conv.4.weight', 'conv.8.weight',
           'conv.11.weight', 'conv.14.weight', 'fc.2.weight', 'fc.4.weight']
ARGS = ['-m', 'grad', '-s', '0.95', '-T', '2', '-b', '8', '-N', '1', '-i1', '2', '-i2', '2',
        '--workers', '0', '--no-compile', '--device', 'cpu']
NAME = 'lr-1e-4-b-8-T-2-penalty-1e-3-s-0.95-grad'


DATA = (stand_in(16, 0), stand_in(8, 1))          # 2 steps an epoch


def run(dump, *extra):
    return engine.main(c10.EXPERIMENT, [*ARGS, '--dump-dir', str(dump), *extra], datasets=DATA)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    dump = tmp_path_factory.mktemp('c10')
    assert run(dump) == 0
    return dump


def test_defaults_are_the_released_ones():
    args = engine.build_parser(c10.EXPERIMENT).parse_args([])
    assert (args.b, args.lr, args.N, args.i1, args.T, args.penalty, args.m) == (16, 1e-4, 2048, 128, 8, 1e-3, 'no_prune')


def test_logs_both_sparsities_and_weights_only(trained):
    log_dir = trained / 'logs' / NAME
    records = read_metrics(log_dir)
    assert [r['epoch'] for r in records] == [0, 1]
    assert [r['step'] for r in records] == [2, 4]
    for r in records:
        assert set(r['layer_sparsity']) == set(WEIGHTS)
        # "with bn" counts 3072 BN parameters that are never zero, so it is a bit lower.
        total = 36_715_264
        assert r['sparsity_with_bn'] == pytest.approx(r['sparsity'] * total / (total + 3072), rel=1e-9)
    assert records[1]['sparsity'] > 0                   # weights are pruned
    _, tags = tensorboard_tags(log_dir)
    assert {'sparsity/with bn', 'sparsity/without bn', 'test_acc', 'train/loss'} <= tags['scalars']
    assert 'sparsity' not in tags['scalars']
    layer_tags = {t.split('/', 1)[1] for t in tags['scalars'] if t.startswith('layer sparsity/')}
    assert layer_tags == set(WEIGHTS)
    assert {t.split('/', 1)[1] for t in tags['scalars'] if t.startswith('prune_cnt/')} == set(WEIGHTS)
    assert tags['histograms'] == {f'{w}-w' for w in WEIGHTS} | {f'{w}-theta' for w in WEIGHTS}
    lif_layers = {t.split('/', 1)[1] for t in tags['scalars'] if t.startswith('avg_firing_rate/')}
    assert lif_layers == {'conv.0', 'conv.3', 'conv.6', 'conv.10', 'conv.13', 'conv.16', 'fc.3', 'fc.5'}


def test_bn_parameters_get_plain_adam_and_are_never_pruned(trained):
    ckpt = torch.load(trained / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    syn_state = ckpt['optimizers']['synapse']
    (group,) = syn_state['param_groups']
    assert len(group['params']) == len(WEIGHTS)
    assert all('strength' in s for s in syn_state['state'].values())
    bn_state = ckpt['optimizers']['bn']
    assert bn_state['param_groups'][0]['lr'] == 1e-4
    assert len(bn_state['param_groups'][0]['params']) == 12          # 6 BN layers x (weight, bias)
    assert all(set(s) == {'step', 'exp_avg', 'exp_avg_sq'} for s in bn_state['state'].values())
    model = ckpt['model']
    bn_keys = [k for k in model if k.endswith(('.weight', '.bias')) and k not in WEIGHTS]
    assert len(bn_keys) == 12
    for key in bn_keys:
        assert (model[key].abs() >= 1e-10).all(), key              # BN affine: never pruned
    assert not torch.equal(model['conv.2.weight'], torch.ones(256))   # ... but trained
    assert int(model['conv.2.num_batches_tracked']) == 4 * 2          # T updates per batch


def test_resume_gives_the_same_numbers(trained, tmp_path):
    assert run(tmp_path, '-N', '0') == 0
    assert run(tmp_path) == 0
    assert strip_times(read_metrics(tmp_path / 'logs' / NAME)) == strip_times(read_metrics(trained / 'logs' / NAME))
    a = torch.load(trained / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    b = torch.load(tmp_path / 'models' / NAME / 'checkpoint.pt', weights_only=True)
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key


def test_dash_test_prints_both_sparsities(trained, capsys):
    assert run(trained, '-test') == 0
    out = capsys.readouterr().out
    final = read_metrics(trained / 'logs' / NAME)[-1]
    assert f"sparsity without bn {final['sparsity']:.4f}" in out
    assert f"sparsity with bn {final['sparsity_with_bn']:.4f}" in out
    assert f"test_acc {final['test_acc']:.4f}" in out
    rates = np.load(trained / 'models' / NAME / 'firing_rate-fc.3.npy')
    assert rates.shape == (2048,)


def test_without_data_one_line(tmp_path):
    done = run_script(REPO / 'c10' / 'c10.py', '-m', 'grad', '-s', '0.95',
                      '--dataset-dir', tmp_path / 'cifar', '--dump-dir', tmp_path / 'dump')
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith('c10.py: error: CIFAR-10 is not in') and 'cifar-10-python.tar.gz' in line
    assert not (tmp_path / 'cifar').exists() and not (tmp_path / 'dump').exists()


def test_grad_without_s_fails_like_mnist(tmp_path):
    done = run_script(REPO / 'c10' / 'c10.py', '-m', 'grad', '--dump-dir', tmp_path / 'dump')
    assert done.returncode == 2
    assert done.stderr.strip() == 'c10.py: error: -s (target sparsity) is required with -m grad; allowed: 0.5 <= s < 1'
