"""sweep.py: the grid it lists, the configuration it picks, resuming, failures, bad input."""
import json
import os
import shlex
import sys

import pytest

import sweep
from helpers import REPO, read_metrics, run_script

SWEEP = REPO / 'sweep.py'
MNIST = [sys.executable, str(REPO / 'mnist' / 'mnist.py')]
TINY = ['--train-size', '512', '--test-size', '256', '-N', '0', '-i1', '1', '--workers', '0', '--no-compile',
        '--device', 'cpu']


def _commands(stdout):
    return [shlex.split(line) for line in stdout.splitlines()]


def _sweep(capsys, *args):
    """``sweep.main(args)`` in this process: ``(status, stdout, stderr)``. What the script
    adds around it (``sys.exit`` of the status) is checked by the tests that run it as a
    user would (test_too_many_jobs_..., test_failed_configuration_..., test_stopped_...)."""
    capsys.readouterr()
    status = sweep.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_print_lists_the_grid_in_order(capsys):
    status, out, err = _sweep(capsys, 'mnist', '--methods', 'grad,soft,no_prune', '--penalties', '1e-4,5e-4',
                              '-s', '0.95', '-N', '3', '--dump-dir', 'out dir', '--print')
    assert status == 0, err
    tail = ['--dump-dir', 'out dir', '-N', '3']
    assert _commands(out) == [
        MNIST + ['-m', 'grad', '-penalty', '1e-4', '-s', '0.95'] + tail,
        MNIST + ['-m', 'grad', '-penalty', '5e-4', '-s', '0.95'] + tail,
        MNIST + ['-m', 'deep', '-soft', '-penalty', '1e-4', '-s', '0.95'] + tail,
        MNIST + ['-m', 'deep', '-soft', '-penalty', '5e-4', '-s', '0.95'] + tail,
        MNIST + ['-m', 'no_prune'] + tail]


@pytest.mark.parametrize('index, expected', [
    (0, ['-m', 'deep', '-penalty', '1e-3', '-s', '0.9']),
    (1, ['-m', 'deep', '-penalty', '1e-3', '-s', '0.95']),
    (2, ['-m', 'no_prune'])])
def test_task_index_picks_one_configuration(capsys, index, expected):
    status, out, err = _sweep(capsys, 'c10', '--methods', 'deep,no_prune', '-s', '0.9,0.95', '-lr', '1e-4',
                              '--task-index', index, '--print')
    assert status == 0, err
    assert _commands(out) == [[sys.executable, str(REPO / 'c10' / 'c10.py'), *expected, '-lr', '1e-4']]


def test_gpu_workers_share_the_queue(capfd):
    configs = [(f'c{i}', [sys.executable, '-c', 'import sys; sys.exit(sys.argv[-1] == "cuda:9" and 3)'])
               for i in range(5)]
    failed = sweep.run_all(configs, [['--device', 'cuda:7'], ['--device', 'cuda:9']])
    out = capfd.readouterr().out.splitlines()
    assert len(out) == 5 and {line.split()[-1] for line in out} == {'cuda:7', 'cuda:9'}
    assert failed == sorted(failed) and len(failed) == sum(line.endswith('cuda:9') for line in out)
    assert all('failed with exit status 3' in line for line in failed)


def test_stopped_sweep_resumes_and_reports(tmp_path, monkeypatch, capfd):
    """Run from outside the repository with a relative --dump-dir, as a user would (the
    first time as the script, then ``sweep.main`` in this process, from the same folder;
    the training runs are the sweep's own subprocesses either way); the sweep stopped after
    its first configuration and halfway through its second."""
    grid = ['mnist', '--methods', 'no_prune,grad', '-s', '0.95', '--dump-dir', 'sweep out', *TINY, '-N', '1']
    first = run_script(SWEEP, *grid, '--task-index', '0', cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    monkeypatch.chdir(tmp_path)
    assert sweep.main([*grid, '--task-index', '1', '-N', '0']) == 0, capfd.readouterr()   # epoch 0 of 0..1
    dump = tmp_path / 'sweep out'
    assert not (dump / 'report').exists()                          # no report for one task
    plain = dump / 'logs' / 'lr-1e-3-b-128-T-8-no_prune-train-512-test-256'
    before = (plain / 'metrics.jsonl').read_text()
    capfd.readouterr()
    status = sweep.main(grid)
    out, err = capfd.readouterr()
    assert status == 0, err
    assert 'no_prune-train-512-test-256: epochs 0..1 are done' in out
    assert (plain / 'metrics.jsonl').read_text() == before         # not retrained
    assert 'resuming lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-train-512-test-256 at epoch 1' in out
    grad = dump / 'logs' / 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-train-512-test-256'
    assert [r['epoch'] for r in read_metrics(grad)] == [0, 1]
    assert len((dump / 'report' / 'results.csv').read_text().splitlines()) == 3
    assert not (REPO / 'sweep out').exists()


def test_failed_configuration_is_named(tmp_path):
    done = run_script(SWEEP, 'mnist', '--methods', 'no_prune,grad', '-s', '0.3', '--dump-dir', tmp_path,
                      *TINY, '-N', '-1')
    assert done.returncode == 1
    failures = [line for line in done.stderr.splitlines() if line.startswith('sweep.py: configuration')]
    assert failures == ['sweep.py: configuration 0 (no_prune) failed with exit status 2',
                        'sweep.py: configuration 1 (grad penalty 1e-3 s 0.3) failed with exit status 2']


@pytest.mark.parametrize('args, message', [
    (['mnist', '--methods', 'grad,hard', '-s', '0.9'], "unknown method 'hard'"),
    (['mnist', '--penalties', '1e-3,x', '-s', '0.9'], "'x' is not a number"),
    (['mnist', '--penalties', '1e-3,-2e-3', '-s', '0.9'], '-2e-3 is outside'),
    (['mnist', '--penalties=', '-s', '0.9'], "--penalties: empty item in ''"),
    (['mnist', '-s', 'high'], "'high' is not a number"),
    (['mnist', '--methods', 'grad'], '-s (target sparsity) is required'),
    (['svhn', '-s', '0.9'], "invalid choice: 'svhn'"),
    (['mnist', '-s', '0.9', '--task-index', '4'], 'the grid has 4 configurations'),
    (['mnist', '-s', '0.9', '--task-index', '-1', '--print'], 'the grid has 4'),
    (['mnist', '-s', '0.9', '-soft'], '-soft is set by the sweep'),
    (['mnist', '-s', '0.9', '-penalty', '1e-3'], '-penalty is set by the sweep'),
    (['mnist', '-s', '0.9', '--gpus', '0,x'], '--gpus: not a comma list'),
    (['mnist', '-s', '0.9', '--gpus', '0', '--device', 'cpu'], '--device conflicts with --gpus'),
    (['mnist', '-s', '0.9', '--gpus', '0', '--print'], 'does not go with --print'),
    (['mnist', '--methods', 'stds', '--flat-widths', '0.5,0'], '--flat-widths: 0 is outside (0, inf]'),
    (['mnist', '--methods', 'stds', '--flat-widths', '-1'], '--flat-widths: -1 is outside (0, inf]'),
    (['mnist', '--methods', 'stds'], '--flat-widths (final dead-zone widths D) is required with stds'),
    (['mnist', '--methods', 'grad,stds', '-s', '0.9', '--flat-widths', '1', '--stds-gradient', 'st'],
     '--stds-gradient is passed to every configuration, but grad does not take it'),
    (['mnist', '--methods', 'grad,deep', '-s', '0.9', '--flat-widths', '0.2'],
     '--flat-widths: no method in --methods grad,deep takes --flat-width (methods that do: stds)'),
    (['mnist', '--methods', 'no_prune', '-s', '0.9'],
     '-s: no method in --methods no_prune takes -s (methods that do: grad, deep, soft)'),
    (['mnist', '--methods', 'stds', '--flat-widths', '1', '--penalties', '1e-2'],
     '--penalties: no method in --methods stds takes -penalty (methods that do: grad, deep, soft)'),
])
def test_bad_input_one_line_exit_2(capsys, args, message):
    status, out, err = _sweep(capsys, *args)
    assert status == 2 and out == ''
    assert len(err.splitlines()) == 1 and message in err


def test_stds_widths_are_a_grid_axis(capsys):
    """--flat-widths is STDS's axis; its own flags pass on to each of its configurations."""
    status, out, err = _sweep(capsys, 'mnist', '--methods', 'stds', '--flat-widths', '0.2,1.6',
                              '--stds-gradient', 'st', '--print')
    assert status == 0, err
    assert [line.split('mnist.py ', 1)[1] for line in out.splitlines()] == [
        '-m stds --flat-width 0.2 --stds-gradient st', '-m stds --flat-width 1.6 --stds-gradient st']


# ---------------------------------------------------------------- --jobs: configurations at a time on the CPU

@pytest.mark.parametrize('args, message', [
    (['--jobs', '0'], '--jobs 0: give 1 to 4 '),
    (['--jobs', '-1'], '--jobs -1: give 1 to 4 '),
    (['--jobs', '5'], '--jobs 5: give 1 to 4 (configurations at a time; this machine has 4 CPU cores'),
    (['--jobs', 'two'], "argument --jobs: invalid int value: 'two'"),
    (['--jobs', '2', '--gpus', '0,1'], '--jobs does not go with --gpus'),
    (['--jobs', '2', '--print'], '--jobs runs the sweep here; it does not go with --print'),
    (['--jobs', '2', '--task-index', '0'], 'does not go with --print or --task-index'),
])
def test_jobs_bad_input_is_refused(monkeypatch, args, message):
    monkeypatch.setattr(sweep, 'cpu_cores', lambda: 4)
    with pytest.raises(sweep.SweepError) as err:
        sweep.parse(['mnist', '-s', '0.9', *args])
    assert message in str(err.value) and '\n' not in str(err.value)


def test_too_many_jobs_one_line_exit_2_nothing_started(tmp_path):
    cores = len(os.sched_getaffinity(0))
    done = run_script(SWEEP, 'mnist', '-s', '0.9', '--jobs', cores + 1, '--dump-dir', tmp_path / 'runs')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == f'sweep.py: error: --jobs {cores + 1}: give 1 to {cores} (configurations at a time; ' \
                          f'this machine has {cores} CPU cores for them to share)\n'
    assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('jobs, passed_on, n_configs, expected', [
    (None, [], 4, [[]]),                                         # no --jobs: one at a time, as before
    (1, [], 4, [[]]),                                            # the script's own thread split
    (2, [], 4, [['--threads', '2']] * 2),
    (3, [], 4, [['--threads', '1']] * 3),                        # 4 // 3
    (4, [], 2, [['--threads', '2']] * 2),                        # no core kept for a worker without work
    (4, [], 1, [[]]),
    (2, ['--threads', '1'], 4, [[]] * 2),                        # the user's --threads stands
    (2, ['--threads=3'], 4, [[]] * 2),
    (2, ['--thread', '1'], 4, [[]] * 2),                         # an abbreviation the script takes
    (2, ['--test-size', '256'], 4, [['--threads', '2']] * 2),
])
def test_jobs_split_the_cores(monkeypatch, jobs, passed_on, n_configs, expected):
    monkeypatch.setattr(sweep, 'cpu_cores', lambda: 4)
    argv = ['mnist', '-s', '0.9', *passed_on] + (['--jobs', str(jobs)] if jobs is not None else [])
    args, rest = sweep.parse(argv)
    assert rest == passed_on
    assert sweep.worker_flags(args, rest, n_configs) == expected


FAKE_SCRIPT = '''\
"""Stands in for mnist.py: records its argv and the most of its kind it saw running at once,
and waits (up to 60 s) until two have started, so that a sweep that runs them one after the
other fails (exit status 3)."""
import json, os, sys, time
from pathlib import Path
folder, pid = Path(os.environ['FAKE_SWEEP_DIR']), os.getpid()
(folder / f'running-{pid}').touch()
(folder / f'started-{pid}').touch()
deadline = time.monotonic() + 60
while len(list(folder.glob('started-*'))) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
at_once = len(list(folder.glob('running-*')))
(folder / f'argv-{pid}.json').write_text(json.dumps({'argv': sys.argv[1:], 'at_once': at_once}))
(folder / f'running-{pid}').unlink()
sys.exit(0 if len(list(folder.glob('started-*'))) >= 2 else 3)
'''


def test_jobs_run_configurations_at_once_with_their_share_of_threads(tmp_path, monkeypatch, capfd):
    """--jobs 2 on 4 cores: two configurations at a time (never three), each given
    --threads 2, all four run, then the report reads the dump folder."""
    import report
    fake = tmp_path / 'fake_mnist.py'
    fake.write_text(FAKE_SCRIPT)
    folder = tmp_path / 'seen'
    folder.mkdir()
    monkeypatch.setenv('FAKE_SWEEP_DIR', str(folder))
    monkeypatch.setitem(sweep.SCRIPTS, 'mnist', fake)
    monkeypatch.setattr(sweep, 'cpu_cores', lambda: 4)
    reports = []
    monkeypatch.setattr(report, 'main', lambda argv: reports.append(argv) or 0)
    status = sweep.main(['mnist', '--methods', 'grad,deep,soft,no_prune', '-s', '0.95', '--dump-dir',
                         str(tmp_path / 'runs'), '-N', '1', '--jobs', '2'])
    assert status == 0, capfd.readouterr()
    runs = [json.loads(f.read_text()) for f in folder.glob('argv-*.json')]
    assert sorted(r['argv'][:r['argv'].index('--dump-dir')] for r in runs) == sorted([
        ['-m', 'grad', '-penalty', '1e-3', '-s', '0.95'], ['-m', 'deep', '-penalty', '1e-3', '-s', '0.95'],
        ['-m', 'deep', '-soft', '-penalty', '1e-3', '-s', '0.95'], ['-m', 'no_prune']])
    assert all(r['argv'][-5:] == [str(tmp_path / 'runs'), '-N', '1', '--threads', '2'] for r in runs)
    assert max(r['at_once'] for r in runs) == 2
    assert reports == [[str(tmp_path / 'runs')]]
    assert len([line for line in capfd.readouterr().out.splitlines() if line.startswith('sweep.py: [')]) == 4
