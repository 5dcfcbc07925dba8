"""Unit tests of the shared engine: run names, firing-rate counts, checkpoint safety."""
import json

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader, TensorDataset

import engine
from helpers import config_for
from mnist import mnist
from snn import lif


def args_for(*argv):
    return config_for(mnist.EXPERIMENT, '--device', 'cpu', '--dump-dir', '/tmp', *argv)


@pytest.mark.parametrize('argv, name', [
    (['-m', 'grad', '-s', '0.95'], 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad'),
    (['-m', 'deep', '-s', '0.95'], 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-deep'),
    (['-m', 'deep', '-soft', '-s', '0.95'], 'soft-lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-deep'),
    (['-m', 'no_prune', '-s', '0.95'], 'lr-1e-3-b-128-T-8-no_prune'),
    (['-m', 'grad', '-s', '0.8', '-lr', '1e-4', '-b', '16', '-T', '4', '-penalty', '5e-4'],
     'lr-1e-4-b-16-T-4-penalty-5e-4-s-0.8-grad'),
    (['-m', 'grad', '-s', '0.9500001'], 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.9500001-grad'),
    (['-m', 'grad', '-s', '0.95', '--seed', '7'], 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-seed-7'),
    (['-m', 'deep', '-s', '0.95', '--deepr-regrowth', 'active'],
     'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-deep-regrowth-active'),
    (['-m', 'grad', '-s', '0.95', '--seed', '2020', '--workers', '0', '-N', '3'],
     'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad'),
])
def test_run_names(argv, name):
    assert args_for(*argv).name == name


class ConstantCurrentLIF(nn.Module):
    """Input [N, 3] fed as a constant current for T steps to 3 LIF neurons; output rate [N, 3]."""

    def __init__(self, T):
        super().__init__()
        self.T = T
        self.neurons = nn.Sequential(lif())
        functional.set_step_mode(self.neurons, 'm')

    def forward(self, x):
        return self.neurons(x.unsqueeze(0).expand(self.T, *x.shape)).mean(0)


def test_firing_rates_by_hand():
    # LIF, tau 2, threshold 1, hard reset 0: v <- v + (x - v) / 2.
    # x = 2.0: v = 1.0 at every step -> 8 spikes in T = 8.
    # x = 1.5: v = 0.75, 1.125 (spike, reset), 0.75, 1.125 (spike), ... -> 4 spikes.
    # x = 0:   never fires.
    x = torch.tensor([[2.0, 0.0, 1.5], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1])
    loader = DataLoader(TensorDataset(x, labels), batch_size=1)
    acc, rates = engine.evaluate(ConstantCurrentLIF(T=8), loader, torch.device('cpu'))
    assert acc == 0.5                                     # both predict class 0
    (layer,) = rates
    assert layer == 'neurons.0'
    # per neuron: (8 + 8) / 16, 0 / 16, (4 + 0) / 16
    assert rates[layer]['per_neuron'].tolist() == [1.0, 0.0, 0.25]
    assert rates[layer]['avg_firing_rate'] == pytest.approx(1.25 / 3)
    # Neurons that never fire on any test sample: neuron 1 only. Neuron 2 is silent on
    # sample 1 but fires on sample 0, so it counts as firing (the fraction of silent
    # (sample, neuron) pairs would be 3 / 6 instead).
    assert rates[layer]['nonfire_prop'] == 1 / 3


def test_atomic_save_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pt'
    engine.atomic_save({'epoch': 3}, path)

    def broken_save(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt                           # e.g. Ctrl-C while writing

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        engine.atomic_save({'epoch': 4}, path)
    assert engine.load_checkpoint(path) == {'epoch': 3}


def test_atomic_copy(tmp_path):
    src, dst = tmp_path / 'checkpoint.pt', tmp_path / 'checkpoint-0.pt'
    engine.atomic_save({'epoch': 0}, src)
    engine.atomic_copy(src, dst)
    engine.atomic_save({'epoch': 1}, src)                 # replacing the source ...
    assert engine.load_checkpoint(dst) == {'epoch': 0}   # ... leaves the copy as it was


def test_truncate_metrics_drops_later_and_broken_lines(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text(''.join(json.dumps({'epoch': e}) + '\n' for e in range(3)) + '{"epoch": 3, "te')
    engine.checkpoint.truncate_metrics(path, 2)
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'


def test_sparsity_report_counts_below_1e_10():
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1e-11, -1e-10, 0.5], [1.0, -2.0, 3.0, 4.0]]))
        model[1].weight[0] = 0.0
    report = engine.sparsity_report(model)
    assert report['layers'] == {'0.weight': 2 / 8}        # 0 and 1e-11; |-1e-10| is linked
    assert report['overall'] == 2 / 8
    # "with bn": pruned synapses over all parameters; BN only in the denominator: its zero
    # weight and biases 0, 0 are not pruned synapses.
    assert report['with_bn'] == 2 / 12


def _epoch_order(loader):
    return torch.cat([label for _, label in loader]).tolist()


@pytest.mark.parametrize('workers', [0, 2])
def test_loaders_draw_from_the_global_generator_as_the_released_ones(workers):
    """Same seed, same data order as a DataLoader without a generator (the released
    scripts'), epoch after epoch; restoring torch's global state replays an epoch."""
    ds = TensorDataset(torch.zeros(40, 1), torch.arange(40))
    args = args_for('-m', 'grad', '-s', '0.95', '-b', '8', '--workers', str(workers))
    torch.manual_seed(11)
    ours = engine.data.make_loader(ds, args, shuffle=True)
    epoch0 = _epoch_order(ours)
    state = torch.get_rng_state()
    epoch1 = _epoch_order(ours)
    torch.manual_seed(11)
    released = DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers)
    assert [_epoch_order(released), _epoch_order(released)] == [epoch0, epoch1]
    assert epoch0 != epoch1 and sorted(epoch0) == list(range(40))
    torch.set_rng_state(state)                          # what a resume does
    assert _epoch_order(ours) == epoch1


@pytest.mark.parametrize('omp, given, expected', [(None, None, 2), ('1', None, 1), ('3', None, 3), ('1', 2, 2),
                                                  ('', None, 2), ('x', None, 2)])
def test_threads_follow_omp_num_threads_unless_given(omp, given, expected, monkeypatch):
    """--threads defaults to $OMP_NUM_THREADS (so that two runs side by side, each told one
    thread, keep to it), else to the cores not given to workers (here 2)."""
    from engine.distributed import Ranks
    monkeypatch.setattr(engine.cli, 'cpu_cores', lambda: 2)
    if omp is None:
        monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    else:
        monkeypatch.setenv('OMP_NUM_THREADS', omp)
    assert engine.cli.choose_threads('device', None, given, Ranks()) == (0, expected)


def test_resumed_writer_opens_a_file_that_tensorboard_reads_after_the_earlier_ones(tmp_path):
    """An earlier event file named one second ahead of the clock (as a crashed run's file is
    when the resume comes within its second, or after a clock step back): the resumed
    writer's file must sort after it, or TensorBoard reads it first and its purge at step 1
    then drops the epoch-2 point."""
    from helpers import tensorboard_tags
    import time
    first = engine.logs.SummaryWriter(str(tmp_path))
    first.add_scalar('test/acc', 0.5, 0)
    first.add_scalar('test/acc', 0.6, 1)
    first.close()
    (old,) = tmp_path.glob('events.out.tfevents.*')
    ahead = f'events.out.tfevents.{int(time.time()) + 1:010d}.zzzz.1.9'   # last of its second
    old.rename(tmp_path / ahead)
    writer = engine.logs.resumed_writer(tmp_path, 1, kept=[{'epoch': 0, 'train': []}])
    writer.add_scalar('test/acc', 0.7, 1)
    writer.add_scalar('test/acc', 0.8, 2)
    writer.close()
    names = sorted(p.name for p in tmp_path.glob('events.out.tfevents.*'))
    assert len(names) == 2 and names[0] == ahead
    acc, _ = tensorboard_tags(tmp_path)
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars('test/acc')] == [(0, 0.5), (1, 0.7), (2, 0.8)]


def test_resumed_writer_does_not_wait_for_an_event_file_far_ahead_of_the_clock(tmp_path, capsys):
    """A file a minute ahead (a clock set back): one warning line, no wait."""
    import time
    first = engine.logs.SummaryWriter(str(tmp_path))
    first.close()
    (old,) = tmp_path.glob('events.out.tfevents.*')
    old.rename(tmp_path / f'events.out.tfevents.{int(time.time()) + 60:010d}.host.1.1')
    start = time.monotonic()
    engine.logs.resumed_writer(tmp_path, 1, kept=[]).close()
    assert time.monotonic() - start < 1.5
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f'warning: {tmp_path} holds a TensorBoard event file from ') and 's ahead of this clock' in line


def test_the_resume_line_gives_the_command_as_started(monkeypatch):
    """python and the script's path in one process; torchrun with the processes of this machine
    under torchrun on one machine; the in-process program name when argv is given."""
    from engine.distributed import Ranks
    monkeypatch.setattr('sys.argv', ['mnist/mnist.py', '-m', 'grad', '-s', '0.95'])
    rest = ['mnist/mnist.py', '-m', 'grad', '-s', '0.95']
    assert engine._resume_command(mnist.EXPERIMENT, None, Ranks()) == ['python', *rest]
    two = Ranks(world_size=2, rank=0, local_rank=0, local_world_size=2, active=True)
    assert engine._resume_command(mnist.EXPERIMENT, None, two) == ['torchrun', '--nproc_per_node', '2', *rest]
    nodes = Ranks(world_size=4, rank=0, local_rank=0, local_world_size=2, active=True)
    assert engine._resume_command(mnist.EXPERIMENT, None, nodes) == ['torchrun', '<its options>', *rest]
    assert engine._resume_command(mnist.EXPERIMENT, ['-m', 'deep'], two) == ['mnist.py', '-m', 'deep']


def test_run_json_keeps_the_starts_whose_epochs_it_still_holds(tmp_path, monkeypatch):
    from engine import runinfo
    versions = iter(['v0', 'v1', 'v2', 'v3', 'v4'])
    monkeypatch.setattr(runinfo, 'code_version', lambda: next(versions))
    config = config_for(mnist.EXPERIMENT, '-m', 'grad', '-s', '0.95', '--dump-dir', tmp_path, '--threads', '1')
    model = nn.Linear(2, 2)

    def starts():
        info = json.loads((tmp_path / 'run.json').read_text())
        assert (info['code_version'], info['started']) == (info['starts'][-1]['code_version'],
                                                           info['starts'][-1]['started'])
        return [(s['epoch'], s['code_version']) for s in info['starts']]

    runinfo.write_run_info(tmp_path, config, model, 0)
    runinfo.write_run_info(tmp_path, config, model, 5)
    assert starts() == [(0, 'v0'), (5, 'v1')]
    runinfo.write_run_info(tmp_path, config, model, 5)        # crashed in epoch 5, resumed there
    assert starts() == [(0, 'v0'), (5, 'v2')]
    runinfo.write_run_info(tmp_path, config, model, 3)        # --resume-from an earlier epoch
    assert starts() == [(0, 'v0'), (3, 'v3')]
    runinfo.write_run_info(tmp_path, config, model, 0)        # trained again from the start
    assert starts() == [(0, 'v4')]
    (start,) = json.loads((tmp_path / 'run.json').read_text())['starts']
    assert start['flags'] == {'device': 'cpu', 'threads': 1, 'compile': config.compile, 'amp': False,
                              'data_pipeline': 'device', 'world_size': 1}
    assert start['machine']['torch'] == torch.__version__


def test_run_json_from_before_starts_or_damaged_keeps_what_reads_as_a_start(tmp_path):
    from engine import runinfo
    path = tmp_path / 'run.json'
    path.write_text(json.dumps({'run': 'x', 'code_version': 'old', 'started': 'then'}))
    assert runinfo.earlier_starts(path) == [{'epoch': None, 'started': 'then', 'code_version': 'old'}]
    config = config_for(mnist.EXPERIMENT, '-m', 'no_prune', '--dump-dir', tmp_path)
    info = runinfo.run_info(config, nn.Linear(2, 2), 7, runinfo.earlier_starts(path))
    assert [(s['epoch'], s['code_version']) for s in info['starts']] == [(None, 'old'), (7, info['code_version'])]
    assert [s['epoch'] for s in runinfo.run_info(config, nn.Linear(2, 2), 0, info['starts'])['starts']] == [0]
    good = {'epoch': 2, 'code_version': 'a'}
    path.write_text(json.dumps({'starts': [good, {'epoch': '5'}, {'epoch': [1]}, {'epoch': True}, 'x', {}]}))
    assert runinfo.earlier_starts(path) == [good]
    path.write_text('{broken')
    assert runinfo.earlier_starts(path) == []


def test_machine_reads_the_cpu_name_and_flags(tmp_path):
    from engine import runinfo
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nmodel name\t: AMD EPYC 9R14\n'
                       'flags\t\t: fpu sse avx2 avx512f avx512_bf16 sha_ni\n\nprocessor\t: 1\n'
                       'model name\t: other\nflags\t\t: fpu\n')
    info = runinfo.machine('cpu', cpuinfo)
    assert (info['cpu'], info['cpu_flags']) == ('AMD EPYC 9R14', ['avx2', 'avx512f', 'avx512_bf16'])
    assert info['cpu_capability'] == torch.backends.cpu.get_cpu_capability() and 'gpu' not in info
    missing = runinfo.machine('cpu', tmp_path / 'none')
    assert missing['cpu_flags'] == [] and missing['cpu'] != 'AMD EPYC 9R14'
    if not torch.cuda.is_available():
        assert runinfo.machine('cuda:1', cpuinfo)['gpu'] == 'unknown'
