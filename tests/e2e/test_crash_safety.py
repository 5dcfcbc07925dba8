"""Runs that survive crashes, damaged files and mistakes (README, "Crashes and
interruptions"): damaged or foreign checkpoints, checkpoint-prev.pt, --resume-from,
independent numbered copies, the run lock, NaN/Inf stops, SIGINT/SIGTERM, failed saves,
and SIGKILLs at fixed moments (benchmarks/kill_resume.py runs many random ones)."""
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine
from engine import safety
from helpers import REPO, mnist_main, read_metrics, run_script, stand_in, strip_times, tensorboard_tags
from mnist import mnist

sys.path.insert(0, str(REPO / 'benchmarks'))
import kill_resume  # noqa: E402

MNIST = REPO / 'mnist' / 'mnist.py'
NAME = 'lr-1e-3-b-8-T-8-penalty-1e-3-s-0.95-grad'
FLAGS = ['-m', 'grad', '-s', '0.95', '-b', '8', '-i1', '1', '-i2', '3', '--workers', '0', '--device', 'cpu',
         '--no-compile']


SETS = (stand_in(32, 0, (1, 28, 28)), stand_in(16, 1, (1, 28, 28)))          # 4 steps an epoch


def train(dump, *extra, flags=FLAGS):
    return mnist_main(*flags, '--dump-dir', str(dump), *map(str, extra), datasets=SETS)


def one_line(capsys):
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def models(dump):
    return dump / 'models' / NAME


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
    """An uninterrupted run of epochs 0..3."""
    dump = tmp_path_factory.mktemp('clean')
    assert train(dump, '-N', '3') == 0
    return dump


def test_latest_and_previous_checkpoints_are_kept(clean):
    folder = models(clean)
    assert engine.load_checkpoint(folder / 'checkpoint.pt')['epoch'] == 3
    assert engine.load_checkpoint(folder / 'checkpoint-prev.pt')['epoch'] == 2
    assert not list(folder.glob('*.tmp'))
    assert (folder / 'lock').exists()


def test_numbered_checkpoints_are_independent_copies(clean, tmp_path):
    folder = models(clean)
    inodes = {os.stat(folder / f).st_ino for f in ('checkpoint.pt', 'checkpoint-prev.pt', 'checkpoint-3.pt', 'checkpoint-2.pt')}
    assert len(inodes) == 4
    copy = tmp_path / 'copy'
    copy.mkdir()
    for f in ('checkpoint.pt', 'checkpoint-3.pt'):
        (copy / f).write_bytes((folder / f).read_bytes())
    with open(copy / 'checkpoint-3.pt', 'r+b') as f:           # damage one in place
        f.truncate(1000)
    with pytest.raises(engine.CheckpointError, match='failed finding central directory'):
        engine.read_checkpoint(copy / 'checkpoint-3.pt')
    assert engine.read_checkpoint(copy / 'checkpoint.pt')['epoch'] == 3


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_truncated_latest_falls_back_to_the_previous_epoch(clean, tmp_path, capsys):
    assert train(tmp_path, '-N', '2') == 0
    folder = models(tmp_path)
    _truncate(folder / 'checkpoint.pt')
    damaged = (folder / 'checkpoint.pt').read_bytes()
    capsys.readouterr()

    # -test reads checkpoint-prev.pt instead, says so, and changes nothing.
    assert train(tmp_path, '-N', '2', '-test') == 0
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert line == (f'mnist.py: {folder / "checkpoint.pt"}: cannot be read (PytorchStreamReader failed '
                    f'reading zip archive: failed finding central directory); using '
                    f'{folder / "checkpoint-prev.pt"} (epoch 1) instead')
    assert 'checkpoint of epoch 1' in out
    assert (folder / 'checkpoint.pt').read_bytes() == damaged

    # Training resumes from epoch 1, trains epoch 2 again, and ends as the clean run.
    assert train(tmp_path, '-N', '3') == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [line]
    assert f'resuming {NAME} at epoch 2' in out
    assert (folder / 'checkpoint.pt.damaged').read_bytes() == damaged      # set aside, kept
    assert strip_times(read_metrics(tmp_path / 'logs' / NAME)) == strip_times(read_metrics(clean / 'logs' / NAME))
    a = engine.load_checkpoint(folder / 'checkpoint.pt')
    b = engine.load_checkpoint(models(clean) / 'checkpoint.pt')
    assert a['epoch'] == 3 and all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])
    assert engine.load_checkpoint(folder / 'checkpoint-prev.pt')['epoch'] == 2


@pytest.mark.parametrize('content, reason', [
    (b'this is not a checkpoint\n', 'cannot be read (not a torch.save file)'),
    ({'weights': torch.zeros(3)}, 'not a checkpoint of this engine (no model, optimizers, epoch, step, best_acc, rng)'),
    ([1, 2, 3], 'not a checkpoint (it holds a list, not a dict)'),
])
def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys, content, reason):
    assert train(tmp_path, '-N', '1') == 0
    path = models(tmp_path) / 'checkpoint.pt'
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    capsys.readouterr()
    assert train(tmp_path, '-N', '2') == 0
    line = capsys.readouterr().err.strip()
    assert line.startswith(f'mnist.py: {path}: {reason}')
    assert line.endswith(f'using {path.with_name("checkpoint-prev.pt")} (epoch 0) instead')
    assert [r['epoch'] for r in read_metrics(tmp_path / 'logs' / NAME)] == [0, 1, 2]


def test_checkpoints_of_another_method_or_network_are_refused(tmp_path, capsys):
    other = tmp_path / 'other'
    flags = ['-m', 'deep', '-s', '0.95', *FLAGS[4:]]
    assert train(other, '-N', '0', flags=flags) == 0
    foreign = other / 'models' / 'lr-1e-3-b-8-T-8-penalty-1e-3-s-0.95-deep' / 'checkpoint.pt'
    capsys.readouterr()
    dump = tmp_path / 'dump'
    assert train(dump, '-N', '0', '--resume-from', foreign) == 2
    assert one_line(capsys) == (f'mnist.py: error: --resume-from: {foreign}: made for another method '
                                f'(its synapse optimizer is not GradRewiring)')
    assert not (dump / 'logs').exists()

    assert train(dump, '-N', '0') == 0
    good = models(dump) / 'checkpoint.pt'
    ckpt = engine.load_checkpoint(good)
    ckpt['model']['fc.1.weight'] = torch.zeros(5, 5)
    wrong = tmp_path / 'wrong.pt'
    torch.save(ckpt, wrong)
    capsys.readouterr()
    assert train(dump, '-N', '1', '--resume-from', wrong) == 2
    assert one_line(capsys) == (f'mnist.py: error: --resume-from: {wrong}: made for another network '
                                f'(fc.1.weight is (5, 5), this network has (10, 800))')
    ckpt = engine.load_checkpoint(good)
    ckpt['optimizers']['synapse']['param_groups'][0]['s'] = 0.9
    torch.save(ckpt, wrong)
    assert train(dump, '-N', '1', '--resume-from', wrong) == 2
    assert one_line(capsys).endswith("made with other settings (synapse optimizer s 0.9, this run has 0.95)")


def test_neither_readable_exits_2_naming_resume_from(tmp_path, capsys):
    assert train(tmp_path, '-N', '2') == 0
    folder = models(tmp_path)
    _truncate(folder / 'checkpoint.pt')
    (folder / 'checkpoint-prev.pt').write_bytes(b'garbage')
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert train(tmp_path, '-N', '3') == 2
    line = one_line(capsys)
    assert line.startswith(f'mnist.py: error: no usable checkpoint of run {NAME}: {folder / "checkpoint.pt"}: '
                           'cannot be read (PytorchStreamReader failed reading zip archive')
    assert f'{folder / "checkpoint-prev.pt"}: cannot be read' in line
    assert line.endswith('resume from another file with --resume-from PATH (e.g. a numbered checkpoint-<epoch>.pt)')
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before        # nothing touched
    assert train(tmp_path, '-N', '3', '--resume-from', folder / 'checkpoint-1.pt') == 0
    assert [r['epoch'] for r in read_metrics(tmp_path / 'logs' / NAME)] == [0, 1, 2, 3]
    assert engine.load_checkpoint(folder / 'checkpoint-prev.pt')['epoch'] == 2
    assert train(tmp_path, '-N', '3', '-test', '--resume-from', folder / 'checkpoint-0.pt') == 0
    assert 'checkpoint of epoch 0' in capsys.readouterr().out


def test_resume_from_another_file_keeps_the_runs_own_checkpoints(tmp_path, capsys, monkeypatch):
    """Resumed from epoch 0 while the run had reached epoch 2: its first save keeps the
    run's own checkpoint.pt, checkpoint-prev.pt and numbered copy of epoch 1 as *.replaced;
    once it has saved, the resume command no longer names --resume-from."""
    assert train(tmp_path, '-N', '2') == 0                          # -i1 1: numbered copies 0, 1, 2
    folder = models(tmp_path)
    old = {name: (folder / name).read_bytes() for name in ('checkpoint.pt', 'checkpoint-prev.pt', 'checkpoint-1.pt')}
    real, calls = engine.Run.train_and_test_epoch, []

    def sigterm_in_the_second_epoch(self, *a):
        calls.append(self.epoch)
        if len(calls) == 2:
            raise safety.Interrupted(signal.SIGTERM)
        return real(self, *a)

    monkeypatch.setattr(engine.Run, 'train_and_test_epoch', sigterm_in_the_second_epoch)
    capsys.readouterr()
    resume_from = ['--resume-from', str(folder / 'checkpoint-0.pt')]
    assert train(tmp_path, '-N', '3', *resume_from) == 143
    captured = capsys.readouterr()
    for name, content in old.items():
        assert f'{folder / name} is kept as {name}.replaced' in captured.out
        assert (folder / f'{name}.replaced').read_bytes() == content
    assert engine.load_checkpoint(folder / 'checkpoint.pt')['epoch'] == 1
    assert engine.load_checkpoint(folder / 'checkpoint-prev.pt')['epoch'] == 0
    command = ' '.join(['mnist.py', *FLAGS, '--dump-dir', str(tmp_path), '-N', '3'])
    assert captured.err.strip() == (f'mnist.py: interrupted by SIGTERM; the last good checkpoint is '
                                    f'{folder / "checkpoint.pt"} (epoch 1); to resume, run the same '
                                    f'command again: {command}')


def test_without_resume_from():
    assert engine._without_resume_from(['mnist.py', '-N', '3', '--resume-from', 'a b.pt', '-s', '0.9']) \
        == ['mnist.py', '-N', '3', '-s', '0.9']
    assert engine._without_resume_from(['mnist.py', '--resume-from=x.pt', '--resume-f', 'y.pt', '-N', '1']) \
        == ['mnist.py', '-N', '1']


# ---------------------------------------------------------------- the lock

HOLD = ('import sys, time; from pathlib import Path; from engine.safety import RunLock\n'
        'lock = RunLock(Path(sys.argv[1])).acquire(); print("held", flush=True); time.sleep(120)')


def test_a_second_process_on_the_same_run_stops(tmp_path, capsys, monkeypatch):
    assert train(tmp_path, '-N', '0') == 0
    metrics = (tmp_path / 'logs' / NAME / 'metrics.jsonl').read_bytes()
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(models(tmp_path))], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        capsys.readouterr()
        with monkeypatch.context() as patch:            # it stops before the data and the model
            patch.setattr(engine, 'Run', lambda *a: pytest.fail('the run was built before the lock check'))
            assert train(tmp_path, '-N', '1') == 2
        assert one_line(capsys) == (f'mnist.py: error: run {NAME} is being trained by process {holder.pid} '
                                    f'on host {socket.gethostname()} (lock {models(tmp_path) / "lock"}); '
                                    f'wait for it to end or stop it first')
        assert (tmp_path / 'logs' / NAME / 'metrics.jsonl').read_bytes() == metrics
        assert engine.load_checkpoint(models(tmp_path) / 'checkpoint.pt')['epoch'] == 0
        assert train(tmp_path, '-N', '1', '-test') == 0                 # -test takes no lock
        assert 'checkpoint of epoch 0' in capsys.readouterr().out
    finally:
        holder.send_signal(signal.SIGKILL)                               # the OS releases the lock
        holder.wait()
    assert train(tmp_path, '-N', '1') == 0


# ---------------------------------------------------------------- NaN and Inf

def _nan_loss_at(monkeypatch, bad_step):
    real, calls = torch.nn.functional.mse_loss, [0]

    def mse_loss(*a, **kw):
        loss = real(*a, **kw)
        calls[0] += 1
        return loss * float('nan') if calls[0] - 1 == bad_step else loss

    monkeypatch.setattr(torch.nn.functional, 'mse_loss', mse_loss)


def _inf_weight_at(monkeypatch, bad_step):
    real, calls = torch.optim.Adam.step, [0]

    def step(self, *a, **kw):
        out = real(self, *a, **kw)
        if self.param_groups[0]['params'][0].dim() > 1:               # the synapse optimizer
            calls[0] += 1
            if calls[0] - 1 == bad_step:
                with torch.no_grad():
                    self.param_groups[0]['params'][0][0, 0] = float('inf')
        return out

    monkeypatch.setattr(torch.optim.Adam, 'step', step)


@pytest.mark.parametrize('inject, flags, what, bad_step', [
    (_nan_loss_at, FLAGS, 'loss', 5),             # detected at the -i2 point, step 6
    (_inf_weight_at, ['-m', 'no_prune', *FLAGS[4:]], 'weights', 7),   # at the end of epoch 1
])
def test_nan_or_inf_stops_the_run(tmp_path, capsys, monkeypatch, inject, flags, what, bad_step):
    inject(monkeypatch, bad_step)
    capsys.readouterr()
    assert train(tmp_path, '-N', '3', flags=flags) == 1
    (name,) = [p.name for p in (tmp_path / 'models').iterdir()]
    folder = tmp_path / 'models' / name
    assert one_line(capsys) == (f'mnist.py: stopped at epoch 1: the {what} became NaN or Inf at step {bad_step}; '
                                f'nothing of epoch 1 was saved; the last good checkpoint is '
                                f'{folder / "checkpoint.pt"} (epoch 0)')
    assert sorted(p.name for p in folder.glob('*.pt')) == ['checkpoint-0.pt', 'checkpoint.pt']
    ckpt = engine.load_checkpoint(folder / 'checkpoint.pt')
    assert ckpt['epoch'] == 0 and all(torch.isfinite(t).all() for t in ckpt['model'].values())
    assert [r['epoch'] for r in read_metrics(tmp_path / 'logs' / name)] == [0]
    acc, tags = tensorboard_tags(tmp_path / 'logs' / name)
    for tag in tags['histograms']:
        assert [e.step for e in acc.Histograms(tag)] == [0], tag
    losses = acc.Scalars('train/loss')
    assert [e.step for e in losses] == ([0, 3] if what == 'loss' else [0, 3, 6])
    assert all(torch.isfinite(torch.tensor(e.value)) for e in losses)


# ---------------------------------------------------------------- failed saves

def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    real = torch.save

    def disk_full_at_epoch_1(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get('epoch') == 1:
            f.write(b'partial')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, 'save', disk_full_at_epoch_1)
    capsys.readouterr()
    assert train(tmp_path, '-N', '3') == 1
    folder = models(tmp_path)
    assert one_line(capsys) == (f'mnist.py: stopped at epoch 1: cannot write {folder / "checkpoint.pt"} '
                                f'(No space left on device); the last good checkpoint is '
                                f'{folder / "checkpoint.pt"} (epoch 0)')
    assert engine.load_checkpoint(folder / 'checkpoint.pt')['epoch'] == 0
    assert engine.load_checkpoint(folder / 'checkpoint-prev.pt')['epoch'] == 0
    assert sorted(p.name for p in folder.iterdir() if p.name != 'lock') == ['checkpoint-0.pt', 'checkpoint-prev.pt',
                                                                             'checkpoint.pt']
    monkeypatch.setattr(torch, 'save', real)
    assert train(tmp_path, '-N', '1') == 0                     # epoch 1 again, as if it never ran
    assert [r['epoch'] for r in read_metrics(tmp_path / 'logs' / NAME)] == [0, 1]


def test_a_log_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / 'logs').mkdir()
    (tmp_path / 'logs' / NAME).write_text('a file where the log folder goes')
    capsys.readouterr()
    assert train(tmp_path, '-N', '1') == 1
    line = one_line(capsys)
    assert line.startswith(f"mnist.py: stopped: [Errno 17] File exists: '{tmp_path / 'logs' / NAME}'; "
                           f"there is no checkpoint yet (no epoch finished); to resume, run the same command again: ")


def test_a_failed_numbered_copy_names_the_new_checkpoint(tmp_path, capsys, monkeypatch):
    real = engine.checkpoint.atomic_copy

    def fail_copy_1(src, dst):
        if dst.name == 'checkpoint-1.pt':
            raise engine.SaveError(f'cannot write {dst} (No space left on device)')
        return real(src, dst)

    monkeypatch.setattr(engine.checkpoint, 'atomic_copy', fail_copy_1)
    capsys.readouterr()
    assert train(tmp_path, '-N', '3') == 1
    folder = models(tmp_path)
    assert one_line(capsys) == (f'mnist.py: stopped at epoch 1: cannot write {folder / "checkpoint-1.pt"} '
                                f'(No space left on device); the last good checkpoint is '
                                f'{folder / "checkpoint.pt"} (epoch 1)')
    assert engine.load_checkpoint(folder / 'checkpoint.pt')['epoch'] == 1
    assert engine.load_checkpoint(folder / 'checkpoint-prev.pt')['epoch'] == 0


# ---------------------------------------------------------------- signals and kills (real MNIST)

SUB = ['-m', 'grad', '-s', '0.95', '--train-size', '512', '--test-size', '256', '-b', '64', '-i1', '1',
       '--device', 'cpu', '--no-compile', '--data-pipeline', 'released']
SUB_NAME = 'lr-1e-3-b-64-T-8-penalty-1e-3-s-0.95-grad-train-512-test-256'
# On a machine (or a taskset) with fewer CPUs than `--workers 2`, torch's DataLoader warns about
# the worker count on stderr; these tests read stderr line by line, so that one warning is muted.
TWO_WORKERS_ENV = {'PYTHONWARNINGS': 'ignore::UserWarning:torch.utils.data.dataloader'}


def _wait_for(condition, proc, timeout=120):
    t0 = time.monotonic()
    while not condition():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def _signal_self(signum):
    os.kill(os.getpid(), signum)
    for _ in range(100):            # the handler runs at the next bytecode boundary
        time.sleep(0)


def test_guard_raises_at_once_outside_a_deferred_block_and_at_poll_points_inside():
    from engine import safety
    previous = signal.getsignal(signal.SIGINT)
    with safety.interrupts_raise():
        with pytest.raises(safety.Interrupted) as raised:
            _signal_self(signal.SIGTERM)
        assert raised.value.exit_status == 143
    with safety.interrupts_raise():
        reached = []
        with pytest.raises(safety.Interrupted) as raised:
            with safety.interrupts_deferred():
                _signal_self(signal.SIGINT)
                reached.append('after the signal')       # noted, not raised
                with safety.interrupts_deferred():       # a save inside the epoch completes
                    reached.append('nested block')
                reached.append('after the nested block')
                safety.poll_interrupted()
                reached.append('after the poll')
        assert reached == ['after the signal', 'nested block', 'after the nested block']
        assert raised.value.exit_status == 130
    with safety.interrupts_raise():
        with pytest.raises(safety.Interrupted) as raised:   # raised when the block ends
            with safety.interrupts_deferred():
                _signal_self(signal.SIGINT)
        assert raised.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is previous      # the handlers come back


def test_guard_a_second_signal_raises_inside_a_deferred_block_and_an_error_after_a_signal_is_the_interrupt():
    from engine import safety
    with safety.interrupts_raise():
        reached = []
        with pytest.raises(safety.Interrupted) as raised:
            with safety.interrupts_deferred():
                _signal_self(signal.SIGTERM)
                reached.append('first')
                _signal_self(signal.SIGINT)
                reached.append('second')
        assert reached == ['first'] and raised.value.signum == signal.SIGTERM
    with safety.interrupts_raise():
        with pytest.raises(safety.Interrupted) as raised:
            with safety.interrupts_deferred():
                _signal_self(signal.SIGINT)
                raise RuntimeError('DataLoader worker (pid 1) is killed by signal: Interrupt.')
        assert isinstance(raised.value.__cause__, RuntimeError)
    with safety.interrupts_raise():
        with pytest.raises(ValueError):                     # no signal: the error itself
            with safety.interrupts_deferred():
                raise ValueError('x')


def test_guard_forked_children_leave_the_process_group_and_ignore_sigint_until_then():
    from engine import safety
    read, write = os.pipe()
    with safety.interrupts_raise():
        pid = os.fork()
        if pid == 0:                                         # the child: a data-loader worker
            try:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)   # ignored, no exception
                os.write(write, f'{os.getpgrp()} {os.getpid()}'.encode())
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    group, child = map(int, os.read(read, 64).split())
    os.close(read), os.close(write)
    assert os.waitstatus_to_exitcode(status) == 0
    assert group == child != os.getpgrp()
    parent_group = os.getpgrp()
    pid = os.fork()                                          # without a guard: the group stays
    if pid == 0:
        os._exit(0 if os.getpgrp() == parent_group else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.parametrize('signum, status, workers, where', [
    (signal.SIGINT, 130, '2', 'step'),       # to the process group, workers too, as Ctrl-C
    (signal.SIGTERM, 143, '0', 'save'),      # inside a save: the save completes first
])
def test_sigint_and_sigterm_end_the_run_cleanly(tmp_path, signum, status, workers, where):
    argv = [*SUB, '-N', '40', '--workers', workers, '--dump-dir', str(tmp_path)]
    env = {**os.environ, **TWO_WORKERS_ENV, 'PYTHONUNBUFFERED': '1',
           'GRADREWIRE_TEST_SAVE_PAUSE': '1.0' if where == 'save' else ''}
    proc = subprocess.Popen([sys.executable, str(MNIST), *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    folder = tmp_path / 'models' / SUB_NAME
    if where == 'save':
        _wait_for(lambda: any(folder.glob('checkpoint-1.pt.tmp')) or (folder / 'checkpoint-2.pt').exists(), proc)
        os.kill(proc.pid, signum)
    else:
        assert proc.stdout.readline().startswith('run ')
        assert proc.stdout.readline().startswith('epoch 0:')
        time.sleep(0.3)                                           # inside epoch 1's steps
        os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert 'Traceback' not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    (line,) = lines
    ckpt = engine.load_checkpoint(folder / 'checkpoint.pt')
    name = signal.Signals(signum).name
    assert line.startswith(f'mnist.py: interrupted by {name}; the last good checkpoint is '
                           f'{folder / "checkpoint.pt"} (epoch {ckpt["epoch"]}); to resume, run the same command again: ')
    assert line.endswith('mnist.py ' + ' '.join(argv))
    assert not list(folder.glob('*.tmp'))
    if where == 'save':
        assert engine.load_checkpoint(folder / 'checkpoint-1.pt')['epoch'] == 1    # the save completed
    assert len(read_metrics(tmp_path / 'logs' / SUB_NAME)) >= ckpt['epoch'] + 1
    done = run_script(MNIST, *argv[:-6], '-N', str(ckpt['epoch'] + 1), *argv[-4:])
    assert done.returncode == 0, done.stderr
    assert f'at epoch {ckpt["epoch"] + 1}' in done.stdout
    assert [r['epoch'] for r in read_metrics(tmp_path / 'logs' / SUB_NAME)] == list(range(ckpt['epoch'] + 2))


def test_worker_death_reads_the_loaders_error():
    def loader_error(how):
        return RuntimeError(f'DataLoader worker (pid 4242) {how}')
    assert safety.worker_death(loader_error('is killed by signal: Interrupt. ')) == 'Interrupt'
    assert safety.worker_death(loader_error('is killed by signal: Killed. ')) == 'Killed'
    assert safety.worker_death(RuntimeError('DataLoader worker (pid(s) 4242) exited unexpectedly')) \
        == 'exited unexpectedly'
    assert safety.worker_death(RuntimeError('CUDA out of memory')) is None
    assert safety.worker_death(ValueError('DataLoader worker (pid 1) is killed by signal: Killed.')) is None
    assert safety.interrupt_of(signal.strsignal(signal.SIGINT)) == signal.SIGINT
    assert safety.interrupt_of(signal.strsignal(signal.SIGTERM)) == signal.SIGTERM
    assert safety.interrupt_of('Killed') is None and safety.interrupt_of(None) is None


def test_a_worker_killed_on_its_own_stops_the_run_with_status_1(tmp_path):
    """SIGKILL to one data-loader worker (as the OOM killer sends): not an interrupt, a
    crash (status 1), in one line that names the checkpoint kept and the command that resumes."""
    argv = [*SUB, '-N', '40', '--workers', '2', '--dump-dir', str(tmp_path)]
    proc = subprocess.Popen([sys.executable, str(MNIST), *argv], cwd=REPO, text=True,
                            env={**os.environ, **TWO_WORKERS_ENV, 'PYTHONUNBUFFERED': '1'},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith('run ')
        assert proc.stdout.readline().startswith('epoch 0:')
        children = Path('/proc') / str(proc.pid) / 'task' / str(proc.pid) / 'children'
        _wait_for(lambda: len(children.read_text().split()) == 2, proc)   # epoch 1's workers
        os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err
    (line,) = err.strip().splitlines()
    folder = tmp_path / 'models' / SUB_NAME
    epoch = engine.load_checkpoint(folder / 'checkpoint.pt')['epoch']
    # The loader sees the death either through SIGCHLD (the signal's name) or as a worker
    # that is gone while it waits for a batch.
    how = line[len('mnist.py: a data-loader worker died ('):line.index(');')]
    assert how in ('Killed', 'exited unexpectedly'), line
    assert line == (f'mnist.py: a data-loader worker died ({how}); the last good checkpoint is '
                    f'{folder / "checkpoint.pt"} (epoch {epoch}); to resume, run the same command again: '
                    f'python {MNIST} ' + ' '.join(argv))                     # as typed: python, the path


def test_sigkill_at_fixed_moments_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Three SIGKILLs of the benchmark's run, each placed by what the run is doing, not by the
    clock: inside training step 3, inside epoch 0's save, inside step 40 of the resumed run
    (epoch 2: 16 steps an epoch); then a run to the end: equal to an uninterrupted run."""
    flags = [*kill_resume.FLAGS]
    flags[flags.index('-N') + 1] = '2'
    kill_resume.run_to_end(tmp_path / 'reference', 0.0, flags)
    moments = [('step', 3), ('save', 0.5), ('step', 40)]
    landed = kill_resume.interrupted_run(tmp_path / 'killed', moments, 0.5, flags)
    assert landed == ['training', 'save', 'training']
    assert kill_resume.same_result(tmp_path / 'reference', tmp_path / 'killed')
