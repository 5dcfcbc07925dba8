"""The command line as a user runs the script: help, and bad input reported in one line before
any work or file (tests/unit/test_cli_errors.py checks the other cases in-process)."""
from helpers import REPO, run_script

MNIST = REPO / 'mnist' / 'mnist.py'


def test_help_lists_every_flag():
    done = run_script(MNIST, '--help')
    assert done.returncode == 0
    for flag in ('-b', '-lr', '-penalty', '-s', '-gpu', '--dataset-dir', '--dump-dir', '-T', '-N',
                 '-m', '-soft', '-test', '-i1', '-i2', '--seed', '--device', '--workers',
                 '--deepr-regrowth'):
        assert f' {flag} ' in done.stdout or f'[{flag} ' in done.stdout or f'[{flag}]' in done.stdout, flag
    assert 'default: 128' in done.stdout and 'default: 0.001' in done.stdout   # -b, -lr of MNIST


def test_runs_from_inside_the_folder():
    done = run_script('mnist.py', '--help', cwd=REPO / 'mnist')
    assert done.returncode == 0 and 'usage: mnist.py' in done.stdout


def test_the_script_itself_reports_bad_input_in_one_line(tmp_path):
    done = run_script(MNIST, '-m', 'grad', '--dump-dir', tmp_path / 'dump', '--dataset-dir', tmp_path / 'data')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('mnist.py: error: -s (target sparsity) is required with -m grad; '
                           'allowed: 0.5 <= s < 1\n')
    assert sorted(tmp_path.iterdir()) == []
