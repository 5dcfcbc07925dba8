"""The GPU check's plumbing, without a GPU and without training: benchmarks/gpu_check.sh's
command line and its setup failure, and how benchmarks/sync_check.py sorts the host
synchronisations it is told about."""
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from helpers import REPO  # noqa: E402

sys.path.insert(0, str(REPO / 'benchmarks'))

import sync_check  # noqa: E402

SYNC = 'called a synchronizing CUDA operation'


@pytest.mark.parametrize('script', ['gpu_check.sh', 'gpu_prepare.sh'])
def test_scripts_parse(script):
    done = subprocess.run(['bash', '-n', str(REPO / 'benchmarks' / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_help_lists_every_part():
    done = subprocess.run(['bash', 'benchmarks/gpu_check.sh', '--help'], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0
    for part in ('setup', 'a ', 'b ', 'c ', 'd ', 'e ', 'f ', 'g '):
        assert f'\n  {part}' in done.stdout, part


@pytest.mark.parametrize('argv, message', [
    (['--bogus'], 'unknown argument: --bogus'),
    (['--device', 'tpu'], '--device must be cuda or cpu, got tpu'),
    (['--budget', '9m'], '--budget must be whole seconds, got 9m'),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, message):
    done = subprocess.run(['bash', 'benchmarks/gpu_check.sh', *argv], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f'gpu_check.sh: {message}' + (' (see --help)' if 'unknown' in message else '')]
    assert done.stdout == ''


def test_without_staged_files_setup_fails_and_nothing_else_runs(tmp_path):
    (tmp_path / 'benchmarks').mkdir()
    shutil.copy(REPO / 'benchmarks' / 'gpu_check.sh', tmp_path / 'benchmarks')
    out = tmp_path / 'out'
    done = subprocess.run(['bash', 'benchmarks/gpu_check.sh', '--device', 'cpu'], cwd=tmp_path, capture_output=True,
                          text=True, env={'PATH': '/usr/bin:/bin', 'OUT': str(out),
                                          'GPU_CHECK_DIR': str(tmp_path / 'work')}, timeout=60)
    assert done.returncode == 1
    assert 'no .gpu/ here: run bash benchmarks/gpu_prepare.sh first' in done.stdout
    assert '== setup: FAIL (exit 1)' in done.stdout
    assert '== a.' not in done.stdout
    assert (out / 'gpu_check.log').read_text() == done.stdout


def test_sync_check_sorts_syncs_by_phase_and_counts_only_unexpected_ones():
    phase, found = [sync_check.PHASES[0]], []
    with sync_check.capture(phase, found):
        warnings.warn(SYNC)                       # before training: expected
        for k in (0, 1, 10, 3):
            phase[0] = ('step', k)
            warnings.warn(SYNC)
        phase[0] = sync_check.PHASES[2]
        warnings.warn(SYNC)
    lines, unexpected = sync_check.summary(found, steps=12, i2=10)
    assert unexpected == 2                        # steps 1 and 3; 0 and 10 log (-i2 10)
    labels = [line.split(':')[0].split(' x ')[1] for line in lines[:-1]]
    assert labels == ['before training', 'step 0 (logging step)', 'step 1 UNEXPECTED', 'step 3 UNEXPECTED',
                      'step 10 (logging step)', 'end of training']
    assert 'tests/e2e/test_gpu_check.py:' in lines[0]  # the place: this file's line
    assert lines[-1].startswith('sync check: 6 host synchronisations in all, 2 at steps')


def test_sync_check_shows_other_warnings_and_skips_compile_time_syncs(monkeypatch):
    phase, found = [('step', 5)], []
    monkeypatch.setattr(sync_check, 'COMPILING', (Path(__file__).name,))   # "compiling" = called from here
    with pytest.warns(UserWarning, match='something else') as shown:
        with sync_check.capture(phase, found):
            warnings.warn(SYNC)
            warnings.warn('something else')
    assert len(shown) == 1                        # the sync went to the list, not to the warnings
    assert [(p, compiling) for p, compiling, _ in found] == [(('step', 5), True)]
    lines, unexpected = sync_check.summary(found, steps=6, i2=1024)
    assert unexpected == 0 and 'while compiling (not counted)' in lines[0]
