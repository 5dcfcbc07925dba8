"""report.py on two tiny real MNIST runs (Grad R and no pruning), run.json, and bad input."""
import csv
import json

import pytest

import report
from engine.runinfo import code_version
from helpers import REPO, read_metrics, run_script

TINY = ['--train-size', '512', '--test-size', '256', '-N', '1', '-i1', '1', '--workers', '0', '--no-compile',
        '--device', 'cpu']
GRAD = 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-train-512-test-256'
PLAIN = 'lr-1e-3-b-128-T-8-no_prune-train-512-test-256'
SIZES = {'static_fc.1.weight': 800 * 784, 'fc.1.weight': 10 * 800}
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _report(*args):
    return run_script(REPO / 'report.py', *args)


@pytest.fixture(scope='module')
def dump(tmp_path_factory):
    dump = tmp_path_factory.mktemp('runs')
    for mode in (['-m', 'grad', '-s', '0.95'], ['-m', 'no_prune']):
        done = run_script(REPO / 'mnist' / 'mnist.py', *mode, '--dump-dir', dump, *TINY)
        assert done.returncode == 0, done.stderr
    return dump


def test_run_json_records_the_settings(dump):
    info = json.loads((dump / 'logs' / GRAD / 'run.json').read_text())
    assert (info['dataset'], info['method'], info['run']) == ('mnist', 'grad', GRAD)
    assert info['synapse_counts'] == SIZES
    flags = info['flags']
    assert (flags['m'], flags['s'], flags['penalty'], flags['N'], flags['train_size']) == \
        ('grad', 0.95, 1e-3, 1, 512)
    assert flags['device'] == 'cpu' and flags['dump_dir'] == str(dump)
    assert info['code_version'] and info['started']
    (start,) = info['starts']                                 # one start, at epoch 0
    assert (start['epoch'], start['code_version'], start['started']) == (0, info['code_version'], info['started'])
    assert start['machine']['torch'] and start['machine']['cores'] >= 1


def test_code_version_never_fails(tmp_path):
    assert code_version(tmp_path) == 'unknown'              # not a git repository


def test_report_numbers_are_the_last_records(dump, tmp_path):
    done = _report(dump, '--out', tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / 'results.csv') as f:
        rows = {row['run']: row for row in csv.DictReader(f)}
    with open(tmp_path / 'results.csv') as f:
        header = next(csv.reader(f))
    assert header == ['run', 'dataset', 'method', 'setting', 'penalty', 's', 'T', 'epochs_done', 'training_done',
                      'final_acc_pct', 'best_acc_pct', 'tail_acc_pct', 'tail_acc_sd_pp', 'connectivity_pct',
                      'trained_connectivity_pct', 'connectivity_pct:fc.1.weight', 'connectivity_pct:static_fc.1.weight',
                      'synapses_kept', 'acc_loss_pp', 'sops_per_image', 'sops_epoch', 'code']
    assert set(rows) == {GRAD, PLAIN}
    assert (rows[GRAD]['setting'], rows[PLAIN]['setting']) == ('penalty 1e-3, s 0.95, train-size 512, test-size 256',
                                                               'train-size 512, test-size 256')
    last = {name: read_metrics(dump / 'logs' / name)[-1] for name in rows}
    for name, row in rows.items():
        record = last[name]
        assert (row['dataset'], row['T'], row['epochs_done'], row['training_done']) == ('mnist', '8', '2', 'true')
        assert float(row['final_acc_pct']) == pytest.approx(100 * record['test_acc'])
        best = max(r['test_acc'] for r in read_metrics(dump / 'logs' / name))
        assert float(row['best_acc_pct']) == pytest.approx(100 * best)
        assert row['tail_acc_pct'] == row['tail_acc_sd_pp'] == ''        # 2 epochs: fewer than 16
        assert float(row['connectivity_pct']) == pytest.approx(100 * (1 - record['sparsity']))
        assert row['trained_connectivity_pct'] == row['connectivity_pct']     # no placeholders
        kept = 0
        for layer, size in SIZES.items():
            connectivity = 100 * (1 - record['layer_sparsity'][layer])
            assert float(row[f'connectivity_pct:{layer}']) == pytest.approx(connectivity)
            kept += size * connectivity / 100
        assert int(row['synapses_kept']) == round(kept)
        assert float(row['sops_per_image']) == pytest.approx(record['sops']['total'])
        assert row['sops_epoch'] == str(record['epoch'])
        assert row['code'] == json.loads((dump / 'logs' / name / 'run.json').read_text())['code_version']
    grad, plain = rows[GRAD], rows[PLAIN]
    assert (grad['method'], grad['penalty'], grad['s']) == ('grad', '0.001', '0.95')
    assert (plain['method'], plain['penalty'], plain['s']) == ('no_prune', '', '')
    assert int(plain['synapses_kept']) == sum(SIZES.values())
    assert float(grad['acc_loss_pp']) == pytest.approx(
        100 * (last[PLAIN]['test_acc'] - last[GRAD]['test_acc']))
    assert float(plain['acc_loss_pp']) == 0
    md = (tmp_path / 'results.md').read_text().splitlines()
    assert len(md) == 4 and md[0].startswith('| run | dataset | method |')
    assert f"| {100 * last[GRAD]['test_acc']:.2f} |" in md[2] + md[3]
    for name in ('accuracy_vs_connectivity.png', 'curves.png'):
        data = (tmp_path / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name
    assert (tmp_path / 'accuracy_vs_connectivity.svg').read_text().lstrip().startswith('<?xml')


def test_the_same_runs_give_the_same_report_files(dump, tmp_path):
    """Regenerating a kept report (README: ``python report.py docs/results/mnist --out
    docs/results``) changes no file when the runs did not change."""
    for out in ('one', 'two'):
        assert report.main([str(dump), '--out', str(tmp_path / out)]) == 0
    names = sorted(p.name for p in (tmp_path / 'one').iterdir())
    assert 'accuracy_vs_connectivity.svg' in names and names == sorted(p.name for p in (tmp_path / 'two').iterdir())
    changed = [n for n in names if (tmp_path / 'one' / n).read_bytes() != (tmp_path / 'two' / n).read_bytes()]
    assert changed == []


def test_default_out_and_unfinished_run_without_baseline(dump, tmp_path):
    # A copy of the Grad R run alone, cut to its first epoch: not done, no unpruned run.
    logs = tmp_path / 'logs' / GRAD
    logs.mkdir(parents=True)
    (logs / 'run.json').write_text((dump / 'logs' / GRAD / 'run.json').read_text())
    lines = (dump / 'logs' / GRAD / 'metrics.jsonl').read_text().splitlines()
    (logs / 'metrics.jsonl').write_text(lines[0] + '\n{"epoch": 1, "test_a\nnot json\n')
    done = _report(tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 1 and str(logs / 'metrics.jsonl') in warnings[0]
    with open(tmp_path / 'report' / 'results.csv') as f:
        (row,) = csv.DictReader(f)
    assert (row['epochs_done'], row['training_done'], row['acc_loss_pp']) == ('1', 'false', '')


@pytest.mark.parametrize('make, message', [
    (lambda p: p / 'missing', 'no such folder'),
    (lambda p: p, 'no runs'),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, make, message):
    """``report.main`` in this process (the tests above run report.py as a user would)."""
    capsys.readouterr()
    assert report.main([str(make(tmp_path))]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and message in err
    assert out == ''
    assert not (tmp_path / 'report').exists()
