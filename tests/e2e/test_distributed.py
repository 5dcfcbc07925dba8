"""One run on several processes under torchrun (engine/distributed.py): CPU, gloo, two
processes against one (README, "Several GPUs or machines")."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import engine
from c10.model import CIFAR10SNN
from ddp_launch import syncbn_inputs, train_twice
from engine import distributed
from engine.distributed import Ranks
from helpers import REPO, ensure_real_mnist, mnist_main, read_metrics, run_script
from snn import StepwiseBatchNorm2d, StepwiseSyncBatchNorm2d, convert_sync_batchnorm, synapses

LAUNCH = REPO / 'tests' / 'ddp_launch.py'
MNIST = REPO / 'mnist' / 'mnist.py'
FAST = ['--no-compile', '--device', 'cpu', '--test-size', '512', '--threads', '1']
"""``--threads 1``: under torchrun a process takes its share of the cores, not OMP_NUM_THREADS; beside
the other pytest-xdist workers one thread each is the share."""


def torchrun(script, *args, nproc=2, timeout=600):
    """``python -m torch.distributed.run --standalone --nproc_per_node nproc script args``."""
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node', str(nproc), str(script), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(autouse=True)
def real_mnist():
    ensure_real_mnist()


def _only_run(dump, kind):
    (path,) = (dump / kind).iterdir()
    return path


def _weights(dump):
    ckpt = torch.load(_only_run(dump, 'models') / 'checkpoint.pt', map_location='cpu', weights_only=True)
    return {k: v for k, v in ckpt['model'].items() if v.dim() > 1}


def _ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def one_process(*argv):
    """The one-process reference run, ``engine.main`` of mnist.py in this process (the
    script's own one-process runs are those of the other tests)."""
    assert mnist_main(*argv) == 0


METHODS = {'grad': ['-m', 'grad', '-s', '0.95'], 'deep': ['-m', 'deep', '-s', '0.95']}


@pytest.mark.parametrize('method', sorted(METHODS))
def test_first_step_of_two_processes_is_that_of_one(method, tmp_path):
    """-b 128 on 128 samples: exactly one step; the synapses agree per tensor."""
    argv = [*METHODS[method], '-N', '0', '--train-size', '128', *FAST]
    one_process(*argv, '--dump-dir', tmp_path / 'one')
    two = _ok(torchrun(MNIST, *argv, '--dump-dir', tmp_path / 'two'))
    assert two.stdout.count('epoch 0: test_acc') == 1             # rank 0's console line only
    one, two = _weights(tmp_path / 'one'), _weights(tmp_path / 'two')
    assert one.keys() == two.keys()
    for name in one:
        rel = float((one[name] - two[name]).norm() / one[name].norm())
        assert rel < 1e-5, (name, rel)


@pytest.mark.parametrize('method', sorted(METHODS))
def test_one_epoch_of_two_processes_is_that_of_one(method, tmp_path):
    argv = [*METHODS[method], '-N', '0', '--train-size', '2048', *FAST]
    one_process(*argv, '--dump-dir', tmp_path / 'one')
    _ok(torchrun(MNIST, *argv, '--dump-dir', tmp_path / 'two'))
    (one,), (two,) = (read_metrics(_only_run(tmp_path / d, 'logs')) for d in ('one', 'two'))
    assert (one['world_size'], two['world_size']) == (1, 2)
    assert one['step'] == two['step'] == 16
    assert abs(one['sparsity'] - two['sparsity']) < 1e-3
    assert abs(one['test_acc'] - two['test_acc']) < 5e-3
    assert [p[0] for p in one['train']] == [p[0] for p in two['train']] == [0]


def test_a_run_of_two_processes_resumes_with_one_and_again_with_two(tmp_path):
    argv = ['-m', 'grad', '-s', '0.95', '--train-size', '256', *FAST, '--dump-dir', tmp_path]
    _ok(torchrun(MNIST, *argv, '-N', '0'))
    one = _ok(run_script(MNIST, *argv, '-N', '1'))
    assert 'resuming lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-train-256-test-512 at epoch 1' in one.stdout
    _ok(torchrun(MNIST, *argv, '-N', '2'))
    records = read_metrics(_only_run(tmp_path, 'logs'))
    assert [(r['epoch'], r['step'], r['world_size']) for r in records] == [(0, 2, 2), (1, 4, 1), (2, 6, 2)]
    assert sorted(p.name for p in _only_run(tmp_path, 'models').iterdir()) == [
        'checkpoint-0.pt', 'checkpoint-prev.pt', 'checkpoint.pt', 'lock']


def test_a_batch_that_the_processes_do_not_divide_is_one_line_and_status_2(tmp_path):
    done = torchrun(MNIST, '-m', 'grad', '-s', '0.95', '-b', '127', *FAST, '--dump-dir', tmp_path / 'dump')
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith('mnist.py:')]
    assert ours == ['mnist.py: error: -b 127: the global batch must be a multiple of the 2 processes '
                    '(each takes b/2 samples of every batch)'], done.stderr
    assert 'engine' not in done.stderr                                     # no traceback of ours
    assert done.stderr.count('exitcode  : 2 ') == 2, done.stderr           # torchrun's report, per rank
    assert not (tmp_path / 'dump').exists()


def test_released_data_pipeline_trains_with_two_processes(tmp_path):
    """A DistributedSampler of b/K samples a step: the same number of steps as one process."""
    argv = ['-m', 'grad', '-s', '0.95', '-N', '0', '--train-size', '256', '--data-pipeline', 'released',
            '--workers', '0', *FAST, '--dump-dir', tmp_path]
    _ok(torchrun(MNIST, *argv))
    (record,) = read_metrics(_only_run(tmp_path, 'logs'))
    assert (record['step'], record['world_size']) == (2, 2)


def test_nan_stops_every_process_with_one_line(tmp_path):
    """-lr 1e38 overflows the weights at the first step: both ranks stop at the first check."""
    done = torchrun(MNIST, '-m', 'grad', '-s', '0.95', '-lr', '1e38', '-N', '0', '--train-size', '256',
                    *FAST, '--dump-dir', tmp_path)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith('mnist.py:')]
    assert len(ours) == 1 and 'NaN or Inf at step 0' in ours[0], done.stderr
    assert done.stderr.count('exitcode  : 1 ') == 2, done.stderr
    assert not list(tmp_path.rglob('*.pt'))


def test_cifar10_with_two_processes_and_sync_bn_trains_and_resumes(tmp_path):
    argv = ['-m', 'grad', '-s', '0.95', '-T', '2', '-b', '8', '-i2', '2', '--sync-bn',
            '--no-compile', '--device', 'cpu', '--threads', '1', '--dump-dir', tmp_path]
    first = _ok(torchrun(LAUNCH, 'c10', *argv, '-N', '0'))
    assert first.stdout.count('epoch 0: test_acc') == 1
    again = _ok(torchrun(LAUNCH, 'c10', *argv, '-N', '1'))
    assert 'resuming lr-1e-4-b-8-T-2-penalty-1e-3-s-0.95-grad at epoch 1' in again.stdout
    records = read_metrics(_only_run(tmp_path, 'logs'))
    assert [(r['epoch'], r['step'], r['world_size']) for r in records] == [(0, 2, 2), (1, 4, 2)]
    assert [p[0] for p in records[1]['train']] == [2]            # 16 images, 2 steps an epoch, -i2 2
    run = json.loads((_only_run(tmp_path, 'logs') / 'run.json').read_text())
    assert run['flags']['sync_bn'] is True and run['flags']['world_size'] == 2


def test_sync_bn_per_time_step_equals_one_process_on_the_global_batch(tmp_path):
    """Two gloo processes, each half of the batch, against StepwiseBatchNorm2d on all of it:
    running statistics after two calls (2T updates), outputs and gradients."""
    _ok(torchrun(LAUNCH, 'syncbn', tmp_path / 'out.pt'))
    got = torch.load(tmp_path / 'out.pt', weights_only=True)
    x, r, weight, bias = syncbn_inputs()
    ref = StepwiseBatchNorm2d(x.shape[2], step_mode='m')
    y, x_grad = train_twice(ref, x, r, weight, bias)
    assert int(got['num_batches_tracked']) == int(ref.num_batches_tracked) == 2 * x.shape[0]
    for key, want in (('running_mean', ref.running_mean), ('running_var', ref.running_var),
                      ('y', y), ('x_grad', x_grad), ('weight_grad', ref.weight.grad),
                      ('bias_grad', ref.bias.grad)):
        torch.testing.assert_close(got[key], want.detach(), rtol=1e-5, atol=1e-5, msg=key)


# ---------------------------------------------------------------- in one process

def test_sync_bn_conversion_keeps_parameters_keys_and_step_modes():
    model = CIFAR10SNN(T=2)
    params, keys = list(model.parameters()), list(model.state_dict())
    convert_sync_batchnorm(model)
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    assert isinstance(model.static_conv[1], StepwiseSyncBatchNorm2d) and model.static_conv[1].step_mode == 's'
    assert all(isinstance(model.conv[i], StepwiseSyncBatchNorm2d) and model.conv[i].step_mode == 'm'
               for i in (2, 5, 9, 12, 15))
    assert set(synapses(model)) == {'static_conv.0.weight', 'conv.1.weight', 'conv.4.weight', 'conv.8.weight',
                                    'conv.11.weight', 'conv.14.weight', 'fc.2.weight', 'fc.4.weight'}


def test_sync_bn_without_a_process_group_is_stepwise_batchnorm():
    x = torch.randn(3, 4, 2, 5, 5)
    ours, ref = StepwiseSyncBatchNorm2d(2, step_mode='m'), StepwiseBatchNorm2d(2, step_mode='m')
    for mode in ('train', 'eval'):
        getattr(ours, mode)(), getattr(ref, mode)()
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)


@pytest.mark.parametrize('env, expected', [
    ({}, (False, 1, 0)),
    ({'WORLD_SIZE': '1'}, (False, 1, 0)),
    ({'WORLD_SIZE': '1', 'TORCHELASTIC_RUN_ID': 'x', 'RANK': '0'}, (True, 1, 0)),
    ({'WORLD_SIZE': '4', 'RANK': '3', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'}, (True, 4, 3)),
])
def test_torchrun_is_detected_from_its_environment(env, expected):
    ranks = Ranks.from_env(env)
    assert (ranks.active, ranks.world_size, ranks.rank) == expected


def test_test_shards_are_contiguous_without_padding_or_duplicates():
    for n in (10, 11, 13):
        shards = [distributed.shard_of(n, r, 4) for r in range(4)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_one_process_changes_nothing(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    workers, threads = engine.cli.choose_threads('device', None, None, Ranks())
    assert (workers, threads) == (0, len(os.sched_getaffinity(0)))
    assert distributed.mean(0.5, 2.0) == [0.5, 2.0]
    assert distributed.all_sum(torch.tensor([3, 4])).tolist() == [3, 4]
    assert distributed.broadcast_object({'a': 1}) == {'a': 1}


def test_sigterm_stops_every_process_after_an_intact_checkpoint(tmp_path, capsys):
    """SIGTERM to torchrun, which passes it on: rank 0 says one line, the run resumes (here
    in this process: test_a_run_of_two_processes_resumes_with_one_... resumes one with one
    process as the script; the checkpoint is what is checked here)."""
    argv = ['-m', 'grad', '-s', '0.95', '-N', '200', '--train-size', '1024', *FAST, '--dump-dir', tmp_path]
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                             '2', str(MNIST), *map(str, argv)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:
            if line.startswith('epoch 1: test_acc'):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith('mnist.py:')]
    assert len(ours) == 1 and 'interrupted by SIGTERM' in ours[0], err
    capsys.readouterr()
    assert mnist_main(*argv[:4], '-N', '0', *argv[6:]) == 0
    out = capsys.readouterr().out
    assert 'epochs 0..' in out and 'are done; raise -N to train longer' in out
