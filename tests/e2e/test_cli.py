"""The command line: help, and bad input reported in one line before any work or file."""
import pytest

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


@pytest.mark.parametrize('flag', ['--dump-dir', '--dataset-dir'])
def test_unusable_folders_are_one_line(tmp_path, flag):
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('not a folder')
    other = '--dataset-dir' if flag == '--dump-dir' else '--dump-dir'
    for value, words in ((a_file / 'runs', ['is a file, not a folder']), ('', ['a folder path is needed'])):
        done = run_script(MNIST, '-m', 'grad', '-s', '0.95', flag, value, other, tmp_path / 'other')
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith('mnist.py: error: ') and flag in line
        assert all(w in line for w in words), line
        assert done.stdout == '' and sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_the_script_itself_reports_bad_input_in_one_line(tmp_path):
    done = run_script(MNIST, '-m', 'grad', '--dump-dir', tmp_path / 'dump', '--dataset-dir', tmp_path / 'data')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('mnist.py: error: -s (target sparsity) is required with -m grad; '
                           'allowed: 0.5 <= s < 1\n')
    assert sorted(tmp_path.iterdir()) == []
