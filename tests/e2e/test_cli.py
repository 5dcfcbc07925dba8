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


@pytest.mark.parametrize('args, words', [
    (['-m', 'grad'], ['-s', 'required', '0.5 <= s < 1']),
    (['-m', 'grad', '-s', '0.3'], ['-m grad -s: s (target sparsity)', '0.5 <= s < 1', '0.3']),
    (['-m', 'grad', '-s', '1'], ['-m grad -s: s (target sparsity)', '0.5 <= s < 1', '1']),
    (['-m', 'deep'], ['-s', 'required', '0 <= s <= 1']),
    (['-m', 'deep', '-s', '1.5'], ['-m deep -s: max_s', '0 <= max_s <= 1', '1.5']),
    (['-m', 'grad', '-s', '0.9', '-penalty', '-1'], ['-penalty', '>= 0', '-1']),
    (['-m', 'no_prune', '-lr', '-0.1'], ['-lr', '> 0', '-0.1']),
    (['-m', 'grad', '-s', '0.95', '-T', '0'], ['-T', '>= 1', '0']),
    (['-m', 'grad', '-s', '0.95', '--train-size', '100'], ['--train-size 100', 'smaller than one batch', '-b 128']),
    (['-m', 'grad', '-soft', '-s', '0.95'], ['-soft', '-m deep']),
    (['-m', 'grad', '-s', '0.95', '-test'], ['-test', 'no checkpoint', 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad']),
    (['-m', 'prune'], ['-m', 'invalid choice']),
    (['--bogus'], ['unrecognized arguments', '--bogus']),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    dump, data = tmp_path / 'dump', tmp_path / 'data'
    done = run_script(MNIST, *args, '--dump-dir', dump, '--dataset-dir', data)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith('mnist.py: error: ')
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert 'Traceback' not in done.stderr and done.stdout == ''
    assert not dump.exists() and not data.exists()


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
