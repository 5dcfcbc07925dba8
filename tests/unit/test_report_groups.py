"""report.py groups the runs that differ only in the seed: mean, sd and n, error bars, the
accuracy loss against the unpruned mean; it reads the layout kept in docs/results/."""
import csv
import json
import math

import pytest

import report

SIZES = {'static_fc.1.weight': 800 * 784, 'fc.1.weight': 10 * 800}


def _run(folder, name, method, flags, accs, sparsity):
    """A finished run as report.py reads it: run.json and one metrics line per epoch."""
    folder.mkdir(parents=True)
    info = {'dataset': 'mnist', 'method': method, 'run': name, 'synapse_counts': SIZES,
            'flags': {'N': len(accs) - 1, 'T': 8, 'seed': 2020, **flags}, 'started': '2026-12-01T00:00:00+00:00'}
    (folder / 'run.json').write_text(json.dumps(info))
    lines = [json.dumps({'epoch': e, 'test_acc': a, 'sparsity': sparsity,
                         'layer_sparsity': {k: sparsity for k in SIZES}}) for e, a in enumerate(accs)]
    (folder / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')


@pytest.fixture
def kept(tmp_path):
    """Three seeds of one Grad R setting, one of another, two unpruned seeds, laid out as
    docs/results/mnist/<run>/."""
    root = tmp_path / 'mnist'
    grad = 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad'
    for seed, accs, sparsity in ((2020, [0.90, 0.97], 0.90), (2021, [0.95, 0.98], 0.92), (2022, [0.99, 0.96], 0.94)):
        name = grad if seed == 2020 else f'{grad}-seed-{seed}'
        _run(root / name, name, 'grad', {'penalty': 1e-3, 's': 0.95, 'seed': seed}, accs, sparsity)
    _run(root / 'lr-1e-3-b-128-T-8-penalty-5e-4-s-0.95-grad', 'lr-1e-3-b-128-T-8-penalty-5e-4-s-0.95-grad', 'grad',
         {'penalty': 5e-4, 's': 0.95}, [0.95, 0.975], 0.5)
    for seed, acc in ((2020, 0.98), (2021, 0.99)):
        name = 'lr-1e-3-b-128-T-8-no_prune' + ('' if seed == 2020 else f'-seed-{seed}')
        _run(root / name, name, 'no_prune', {'penalty': 1e-3, 's': None, 'seed': seed}, [0.5, acc], 0.0)
    return root


def test_runs_that_differ_in_the_seed_are_one_row_with_mean_sd_and_n(kept, tmp_path):
    assert report.main([str(kept), '--out', str(tmp_path / 'out')]) == 0
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'summary.csv')))
    assert [(r['method'], r['setting'], r['n'], r['seeds']) for r in rows] == [
        ('grad', 'penalty 5e-4, s 0.95', '1', '2020'),
        ('grad', 'penalty 1e-3, s 0.95', '3', '2020 2021 2022'),
        ('no_prune', '', '2', '2020 2021')]
    grad = rows[1]
    # final accuracies 97, 98, 96: mean 97, sd sqrt((0 + 1 + 1) / 2) = 1; best 97, 98, 99: mean 98, sd 1;
    # connectivity 10, 8, 6: mean 8, sd 2; unpruned mean (98 + 99) / 2 = 98.5, loss 1.5.
    assert [float(grad[k]) for k in ('final_acc_mean', 'final_acc_sd', 'best_acc_mean', 'best_acc_sd',
                                     'connectivity_mean', 'connectivity_sd', 'acc_loss_pp')] == \
        pytest.approx([97, 1, 98, 1, 8, 2, 1.5])
    assert rows[0]['final_acc_sd'] == '' and float(rows[0]['acc_loss_pp']) == pytest.approx(1.0)
    md = (tmp_path / 'out' / 'summary.md').read_text()
    assert '| Grad R | penalty 1e-3, s 0.95 | 8 | 3 | 2 | 97.00 ± 1.00 | 98.00 ± 1.00 |  | 8.00 ± 2.00 | 8.00 ± 2.00 | 1.50 |' in md
    per_run = {r['run']: r for r in csv.DictReader(open(tmp_path / 'out' / 'results.csv'))}
    assert float(per_run['lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad-seed-2022']['acc_loss_pp']) == pytest.approx(2.5)
    assert (tmp_path / 'out' / 'accuracy_vs_connectivity.png').stat().st_size > 0


def test_curves_are_labelled_by_method_setting_and_seed(kept, tmp_path, monkeypatch):
    labels = []
    import matplotlib.axes
    real_plot = matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        if 'label' in kwargs:
            labels.append(kwargs['label'])
        return real_plot(self, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, 'plot', plot)
    report.build_report([kept], tmp_path / 'out')
    assert 'Grad R penalty 1e-3, s 0.95 seed 2021' in labels and 'no pruning seed 2020' in labels


def test_a_setting_names_the_methods_own_flags_that_differ_from_their_defaults():
    flags = {'flat_width': 0.5, 'stds_gradient': 'st', 'flat_schedule': 'sine', 'penalty': 1e-3, 's': None}
    assert report.setting({'method': 'stds', 'flags': flags}) == 'flat-width 0.5, stds-gradient st'
    flags = {'penalty': 1e-3, 's': 0.9, 'soft': False, 'deepr_regrowth': 'active'}
    assert report.setting({'method': 'deep', 'flags': flags}) == 'penalty 1e-3, s 0.9, deepr-regrowth active'
    flags = {'penalty': 1e-3, 's': 0.9, 'soft': True, 'deepr_regrowth': 'released'}
    assert report.setting({'method': 'soft_deep', 'flags': flags}) == 'penalty 1e-3, s 0.9'
    flags = {'penalty': 1e-3, 's': 0.95, 'train_size': 1024, 'test_size': None}
    assert report.setting({'method': 'grad', 'flags': flags}) == 'penalty 1e-3, s 0.95, train-size 1024'
    assert report.setting({'method': 'no_prune', 'flags': {'test_size': 256}}) == 'test-size 256'
    for penalty, text in ((1e-2, '1e-2'), (0.1, '1e-1'), (5e-5, '5e-5'), (0.0, '0')):   # as in run names
        flags = {'penalty': penalty, 's': 0.95}
        assert report.setting({'method': 'grad', 'flags': flags}) == f'penalty {text}, s 0.95'


def test_sops_are_reported_with_their_epoch_and_summarised_only_from_the_last_epoch(tmp_path):
    """SOPs are recorded every -i1 epochs: a run whose last epoch has none shows its latest
    SOPs with their epoch, and its setting's summary leaves SOPs blank; a run with SOPs at its
    last epoch is summarised with them."""
    root = tmp_path / 'mnist'
    for name, sops in (('lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad', {0: 9000.0, 2: 5000.0}),
                       ('lr-1e-3-b-128-T-8-penalty-5e-4-s-0.95-grad', {0: 9500.0})):
        _run(root / name, name, 'grad', {'penalty': 1e-3 if '1e-3-s' in name else 5e-4, 's': 0.95},
             [0.9, 0.95, 0.97], 0.5)
        lines = [json.loads(line) for line in (root / name / 'metrics.jsonl').read_text().splitlines()]
        for epoch, total in sops.items():
            lines[epoch]['sops'] = {'total': total}
        (root / name / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in lines))
    assert report.main([str(root), '--out', str(tmp_path / 'out')]) == 0
    per_run = {r['run']: r for r in csv.DictReader(open(tmp_path / 'out' / 'results.csv'))}
    assert (per_run['lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad']['sops_per_image'],
            per_run['lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad']['sops_epoch']) == ('5000.0', '2')
    assert (per_run['lr-1e-3-b-128-T-8-penalty-5e-4-s-0.95-grad']['sops_per_image'],
            per_run['lr-1e-3-b-128-T-8-penalty-5e-4-s-0.95-grad']['sops_epoch']) == ('9500.0', '0')
    summary = {r['setting']: r['sops_per_image'] for r in csv.DictReader(open(tmp_path / 'out' / 'summary.csv'))}
    assert summary == {'penalty 1e-3, s 0.95': '5000.0', 'penalty 5e-4, s 0.95': ''}


def test_tail_accuracy_is_the_mean_and_sd_of_the_last_16_epochs(tmp_path):
    """17 epochs: epoch 0 (0.10) is left out; epochs 1-16 alternate 0.97 and 0.99, so the
    mean is 98% and the sd sqrt(16 / 15) pp; two seeds with tail means 98 and 97 give
    97.5 ± sqrt(0.5) in the summary. A run of 15 epochs has no tail value."""
    root = tmp_path / 'mnist'
    name = 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad'
    _run(root / name, name, 'grad', {'penalty': 1e-3, 's': 0.95}, [0.10] + [0.97, 0.99] * 8, 0.9)
    _run(root / f'{name}-seed-2021', f'{name}-seed-2021', 'grad', {'penalty': 1e-3, 's': 0.95, 'seed': 2021},
         [0.10] + [0.96, 0.98] * 8, 0.9)
    short = 'lr-1e-3-b-128-T-8-penalty-5e-4-s-0.95-grad'
    _run(root / short, short, 'grad', {'penalty': 5e-4, 's': 0.95}, [0.97] * 15, 0.5)
    assert report.main([str(root), '--out', str(tmp_path / 'out')]) == 0
    per_run = {r['run']: r for r in csv.DictReader(open(tmp_path / 'out' / 'results.csv'))}
    assert float(per_run[name]['tail_acc_pct']) == pytest.approx(98.0)
    assert float(per_run[name]['tail_acc_sd_pp']) == pytest.approx(math.sqrt(16 / 15))
    assert per_run[short]['tail_acc_pct'] == per_run[short]['tail_acc_sd_pp'] == ''
    summary = {r['setting']: r for r in csv.DictReader(open(tmp_path / 'out' / 'summary.csv'))}
    row = summary['penalty 1e-3, s 0.95']
    assert (float(row['tail_acc_mean']), float(row['tail_acc_sd'])) == pytest.approx((97.5, math.sqrt(0.5)))
    assert '97.50 ± 0.71' in (tmp_path / 'out' / 'summary.md').read_text()
    third = f'{name}-seed-2022'                   # a seed of -N 16 only 2 epochs in: no tail for n = 3
    _run(root / third, third, 'grad', {'penalty': 1e-3, 's': 0.95, 'seed': 2022, 'N': 16}, [0.10, 0.5], 0.9)
    assert report.main([str(root), '--out', str(tmp_path / 'out')]) == 0
    row = {r['setting']: r for r in csv.DictReader(open(tmp_path / 'out' / 'summary.csv'))}['penalty 1e-3, s 0.95']
    assert (row['n'], row['tail_acc_mean'], row['tail_acc_sd']) == ('3', '', '')


def test_code_column_names_the_code_versions_that_trained_a_run_in_order():
    starts = [{'epoch': 0, 'code_version': 'a1'}, {'epoch': 9, 'code_version': 'b2'},
              {'epoch': 12, 'code_version': 'b2'}, {'epoch': 20, 'code_version': 'a1'},
              {'epoch': 30, 'code_version': 'c3'}]
    assert report.code_versions({'starts': starts, 'code_version': 'c3'}) == 'a1+b2+a1+c3'
    assert report.code_versions({'code_version': '89b8dfe'}) == '89b8dfe'      # before 'starts'
    assert report.code_versions({}) == ''


def test_figure_panels_hold_final_and_last_epochs_means_with_seed_sd(tmp_path, monkeypatch):
    """accuracy_vs_connectivity: left panel mean final accuracy, right panel mean of the
    last-16-epoch means, each with one seed sd as its error bar, x the mean connectivity."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    root = tmp_path / 'mnist'
    grad = 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad'
    # 17 epochs each: the last 16 average to the tail mean. Seed 2020: epoch 0 at 0.5, then 0.96
    # (tail 96, final 96); seed 2021: 0.5, then 0.98 x 15 and a final 0.99 (tail (15 * 98 + 99) /
    # 16 = 98.0625, final 99). Means: final 97.5 (sd 3 / sqrt 2), tail 97.03125 (sd 1.4584...).
    # Connectivity 12% and 8%: mean 10, sd 4 / sqrt 2.
    for seed, accs, sparsity in ((2020, [0.5] + [0.96] * 16, 0.88), (2021, [0.5] + [0.98] * 15 + [0.99], 0.92)):
        name = grad if seed == 2020 else f'{grad}-seed-{seed}'
        _run(root / name, name, 'grad', {'penalty': 1e-3, 's': 0.95, 'seed': seed}, accs, sparsity)
    figures = []
    monkeypatch.setattr(plt, 'close', figures.append)
    assert report.main([str(root), '--out', str(tmp_path / 'out')]) == 0
    (fig,) = [f for f in figures if len(f.axes) == 2 and f.axes[0].get_xscale() == 'log']
    left, right = fig.axes
    for ax, mean, sd in ((left, 97.5, 1.5 * math.sqrt(2)),
                         (right, (96 + 98.0625) / 2, math.sqrt(2 * (98.0625 - 97.03125) ** 2))):
        (line,) = ax.get_lines()[:1]
        assert list(line.get_xdata()) == pytest.approx([10.0])
        assert list(line.get_ydata()) == pytest.approx([mean])
        (horizontal, vertical) = sorted((seg for c in ax.collections for seg in c.get_segments()),
                                        key=lambda seg: abs(seg[1][1] - seg[0][1]))
        assert sorted(p[0] for p in horizontal) == pytest.approx([10 - 2 * math.sqrt(2), 10 + 2 * math.sqrt(2)])
        assert [p[1] for p in horizontal] == pytest.approx([mean, mean])
        assert [p[0] for p in vertical] == pytest.approx([10.0, 10.0])
        assert sorted(p[1] for p in vertical) == pytest.approx([mean - sd, mean + sd])
    assert 'final' in left.get_ylabel() and 'last 16 epochs' in right.get_ylabel()


def test_keep_into_copies_finished_runs_without_absolute_paths_and_leaves_kept_runs_alone(tmp_path, capsys):
    dump = tmp_path / 'dump'
    done, running, old = ('lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad', 'lr-1e-3-b-128-T-8-no_prune',
                          'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.9-deep')
    paths = {'dataset_dir': '/work/dump/data', 'dump_dir': str(dump), 'resume_from': None, 'tag': 'a/b'}
    _run(dump / 'logs' / done, done, 'grad', {'penalty': 1e-3, 's': 0.95, **paths}, [0.9, 0.95, 0.97], 0.9)
    _run(dump / 'logs' / running, running, 'no_prune', {}, [0.9, 0.95], 0.0)
    info = json.loads((dump / 'logs' / running / 'run.json').read_text())
    info['flags']['N'] = 5                      # epochs 0-1 of 0-5 written: not finished
    (dump / 'logs' / running / 'run.json').write_text(json.dumps(info))
    _run(dump / 'logs' / old, old, 'deep', {'penalty': 1e-3, 's': 0.9}, [0.9, 0.96], 0.9)
    into = tmp_path / 'docs' / 'results' / 'mnist'
    (into / old).mkdir(parents=True)
    (into / old / 'run.json').write_text('kept earlier')
    capsys.readouterr()

    assert report.main([str(dump), '--keep-into', str(into), '--out', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(out[:2]) == [f'report.py: kept {done} in {into}', f'report.py: {old} is already in {into}; left as it is']
    assert sorted(p.name for p in into.iterdir()) == sorted([done, old])     # no temporary folder left
    assert (into / old / 'run.json').read_text() == 'kept earlier'
    kept = json.loads((into / done / 'run.json').read_text())
    source = json.loads((dump / 'logs' / done / 'run.json').read_text())
    assert kept['flags'] == {**source['flags'], 'dataset_dir': 'data', 'dump_dir': 'dump'}
    assert kept['flags']['tag'] == 'a/b' and kept['flags']['resume_from'] is None
    assert {k: v for k, v in kept.items() if k != 'flags'} == {k: v for k, v in source.items() if k != 'flags'}
    assert (into / done / 'metrics.jsonl').read_bytes() == (dump / 'logs' / done / 'metrics.jsonl').read_bytes()
    assert str(tmp_path) not in (into / done / 'run.json').read_text()
    # Keeping again copies nothing new; the report of the kept folder reads the copied run.
    assert report.main([str(dump), '--keep-into', str(into), '--out', str(tmp_path / 'out')]) == 0
    assert f'report.py: {done} is already in {into}; left as it is' in capsys.readouterr().out
    (into / old / 'run.json').write_text((dump / 'logs' / old / 'run.json').read_text())
    assert report.main([str(into), '--out', str(tmp_path / 'kept')]) == 0
    rows = {r['run']: r for r in csv.DictReader(open(tmp_path / 'kept' / 'results.csv'))}
    assert sorted(rows) == sorted([done, old])
    assert (float(rows[done]['final_acc_pct']), rows[done]['epochs_done']) == (pytest.approx(97.0), '3')


def test_keep_into_removes_its_temporary_folder_when_a_copy_fails(tmp_path, monkeypatch):
    name = 'lr-1e-3-b-128-T-8-no_prune'
    _run(tmp_path / 'dump' / 'logs' / name, name, 'no_prune', {}, [0.9, 0.95], 0.0)
    into = tmp_path / 'kept'

    def full_disk(src, dst):
        raise OSError(28, 'No space left on device', str(dst))
    monkeypatch.setattr('shutil.copyfile', full_disk)
    with pytest.raises(OSError):
        report.keep_finished(report.load_runs([tmp_path / 'dump']), into)
    assert list(into.iterdir()) == []
    assert report.load_runs([into]) == []


@pytest.mark.parametrize('where, message', [
    (lambda tmp: tmp / 'dump', lambda tmp: f'--keep-into {tmp / "dump"}: is a DUMP_DIR or its logs/'),
    (lambda tmp: tmp / 'dump' / 'logs', lambda tmp: 'is a DUMP_DIR or its logs/'),
    (lambda tmp: tmp / 'file' / 'mnist', lambda tmp: f'report.py: error: {tmp / "file" / "mnist"}: Not a directory'),
])
def test_keep_into_a_dump_dir_or_a_file_is_one_line_exit_2(tmp_path, capsys, where, message):
    name = 'lr-1e-3-b-128-T-8-no_prune'
    _run(tmp_path / 'dump' / 'logs' / name, name, 'no_prune', {}, [0.9, 0.95], 0.0)
    (tmp_path / 'file').write_text('')
    capsys.readouterr()
    assert report.main([str(tmp_path / 'dump'), '--keep-into', str(where(tmp_path))]) == 2
    out, err = capsys.readouterr()
    assert out == '' and len(err.strip().splitlines()) == 1 and message(tmp_path) in err
    assert not (tmp_path / 'dump' / name).exists() and not (tmp_path / 'dump' / 'logs' / 'logs').exists()


def test_keep_into_refuses_two_finished_runs_of_one_name(tmp_path, capsys):
    name = 'lr-1e-3-b-128-T-8-no_prune'
    _run(tmp_path / 'pilot' / 'logs' / name, name, 'no_prune', {}, [0.9, 0.95], 0.0)
    _run(tmp_path / 'full' / 'logs' / name, name, 'no_prune', {}, [0.9, 0.95, 0.97], 0.0)
    capsys.readouterr()
    assert report.main([str(tmp_path / 'pilot'), str(tmp_path / 'full'), '--keep-into', str(tmp_path / 'kept')]) == 2
    out, err = capsys.readouterr()
    assert out == '' and err.strip() == (f'report.py: error: --keep-into: more than one finished run named {name}; '
                                         'keep them one folder at a time')
    assert not (tmp_path / 'kept').exists()


def test_seeds_group_and_the_accuracy_loss_compare_only_runs_of_equal_length_and_data(tmp_path):
    full, small = tmp_path / 'full', tmp_path / 'small'
    grad, unpruned = 'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.95-grad', 'lr-1e-3-b-128-T-8-no_prune'
    _run(full / grad, grad, 'grad', {'penalty': 1e-3, 's': 0.95}, [0.90, 0.96], 0.9)       # N 1
    _run(full / f'{grad}-seed-2021', f'{grad}-seed-2021', 'grad', {'penalty': 1e-3, 's': 0.95, 'seed': 2021},
         [0.90, 0.94, 0.95], 0.9)                                                          # N 2
    _run(full / unpruned, unpruned, 'no_prune', {}, [0.9, 0.99], 0.0)                      # N 1
    _run(small / unpruned, unpruned, 'no_prune', {'train_size': 6000}, [0.9, 0.91], 0.0)   # N 1, less data
    running = tmp_path / 'running'                      # a seed of N 1 at epoch 0: not in the baseline
    _run(running / f'{unpruned}-seed-2021', f'{unpruned}-seed-2021', 'no_prune', {'seed': 2021, 'N': 1}, [0.5], 0.0)
    assert report.main([str(full), str(small), str(running), '--out', str(tmp_path / 'out')]) == 0
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'summary.csv')))
    # The two Grad R seeds differ in -N: two rows of one run each. The N 1 run loses 99 - 96 = 3 pp
    # against the finished full-data unpruned run alone (not against (99 + 91) / 2 = 95, nor
    # with the unfinished seed's 50); the N 2 run has no unpruned run of its length. The
    # unfinished seed is grouped with its finished one (mean (99 + 50) / 2, loss 99 - 74.5).
    got = sorted((r['method'], r['n'], r['epochs_done'], r['acc_loss_pp']) for r in rows)
    assert [g[:3] for g in got] == [('grad', '1', '2'), ('grad', '1', '3'), ('no_prune', '1', '2'), ('no_prune', '2', '1')]
    assert float(got[0][3]) == pytest.approx(3.0) and got[1][3] == ''
    assert float(got[2][3]) == 0.0 and float(got[3][3]) == pytest.approx(24.5)


def test_bit_identity_runs_names_the_first_epoch_each_quantity_differs(tmp_path, capsys):
    # benchmarks/bit_identity.py runs: two runs agree up to epoch 1; the sparsity splits at
    # epoch 2, the accuracy at epoch 3; timings never count; the longer run's extra epoch is
    # not compared.
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
    import bit_identity

    def write(folder, rows):
        folder.mkdir()
        (folder / 'metrics.jsonl').write_text(''.join(
            json.dumps({'epoch': e, 'step': 10 * e, 'test_acc': a, 'sparsity': s,
                        'train_seconds': 1.0 + e + len(rows)}) + '\n'
            for e, (a, s) in enumerate(rows)))

    write(tmp_path / 'hard', [(0.9, 0.5), (0.91, 0.6), (0.92, 0.7), (0.93, 0.7)])
    write(tmp_path / 'soft', [(0.9, 0.5), (0.91, 0.6), (0.92, 0.71), (0.94, 0.72), (0.95, 0.73)])
    assert bit_identity.compare_runs(tmp_path / 'hard', tmp_path / 'soft') == 2
    assert capsys.readouterr().out.splitlines() == [
        'hard (4 epochs) against soft (5 epochs): 4 epochs compared',
        '  test_acc: first differs at epoch 3',
        '  sparsity: first differs at epoch 2',
        '2 of 4 epochs identical in every quantity']
    assert bit_identity.compare_runs(tmp_path / 'hard', tmp_path / 'hard') == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        '  test_acc: identical', '  sparsity: identical', '4 of 4 epochs identical in every quantity']
    write(tmp_path / 'shifted', [(0.9, 0.5)] * 4)
    lines = (tmp_path / 'shifted' / 'metrics.jsonl').read_text().replace('"epoch": 0', '"epoch": 9', 1)
    (tmp_path / 'shifted' / 'metrics.jsonl').write_text(lines)
    with pytest.raises(ValueError, match='do not log the same epochs'):
        bit_identity.compare_runs(tmp_path / 'hard', tmp_path / 'shifted')
    write(tmp_path / 'empty', [])
    assert bit_identity.compare_runs(tmp_path / 'hard', tmp_path / 'empty') == 1   # nothing compared


def test_trained_connectivity_leaves_out_hard_deep_rs_placeholders(tmp_path):
    # Tensor a: 1000 synapses, 300 linked, 140 pruned and 140 regrown in the last (only) epoch
    # with counts -> P = 140 * 700 / 560 = 175 placeholders; tensor b: 100 synapses, 50 linked,
    # none regrown. Linked 350 / 1100 = 31.82%, trained 175 / 1100 = 15.91%, for hard Deep R
    # with the released regrowth only.
    root = tmp_path / 'kept'
    last = {'epoch': 1, 'test_acc': 0.9, 'sparsity': 750 / 1100, 'layer_sparsity': {'a': 0.7, 'b': 0.5},
            'prune_regrow': {'a': {'pruned': 140, 'regrown': 140}, 'b': {'pruned': 0, 'regrown': 0}}}
    runs = {'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep': ('deep', 'released', last),
            'lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep-regrowth-active': ('deep', 'active', last),
            'soft-lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep': ('soft_deep', 'released', last),
            'lr-1e-3-b-128-T-8-penalty-1e-2-s-0.5-deep': ('deep', 'released',
                                                          {k: v for k, v in last.items() if k != 'prune_regrow'})}
    for name, (method, regrowth, record) in runs.items():
        penalty = 1e-2 if '-penalty-1e-2-' in name else 1e-3
        folder = root / name
        folder.mkdir(parents=True)
        (folder / 'run.json').write_text(json.dumps({
            'dataset': 'mnist', 'method': method, 'run': name, 'synapse_counts': {'a': 1000, 'b': 100},
            'flags': {'N': 1, 'T': 8, 'seed': 2020, 'penalty': penalty, 's': 0.5, 'deepr_regrowth': regrowth}}))
        (folder / 'metrics.jsonl').write_text(json.dumps({'epoch': 0, 'test_acc': 0.8}) + '\n' + json.dumps(record) + '\n')
    assert report.main([str(root), '--out', str(tmp_path / 'out')]) == 0
    rows = {r['run']: r for r in csv.DictReader(open(tmp_path / 'out' / 'results.csv'))}
    trained = {name: row['trained_connectivity_pct'] for name, row in rows.items()}
    assert float(rows['lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep']['connectivity_pct']) == pytest.approx(350 / 11)
    assert float(trained['lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep']) == pytest.approx(175 / 11)
    for other in ('lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep-regrowth-active',
                  'soft-lr-1e-3-b-128-T-8-penalty-1e-3-s-0.5-deep'):
        assert float(trained[other]) == pytest.approx(350 / 11)
    assert trained['lr-1e-3-b-128-T-8-penalty-1e-2-s-0.5-deep'] == ''      # no regrowth counts
    summary = {r['setting']: r for r in csv.DictReader(open(tmp_path / 'out' / 'summary.csv'))
               if r['method'] == 'deep'}
    assert float(summary['penalty 1e-3, s 0.5']['trained_connectivity_mean']) == pytest.approx(175 / 11)
    assert '| Deep R | penalty 1e-3, s 0.5 | 8 | 1 | 2 | 90.00 | 90.00 |  | 31.82 | 15.91 |' in \
        (tmp_path / 'out' / 'summary.md').read_text()
    assert summary['penalty 1e-2, s 0.5']['trained_connectivity_mean'] == ''
    assert report.placeholder_estimate(1000, 300, 140, 0) == 0.0
    with pytest.raises(ValueError, match='regrown'):
        report.placeholder_estimate(1000, 300, 700, 5)


def test_matched_connectivity_reads_the_reference_curve_on_a_log_axis(tmp_path, capsys):
    # Grad R at 4% (96.0) and 16% (98.0): at 8%, halfway on the log axis, the line reads 97.0;
    # Deep R there at 97.5 is +0.50 pp. Deep R at 2% lies below Grad R's span.
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
    import matched_connectivity

    assert matched_connectivity.interpolate([(16.0, 98.0), (4.0, 96.0)], 8.0) == pytest.approx(97.0)
    assert matched_connectivity.interpolate([(4.0, 96.0), (16.0, 98.0)], 2.0) is None
    # A Grad R setting still training (at 8%) is left out of the curve.
    head = ['dataset', 'method', 'setting', 'T', 'n', 'training_done', 'final_acc_mean', 'tail_acc_mean',
            'trained_connectivity_mean']
    rows = [['mnist', 'grad', 'penalty 1e-2', '8', '3', 'true', '98.0', '98.2', '16'],
            ['mnist', 'grad', 'penalty 2e-2', '8', '1', 'false', '90.0', '90.0', '8'],
            ['mnist', 'grad', 'penalty 3e-2', '8', '1', 'true', '96.0', '96.2', '4'],
            ['mnist', 'deep', 'penalty 1e-3', '8', '3', 'true', '97.5', '', '8'],
            ['mnist', 'deep', 'penalty 1e-2', '8', '1', 'true', '97.0', '97.1', '2'],
            ['mnist', 'no_prune', '', '8', '2', 'true', '98.1', '98.0', '100']]
    path = tmp_path / 'summary.csv'
    path.write_text('\n'.join(','.join(r) for r in [head, *rows]) + '\n')
    assert matched_connectivity.main([str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        'mnist grad penalty 2e-2: still training, left out',
        "mnist, T = 8: against Grad R's curve",
        '  Deep R penalty 1e-3 (n 3) at 8.00% trained: final 97.50% against Grad R 97.00% (+0.50 pp)',
        "  Deep R penalty 1e-2 (n 1) at 2.00% trained: final 97.00%, outside Grad R's span (its nearest "
        "setting: 96.00% at 4.00%); last 16 97.10%, outside Grad R's span (its nearest setting: 96.20% at 4.00%)"]
    assert matched_connectivity.main([str(tmp_path / 'missing.csv')]) == 2
    assert 'is not a file' in capsys.readouterr().err
    path.write_text('dataset,method\nmnist,grad\n')
    assert matched_connectivity.main([str(path)]) == 2
    assert 'lacks the columns' in capsys.readouterr().err
    assert matched_connectivity.interpolate([(4.0, 96.0)], 4.0) == 96.0
