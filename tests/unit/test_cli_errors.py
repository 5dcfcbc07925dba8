"""Bad input on the command line: one line on stderr naming the flag, exit status 2, no file
written; checked in-process (tests/e2e/test_cli.py runs the real script)."""
import pytest

from helpers import mnist_main


def main_status(argv) -> int:
    """``engine.main`` on MNIST as the script runs it; argparse's own errors exit."""
    try:
        return mnist_main(*argv)
    except SystemExit as stop:
        return stop.code


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
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words, capsys):
    dump, data = tmp_path / 'dump', tmp_path / 'data'
    assert main_status([*args, '--dump-dir', dump, '--dataset-dir', data]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('mnist.py: error: ')
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert out == ''
    assert not dump.exists() and not data.exists()


@pytest.mark.parametrize('flag', ['--dump-dir', '--dataset-dir'])
def test_unusable_folders_are_one_line(tmp_path, flag, capsys):
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('not a folder')
    other = '--dataset-dir' if flag == '--dump-dir' else '--dump-dir'
    for value, words in ((a_file / 'runs', ['is a file, not a folder']), ('', ['a folder path is needed'])):
        assert main_status(['-m', 'grad', '-s', '0.95', flag, value, other, tmp_path / 'other']) == 2
        out, err = capsys.readouterr()
        (line,) = err.strip().splitlines()
        assert line.startswith('mnist.py: error: ') and flag in line
        assert all(w in line for w in words), line
        assert out == '' and sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']
