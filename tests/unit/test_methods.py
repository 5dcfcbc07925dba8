"""The pruning methods as one family (engine/methods.py): a method registered from this test
module alone is trained, named, logged, tested with -test, reported and swept; STDS runs and
resumes through the engine; each method's flags are checked before any work."""
import csv
import json

import pytest
import torch

import report
import sweep
from engine import methods
from helpers import config_for, mnist_main, read_metrics, stand_in, strip_times, tensorboard_tags
from mnist import mnist
from snn import synapse_parameters

STAND_IN = (stand_in(48, 0, (1, 28, 28)), stand_in(16, 1, (1, 28, 28)))
SMALL = ['-b', '8', '-i1', '1', '--device', 'cpu', '--no-compile', '--threads', '1']


class MagnitudePruning(torch.optim.Adam):
    """Adam, then every tensor keeps only its largest-|w| (1 - s) fraction (the rest set to 0)."""

    def __init__(self, params, lr, s):
        super().__init__(params, lr=lr)
        self.s = s

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for w in group['params']:
                k = int(self.s * w.numel())
                if k:
                    w.view(-1)[w.abs().view(-1).argsort()[:k]] = 0
        return loss


def _check_magnitude(flags):
    if flags['s'] is None or not 0 <= flags['s'] < 1:
        raise methods.MethodError(f"-s (fraction pruned) must satisfy 0 <= s < 1 with -m magnitude, got {flags['s']}")


@pytest.fixture
def toy_method():
    method = methods.register(methods.Method(
        'magnitude', ('-m', 'magnitude'), 'magnitude pruning', {'marker': 'v'}, 'magnitude',
        lambda config, model, steps: MagnitudePruning(synapse_parameters(model), config.lr, config.s),
        grid=('-s',), check=_check_magnitude))
    yield method
    methods.unregister('magnitude')


def test_a_method_registered_here_is_trained_named_logged_tested_reported_and_swept(toy_method, tmp_path, capsys):
    argv = ['-m', 'magnitude', '-s', '0.75', *SMALL, '-N', '1', '--dump-dir', str(tmp_path / 'runs')]
    assert mnist_main(*argv, datasets=STAND_IN) == 0
    name = 'lr-1e-3-b-8-T-8-s-0.75-magnitude'
    log_dir = tmp_path / 'runs' / 'logs' / name
    records = read_metrics(log_dir)
    assert [r['epoch'] for r in records] == [0, 1]
    assert records[-1]['layer_sparsity'] == {'static_fc.1.weight': 0.75, 'fc.1.weight': 0.75}
    info = json.loads((log_dir / 'run.json').read_text())
    assert (info['method'], info['run'], info['flags']['s']) == ('magnitude', name, 0.75)
    _, tags = tensorboard_tags(log_dir)
    assert {'test_acc', 'sparsity', 'layer sparsity/fc.1.weight'} <= tags['scalars']
    assert 'static_fc.1.weight-w' in tags['histograms']
    assert not any(t.endswith('-theta') for t in tags['histograms'])      # it has no hidden strength
    capsys.readouterr()
    assert mnist_main(*argv, '-test', datasets=STAND_IN) == 0
    out = capsys.readouterr().out
    assert f'run {name}, checkpoint of epoch 1' in out and 'sparsity 0.7500' in out
    assert report.main([str(tmp_path / 'runs'), '--out', str(tmp_path / 'report')]) == 0
    (row,) = csv.DictReader(open(tmp_path / 'report' / 'results.csv'))
    assert (row['method'], row['s'], row['connectivity_pct']) == ('magnitude', '0.75', '25.0')
    capsys.readouterr()
    assert sweep.main(['mnist', '--methods', 'magnitude,no_prune', '-s', '0.5,0.9', '--print']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split('mnist.py ')[1] for line in lines] == [
        '-m magnitude -s 0.5', '-m magnitude -s 0.9', '-m no_prune']


def test_a_toy_methods_own_check_is_one_line(toy_method, tmp_path, capsys):
    argv = ['-m', 'magnitude', '-s', '1.5', *SMALL, '--dump-dir', str(tmp_path / 'runs')]
    assert mnist_main(*argv, datasets=STAND_IN) == 2
    assert capsys.readouterr().err == ('mnist.py: error: -s (fraction pruned) must satisfy 0 <= s < 1 '
                                       'with -m magnitude, got 1.5\n')
    assert not (tmp_path / 'runs').exists()


def test_registering_a_method_twice_is_refused(toy_method):
    with pytest.raises(ValueError, match='registered already'):
        methods.register(toy_method)


@pytest.mark.parametrize('argv, key', [
    (['-m', 'grad', '-s', '0.9'], 'grad'), (['-m', 'deep', '-s', '0.9'], 'deep'),
    (['-m', 'deep', '-soft', '-s', '0.9'], 'soft_deep'), (['-m', 'no_prune'], 'no_prune'),
    (['-m', 'stds', '--flat-width', '2'], 'stds')])
def test_the_command_line_selects_the_record(argv, key, tmp_path):
    assert config_for(mnist.EXPERIMENT, *argv, '--dump-dir', tmp_path).method.key == key


@pytest.mark.parametrize('argv, name', [
    (['--flat-width', '2'], 'lr-1e-3-b-128-T-8-flat-2-stmod-sine-stds'),
    (['--flat-width', '0.5', '--stds-gradient', 'st', '--flat-schedule', 'linear', '--seed', '7'],
     'lr-1e-3-b-128-T-8-flat-0.5-st-linear-stds-seed-7'),
])
def test_stds_run_names_carry_width_gradient_and_schedule(argv, name, tmp_path):
    assert config_for(mnist.EXPERIMENT, '-m', 'stds', *argv, '--dump-dir', tmp_path).name == name


STDS = ['-m', 'stds', '--flat-width', '0.02', *SMALL]


def test_stds_trains_logs_its_width_and_resumes_bit_exactly(tmp_path):
    straight, resumed, raised = tmp_path / 'straight', tmp_path / 'resumed', tmp_path / 'raised'
    name = 'lr-1e-3-b-8-T-8-flat-0.02-stmod-sine-stds'
    assert mnist_main(*STDS, '-N', '2', '--dump-dir', str(straight), datasets=STAND_IN) == 0
    epoch0 = straight / 'models' / name / 'checkpoint-0.pt'
    assert mnist_main(*STDS, '-N', '2', '--dump-dir', str(resumed), '--resume-from', str(epoch0),
                      datasets=STAND_IN) == 0
    a, b = read_metrics(straight / 'logs' / name), read_metrics(resumed / 'logs' / name)
    assert strip_times(a)[1:] == strip_times(b)
    # 6 steps an epoch, 18 in all: d after epoch e is D (1 + sin(pi (6 (e + 1) / 18 - 1/2))) / 2,
    # sin(-pi/6) = -1/2, sin(pi/6) = 1/2, sin(pi/2) = 1: 0.02 * [1/4, 3/4, 1].
    assert [round(r['flat_width'], 12) for r in a] == [0.005, 0.015, 0.02]
    assert a[-1]['sparsity'] > a[0]['sparsity'] > 0
    ckpt = [torch.load(d / 'models' / name / 'checkpoint.pt', weights_only=True) for d in (straight, resumed)]
    assert ckpt[0]['optimizers']['synapse']['stds'] == {'n': 18, 'n_total': 18, 'D': 0.02, 'schedule': 'sine',
                                                       'gradient': 'stmod'}
    assert all(torch.equal(ckpt[0]['model'][k], ckpt[1]['model'][k]) for k in ckpt[0]['model'])
    _, tags = tensorboard_tags(straight / 'logs' / name)
    assert 'flat_width' in tags['scalars'] and 'static_fc.1.weight-theta' in tags['histograms']
    # Raising -N keeps the schedule of the run's start (6 steps): the added epochs train at d = D.
    assert mnist_main(*STDS, '-N', '0', '--dump-dir', str(raised), datasets=STAND_IN) == 0
    assert mnist_main(*STDS, '-N', '2', '--dump-dir', str(raised), datasets=STAND_IN) == 0
    assert [r['flat_width'] for r in read_metrics(raised / 'logs' / name)] == [0.02, 0.02, 0.02]


@pytest.mark.parametrize('argv, line', [
    (['-m', 'stds'], '--flat-width (the final dead-zone width D) must be a number > 0 with -m stds, got None'),
    (['-m', 'stds', '--flat-width', '0'], '--flat-width (the final dead-zone width D) must be a number > 0 '
                                          'with -m stds, got 0.0'),
    (['-m', 'grad', '-s', '0.9', '--flat-width', '2'], '--flat-width applies to -m stds only, got -m grad'),
    (['-m', 'stds', '--flat-width', '2', '-soft'], '-soft applies to -m deep only, got -m stds'),
    (['-m', 'stds', '--flat-width', '2', '--flat-schedule', 'cos'],
     "argument --flat-schedule: invalid choice: 'cos' (choose from 'sine', 'linear') (see --help)"),
    (['-m', 'stds', '--flat-width', '2', '--stds-gradient', 'true'],
     "argument --stds-gradient: invalid choice: 'true' (choose from 'stmod', 'st') (see --help)"),
])
def test_stds_bad_input_is_one_line_before_any_file(argv, line, tmp_path, capsys):
    try:
        status = mnist_main(*argv, '--dump-dir', str(tmp_path / 'runs'), datasets=STAND_IN)
    except SystemExit as stop:          # argparse's own errors
        status = stop.code
    assert status == 2
    assert capsys.readouterr().err == f'mnist.py: error: {line}\n'
    assert not (tmp_path / 'runs').exists()
