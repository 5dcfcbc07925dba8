"""The results report of one or more dump folders: a table and the paper's figures.

Usage::

    python report.py DUMP_DIR [DUMP_DIR ...] [--out DIR] [--keep-into DIR]

Reads ``<DUMP_DIR>/logs/<run>/run.json`` (written when a run starts, ``engine/runinfo.py``)
and ``metrics.jsonl`` (one record per epoch) of every run (also ``<DUMP_DIR>/<run>/``, the
layout of the runs kept in ``docs/results/``) and writes into ``--out`` (default
``<first DUMP_DIR>/report``):

- ``results.csv`` and ``results.md``: one row per run (columns :data:`BASE_COLUMNS`, the
  per-layer connectivity columns, then :data:`TAIL_COLUMNS`);
- ``summary.csv`` and ``summary.md``: one row per setting, the runs that differ only in the
  seed grouped: mean, sample standard deviation and number of runs of the final and best
  accuracy, of the accuracy averaged over the last :data:`TAIL_EPOCHS` epochs and of the
  connectivity (columns :data:`SUMMARY_COLUMNS`);
- ``accuracy_vs_connectivity.png`` / ``.svg``: test accuracy against connectivity (log
  scale), one point per setting with error bars of one standard deviation over the seeds,
  one series per (method, data set): the final accuracy, as in the comparison figure of Chen
  et al. 2021, and beside it the accuracy averaged over the last :data:`TAIL_EPOCHS` epochs;
- ``curves.png``: test accuracy and connectivity against epoch, one line per run, labelled
  by method, setting and seed.

The accuracy loss is measured against the mean final accuracy of the finished unpruned runs
of the same data set, ``T``, ``-N`` and amount of data (:func:`comparable`); seeds are grouped only
among such runs too.

``--keep-into DIR`` first copies every finished run of the DUMP_DIRs (its last epoch is its
``-N``) into ``DIR/<run>/``, as ``docs/results/mnist/`` keeps them: ``metrics.jsonl`` byte for
byte and ``run.json`` with each flag that is an absolute path reduced to its last component
(:func:`keep_finished`). A run already in DIR is left as it is.

Connectivity is the percentage of linked synapses (``|w| >= 1e-10``), BatchNorm never
counted (``docs/method.md``, "Sparsity and rewiring counts"). The trained connectivity leaves
out the ``+eps`` placeholders of a method whose ``Method.placeholders`` says it holds them (hard
Deep R with the released regrowth), estimated from the regrowth counts of the last
:data:`TAIL_EPOCHS` epochs (:func:`trained_at_end`), and blank when they are missing; for
every other run it is the connectivity. The figure plots the trained connectivity. Exit status 2, with one line
on stderr, when a DUMP_DIR does not exist, no run is found, a file cannot be read or
written, or ``--keep-into`` is refused (:func:`keep_finished`).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import sys
from pathlib import Path

from engine.methods import METHODS, sci

PROG = 'report.py'
BASE_COLUMNS = ['run', 'dataset', 'method', 'setting', 'penalty', 's', 'T', 'epochs_done', 'training_done',
                'final_acc_pct', 'best_acc_pct', 'tail_acc_pct', 'tail_acc_sd_pp', 'connectivity_pct',
                'trained_connectivity_pct']
TAIL_COLUMNS = ['synapses_kept', 'acc_loss_pp', 'sops_per_image', 'sops_epoch', 'code']
TAIL_EPOCHS = 16
"""``tail_acc``: the test accuracy averaged over a run's last 16 epochs, which smooths the
epoch-to-epoch spread of the final accuracy (``tail_acc_sd_pp``: its sample sd)."""
SUMMARY_COLUMNS = ['dataset', 'method', 'setting', 'T', 'n', 'seeds', 'epochs_done', 'training_done',
                   'final_acc_mean', 'final_acc_sd', 'best_acc_mean', 'best_acc_sd',
                   'tail_acc_mean', 'tail_acc_sd', 'connectivity_mean', 'connectivity_sd',
                   'trained_connectivity_mean', 'trained_connectivity_sd', 'acc_loss_pp', 'sops_per_image']


class ReportError(Exception):
    """Nothing to report on: one line on stderr, exit status 2."""


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f'{PROG}: warning: {message}', file=sys.stderr)


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, in file order; malformed lines (not a JSON object
    with an integer ``epoch``) are skipped with one warning line naming the file."""
    records, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get('epoch'), int):
                raise ValueError
        except ValueError:
            bad.append(number)
            continue
        records.append(record)
    if bad:
        warn(f'{path}: skipped {len(bad)} malformed line(s): {", ".join(map(str, bad))}')
    return records


def load_runs(dump_dirs: list[Path]) -> list[dict]:
    """Every run under ``<dump_dir>/logs/`` that has a ``run.json``: ``{'info': run.json,
    'records': metrics records, 'dir': its folder}`` (records sorted by epoch, a repeated
    epoch's last one kept).

    Raises:
        ReportError: a dump folder does not exist.
    """
    runs = []
    for dump in dump_dirs:
        if not dump.is_dir():
            raise ReportError(f'{dump}: no such folder')
        folders = [p for p in (dump / 'logs').glob('*') if p.is_dir() and not p.name.startswith('.')]
        folders += [p for p in dump.glob('*') if (p / 'run.json').exists() and not p.name.startswith('.')]
        for log_dir in sorted(folders):
            info_path = log_dir / 'run.json'
            if not info_path.exists():
                warn(f'{log_dir}: no run.json (a run started before run.json existed?); skipped')
                continue
            try:
                info = json.loads(info_path.read_text())
                info['flags']['N']
            except (ValueError, KeyError, TypeError):
                warn(f'{info_path}: not a run.json record; skipped')
                continue
            metrics = log_dir / 'metrics.jsonl'
            by_epoch = {r['epoch']: r for r in read_records(metrics)} if metrics.exists() else {}
            runs.append({'info': info, 'records': [by_epoch[e] for e in sorted(by_epoch)], 'dir': log_dir})
    return runs


def _connectivity(sparsity) -> float | None:
    return None if sparsity is None else 100.0 * (1.0 - sparsity)


def placeholder_estimate(n: int, linked: int, pruned: int, regrown: int) -> float:
    """Estimated number of hard Deep R's ``+eps`` placeholders (linked, never trained) in a
    synapse tensor of ``n`` synapses at an epoch's end, from that epoch's counts: ``linked``
    now, and ``pruned`` and ``regrown`` since the previous epoch's end (docs/method.md,
    "Trained connectivity of hard Deep R"): ``P = regrown * (n - linked) / (n - linked -
    pruned)``, 0 when nothing regrew. One epoch's estimate scatters with the last step's
    random draw (by about 0.1 pp of the synapses when placeholders are 40% of them).

    Raises:
        ValueError: ``regrown > 0`` and ``n - linked - pruned <= 0``, where the counts cannot
            come from the released regrowth.
    """
    if not regrown:
        return 0.0
    if n - linked - pruned <= 0:
        raise ValueError(f'regrown {regrown} with n - linked - pruned = {n - linked - pruned} <= 0')
    return regrown * (n - linked) / (n - linked - pruned)


def trained_at_end(records: list[dict], name: str, n: int) -> float | None:
    """Trained synapses of tensor ``name`` (``n`` synapses) at the last of ``records``: the
    least-squares line through the per-epoch ``linked - placeholder_estimate(...)`` of the
    last :data:`TAIL_EPOCHS` records that hold the counts, read at the last record's epoch
    (the trained count only falls, slowly, so the line averages out one epoch's scatter
    without lagging the trend), clamped to [0, linked]; the last record's linked count when
    no record of the window held placeholders. None when the last record lacks the counts or
    they are inconsistent (:func:`placeholder_estimate`)."""
    def linked(r):
        return round(n * (1 - r['layer_sparsity'][name]))
    with_counts = [r for r in records if name in r.get('layer_sparsity', {}) and name in r.get('prune_regrow', {})]
    if not with_counts or with_counts[-1] is not records[-1]:
        return None
    points, held = [], False
    for r in with_counts[-TAIL_EPOCHS:]:
        counts, now = r['prune_regrow'][name], linked(r)
        try:
            placeholders = placeholder_estimate(n, now, counts['pruned'], counts['regrown'])
        except ValueError:
            return None
        held = held or placeholders > 0
        points.append((r['epoch'], now - placeholders))
    if not held:                                        # no placeholders in the window: exact
        return float(linked(records[-1]))
    last_epoch = points[-1][0]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return min(max(mean_y + slope * (last_epoch - mean_x), 0.0), float(linked(records[-1])))


def holds_placeholders(info: dict) -> bool:
    """Whether the run of ``run.json`` record ``info`` counts never-trained placeholders as
    linked (its method's ``Method.placeholders``; hard Deep R with the released regrowth)."""
    method = METHODS.get(info.get('method'))
    return method is not None and method.placeholders is not None and method.placeholders(info.get('flags', {}))


def trained_per_tensor(info: dict, records: list[dict]) -> dict[str, float] | None:
    """Estimated trained synapses (:func:`trained_at_end`) of each synapse tensor named in the
    last of ``records``; None when there is none, or one lacks its ``synapse_counts`` entry or
    consistent regrowth counts."""
    counts, layers = info.get('synapse_counts', {}), records[-1].get('layer_sparsity', {}) if records else {}
    trained = {name: trained_at_end(records, name, counts[name]) if name in counts else None for name in layers}
    return trained if trained and None not in trained.values() else None


def _trained_connectivity(info: dict, records: list[dict], connectivity: float | None) -> float | None:
    """The run's trained connectivity (%) at its last record: estimated (:func:`trained_per_tensor`)
    for a run that holds placeholders (:func:`holds_placeholders`), else ``connectivity``; None
    (with a warning) when such a run's records lack consistent counts."""
    if connectivity is None or not holds_placeholders(info):
        return connectivity
    trained = trained_per_tensor(info, records)
    if trained is None:
        warn(f"{info['run']}: no consistent regrowth counts in its last record; its trained connectivity is left blank")
        return None
    return 100.0 * sum(trained.values()) / sum(info['synapse_counts'][name] for name in trained)


def summarize(run: dict) -> dict:
    """One table row of a run (see the module docstring); a missing value is None."""
    info, records = run['info'], run['records']
    flags, last = info['flags'], (records[-1] if records else {})
    grid = _grid(METHODS.get(info['method']))
    key = comparable(info)
    layers = {k: _connectivity(v) for k, v in last.get('layer_sparsity', {}).items()}
    counts = info.get('synapse_counts', {})
    kept = None
    if layers and set(layers) <= set(counts):
        kept = round(sum(counts[k] * c / 100 for k, c in layers.items()))
    with_sops = [r for r in records if isinstance(r.get('sops'), dict)]
    accs = [r['test_acc'] for r in records if 'test_acc' in r]
    tail = [100 * a for a in accs[-TAIL_EPOCHS:]] if len(accs) >= TAIL_EPOCHS else []
    tail_mean, tail_sd = _mean_sd(tail)
    connectivity = _connectivity(last.get('sparsity'))
    return {'run': info['run'], 'dataset': info['dataset'], 'method': info['method'],
            'penalty': flags.get('penalty') if '-penalty' in grid else None,
            's': flags.get('s') if '-s' in grid else None, 'T': flags.get('T'),
            'epochs_done': last['epoch'] + 1 if records else 0,
            'training_done': finished(run),
            'final_acc_pct': 100 * last['test_acc'] if 'test_acc' in last else None,
            'best_acc_pct': 100 * max(accs) if accs else None,
            'tail_acc_pct': tail_mean, 'tail_acc_sd_pp': tail_sd,
            'connectivity_pct': connectivity,
            'trained_connectivity_pct': _trained_connectivity(info, records, connectivity) if records else None,
            'layers': layers, 'synapses_kept': kept, 'acc_loss_pp': None,
            'sops_per_image': with_sops[-1]['sops'].get('total') if with_sops else None,
            'sops_epoch': with_sops[-1]['epoch'] if with_sops else None,
            'code': code_versions(info),
            'setting': setting(info), 'seed': flags.get('seed'),
            'comparable': key,
            'group': (key, re.sub(r'-seed-\d+', '', info['run']))}


def finished(run: dict) -> bool:
    """Whether a run of :func:`load_runs` has trained all its epochs: its last record's
    epoch is at least its ``-N``."""
    return bool(run['records']) and run['records'][-1]['epoch'] >= run['info']['flags']['N']


def comparable(info: dict) -> tuple:
    """What runs must share to be compared (a ``run.json`` record): data set, ``T``, ``-N``
    and the amount of data (``--train-size``, ``--test-size``; None for all of it). Seeds are
    grouped, and the accuracy loss is measured, only among runs with the same key."""
    flags = info['flags']
    return (info['dataset'], flags.get('T'), flags.get('N'), flags.get('train_size'), flags.get('test_size'))


def code_versions(info: dict) -> str:
    """The code versions that trained a run, in the order of ``run.json``'s ``starts``, a
    version repeated by consecutive starts named once, joined by ``+``: e.g. ``'89b8dfe'``,
    ``'89b8dfe+68f27d5'``. A record written before ``starts`` existed gives its one
    ``code_version``, that of its latest start; ``''`` when there is none."""
    starts = info.get('starts')
    versions = ([s.get('code_version', 'unknown') for s in starts if isinstance(s, dict)]
                if isinstance(starts, list) else [info.get('code_version', '')])
    return '+'.join(v for i, v in enumerate(versions) if v and (i == 0 or v != versions[i - 1]))


def _grid(method) -> tuple[str, ...]:
    """The flags a method varies; an unknown method's run is read as Grad R's and Deep R's."""
    return method.grid if method is not None else ('-penalty', '-s')


def setting(info: dict) -> str:
    """A run's setting in words: the flags its method varies (``Method.grid``), then its own
    flags that differ from their defaults, then ``--train-size`` / ``--test-size`` if given,
    e.g. ``'penalty 1e-3, s 0.95'``, ``'flat-width 0.5, stds-gradient st'`` or
    ``'penalty 1e-3, s 0.95, train-size 1024'``; ``''`` for a method without any."""
    method = METHODS.get(info['method'])
    grid = _grid(method)
    words = []
    for flag in grid:
        value = info['flags'].get(flag.lstrip('-').replace('-', '_'))
        if value is not None:
            text = sci(value) if flag == '-penalty' and value != 0 else f'{value:g}'   # 1e-2 as in run names; 0
            words.append(f'{flag.lstrip("-")} {text}')
    switches = set(method.argv[2:]) if method is not None else set()
    for option in (method.options if method is not None else ()):
        value = info['flags'].get(option.dest)
        if option.flags[0] not in switches and option.flags[0] not in grid and \
                value is not None and value != option.kwargs.get('default', False):
            words.append(f'{option.flags[0].lstrip("-")} {value}')
    for flag in ('train_size', 'test_size'):                   # a subset of the data set
        if info['flags'].get(flag) is not None:
            words.append(f'{flag.replace("_", "-")} {info["flags"][flag]}')
    return ', '.join(words)


def _mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values that are not None; the sd is
    None for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _unpruned_means(rows: list[dict]) -> dict:
    """Mean final accuracy of the finished unpruned runs per :func:`comparable` key (a run
    still training would pull the baseline towards its early epochs)."""
    unpruned = {key for key, m in METHODS.items() if not m.prunes}
    accs = {}
    for row in rows:
        if row['method'] in unpruned and row['training_done'] and row['final_acc_pct'] is not None:
            accs.setdefault(row['comparable'], []).append(row['final_acc_pct'])
    return {key: sum(v) / len(v) for key, v in accs.items()}


def add_accuracy_loss(rows: list[dict]) -> None:
    """Set ``acc_loss_pp`` = mean final accuracy of the finished unpruned runs with the same
    :func:`comparable` key (data set, T, -N, data amount) minus the row's final accuracy, in
    percentage points; None without any."""
    baselines = _unpruned_means(rows)
    for row in rows:
        base = baselines.get(row['comparable'])
        if base is not None and row['final_acc_pct'] is not None:
            row['acc_loss_pp'] = base - row['final_acc_pct']


def summarize_groups(rows: list[dict]) -> list[dict]:
    """One row per setting (:data:`SUMMARY_COLUMNS`): the runs whose names differ only in
    ``-seed-<seed>`` and whose :func:`comparable` keys are equal grouped, in the order of
    ``rows``."""
    groups = {}
    for row in rows:
        groups.setdefault(row['group'], []).append(row)
    baselines = _unpruned_means(rows)
    out = []
    for members in groups.values():
        first = members[0]
        summary = {'dataset': first['dataset'], 'method': first['method'], 'setting': first['setting'],
                   'T': first['T'], 'n': len(members),
                   'seeds': ' '.join(str(m['seed']) for m in sorted(members, key=lambda m: m['seed'] or 0)),
                   'epochs_done': min(m['epochs_done'] for m in members),
                   'training_done': all(m['training_done'] for m in members)}
        for key, column in (('final_acc', 'final_acc_pct'), ('best_acc', 'best_acc_pct'),
                            ('tail_acc', 'tail_acc_pct'), ('connectivity', 'connectivity_pct'),
                            ('trained_connectivity', 'trained_connectivity_pct')):
            summary[f'{key}_mean'], summary[f'{key}_sd'] = _mean_sd([m[column] for m in members])
        for key, column in (('tail_acc', 'tail_acc_pct'), ('trained_connectivity', 'trained_connectivity_pct')):
            if any(m[column] is None for m in members):               # over all n runs, or blank
                summary[f'{key}_mean'] = summary[f'{key}_sd'] = None
        base = baselines.get(first['comparable'])
        summary['acc_loss_pp'] = (None if base is None or summary['final_acc_mean'] is None
                                  else base - summary['final_acc_mean'])
        # SOPs are recorded every -i1 epochs: only those of a run's last epoch describe the
        # network whose accuracy and connectivity the row reports
        summary['sops_per_image'] = _mean_sd([m['sops_per_image'] for m in members
                                              if m['sops_epoch'] is not None
                                              and m['sops_epoch'] == m['epochs_done'] - 1])[0]
        out.append(summary)
    return out


def write_summary(summary: list[dict], out: Path) -> None:
    """``summary.csv`` (full precision) and ``summary.md`` (mean ± sd, two decimals)."""
    with open(out / 'summary.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(SUMMARY_COLUMNS)
        writer.writerows([_csv_cell(row[c]) for c in SUMMARY_COLUMNS] for row in summary)

    def pm(row, key):
        mean, sd = row[f'{key}_mean'], row[f'{key}_sd']
        if mean is None:
            return ''
        return f'{mean:.2f}' if sd is None else f'{mean:.2f} ± {sd:.2f}'
    head = ['method', 'setting', 'T', 'n', 'epochs', 'final acc %', 'best acc %',
            f'last {TAIL_EPOCHS} epochs acc %', 'connectivity %', 'trained %', 'acc loss pp', 'SOPs / image']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in summary:
        method = METHODS.get(row['method'])
        cells = [method.label if method is not None else row['method'], row['setting'] or '–', row['T'],
                 row['n'], row['epochs_done'], pm(row, 'final_acc'), pm(row, 'best_acc'),
                 pm(row, 'tail_acc'), pm(row, 'connectivity'), pm(row, 'trained_connectivity'),
                 '' if row['acc_loss_pp'] is None else f"{row['acc_loss_pp']:.2f}",
                 '' if row['sops_per_image'] is None else f"{row['sops_per_image']:,.0f}"]
        lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
    (out / 'summary.md').write_text('\n'.join(lines) + '\n')


def _sort_key(row: dict):
    return (row['dataset'], list(METHODS).index(row['method']) if row['method'] in METHODS else len(METHODS),
            row['penalty'] or 0.0, row['s'] or 0.0, row['run'])


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """The columns (base, ``connectivity_pct:<layer>`` for the union of layers, tail) and one
    list of values per row, None where a value is missing."""
    layers = sorted({name for row in rows for name in row['layers']})
    columns = BASE_COLUMNS + [f'connectivity_pct:{n}' for n in layers] + TAIL_COLUMNS
    values = [[row[c] for c in BASE_COLUMNS] + [row['layers'].get(n) for n in layers]
              + [row[c] for c in TAIL_COLUMNS] for row in rows]
    return columns, values


def _csv_cell(v) -> str:
    if v is None:
        return ''
    if isinstance(v, bool):
        return 'true' if v else 'false'
    return repr(v) if isinstance(v, float) else str(v)


def _md_cell(column: str, v) -> str:
    if isinstance(v, float) and column in ('penalty', 's'):
        return f'{v:g}'                       # settings as given: 1e-3 would read 0.00
    if isinstance(v, float) and not math.isnan(v):
        return f'{v:.2f}'
    return _csv_cell(v)


def write_tables(columns: list[str], values: list[list], out: Path) -> None:
    """``results.csv`` (full precision, empty cells for missing values) and ``results.md``
    (a Markdown table, numbers with two decimals; penalty and s as given)."""
    with open(out / 'results.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([_csv_cell(v) for v in row] for row in values)
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(_md_cell(c, v) for c, v in zip(columns, row)) + ' |' for row in values]
    (out / 'results.md').write_text('\n'.join(lines) + '\n')


PANELS = (('final_acc', 'final test accuracy (%)'),
          ('tail_acc', f'test accuracy, mean of the last {TAIL_EPOCHS} epochs (%)'))
"""The two panels of ``accuracy_vs_connectivity``: summary column prefix and axis label."""


def plot_accuracy_vs_connectivity(summary: list[dict], out: Path) -> None:
    """``accuracy_vs_connectivity.png`` and ``.svg``: test accuracy (%) against mean trained
    connectivity (%, log scale; see the module docstring), one point per setting with error
    bars of one standard deviation over its seeds, one series per (method, data set). Left panel: the mean final
    accuracy, as in the paper's figure; right panel: the mean over the seeds of the accuracy
    averaged over each run's last :data:`TAIL_EPOCHS` epochs (:data:`PANELS`). A setting
    without that mean (a run shorter than :data:`TAIL_EPOCHS` epochs) is left out of the right
    panel only, so the panels may show different points."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11.5, 4.6))
    xs = []
    for ax, (key, ylabel) in zip(axes, PANELS):
        series = {}
        for row in summary:
            if row['trained_connectivity_mean'] is None and key == PANELS[0][0]:
                warn(f"{row['method']} {row['setting']}: no trained connectivity; left out of the figure")
            if row[f'{key}_mean'] is not None and row['trained_connectivity_mean']:
                series.setdefault((row['method'], row['dataset']), []).append(
                    (row['trained_connectivity_mean'], row[f'{key}_mean'], row['trained_connectivity_sd'] or 0.0,
                     row[f'{key}_sd'] or 0.0))
        for (method, dataset), points in sorted(series.items(), key=lambda kv: _sort_key(
                {'dataset': kv[0][1], 'method': kv[0][0], 'penalty': 0, 's': 0, 'run': ''})):
            x, y, xerr, yerr = zip(*sorted(points))
            xs += x
            known = METHODS.get(method)
            style = {'marker': 'o', 'markersize': 6, **(known.style if known is not None else {})}
            ax.errorbar(x, y, yerr=yerr, xerr=xerr, capsize=3, **style,
                        label=f'{known.label if known is not None else method} ({dataset})')
        ax.set_xscale('log')
        ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))      # 1, 10, 100 rather than 10^k
        ax.set_xlabel('trained connectivity (% of synapses, log scale)')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=0.3)
        if series:
            ax.legend(fontsize='small')
    if xs and max(xs) < 10 * min(xs):                               # within a decade: label minors
        for ax in axes:
            ax.xaxis.set_minor_formatter(FormatStrFormatter('%g'))
    fig.suptitle('Accuracy against connectivity (error bars: one sd over the seeds)')
    fig.tight_layout()
    fig.savefig(out / 'accuracy_vs_connectivity.png', dpi=150)
    with plt.rc_context({'svg.hashsalt': PROG}):      # the same runs give the same file
        fig.savefig(out / 'accuracy_vs_connectivity.svg', dpi=150, metadata={'Date': None})
    plt.close(fig)


def plot_curves(runs: list[dict], out: Path) -> None:
    """``curves.png``: test accuracy (%) and connectivity (%) against epoch, one line per run."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, (acc_ax, conn_ax) = plt.subplots(2, 1, figsize=(7.5, 7.5), sharex=True)
    for run in runs:
        records = [r for r in run['records'] if 'test_acc' in r and 'sparsity' in r]
        if not records:
            continue
        epochs = [r['epoch'] for r in records]
        info = run['info']
        method = METHODS.get(info['method'])
        label = ' '.join(w for w in (method.label if method is not None else info['method'], setting(info),
                                     f"seed {info['flags'].get('seed')}") if w)
        acc_ax.plot(epochs, [100 * r['test_acc'] for r in records], marker='.', label=label)
        conn_ax.plot(epochs, [_connectivity(r['sparsity']) for r in records], marker='.')
    acc_ax.set_ylabel('test accuracy (%)')
    conn_ax.set_ylabel('connectivity (% of synapses kept)')
    conn_ax.set_xlabel('epoch')
    conn_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (acc_ax, conn_ax):
        ax.grid(True, alpha=0.3)
    if acc_ax.lines:
        acc_ax.legend(fontsize='x-small')
    fig.tight_layout()
    fig.savefig(out / 'curves.png', dpi=150)
    plt.close(fig)


def keep_finished(runs: list[dict], into: Path, dump_dirs: list[Path] = (),
                  say=print) -> tuple[list[str], list[str]]:
    """Copy each :func:`finished` run of ``runs`` (:func:`load_runs`) into ``into/<run>/``,
    where the runs kept in the repository live.

    ``metrics.jsonl`` is copied byte for byte; ``run.json`` is written with every flag whose
    value is an absolute path replaced by the path's last component, so that no path of the
    machine the run trained on is kept. Each run is written into a temporary folder
    (``.<run>.tmp``, which :func:`load_runs` never reads) renamed into place, and removed
    again if the copy fails, so a failed copy leaves no half run. A run whose folder already
    exists in ``into`` is not touched. ``say`` gets one line per run as it is handled.

    Returns ``(kept, already)``: the names of the runs copied and of those already there.

    Raises:
        ReportError: ``into`` is one of ``dump_dirs`` or its ``logs/`` (the report would then
            read each run twice), or two finished runs share a name (which one to keep is
            not for the order of the folders to decide); nothing is copied.
        OSError: ``into`` or a run's files cannot be written or read (the line names them).
    """
    target_dir = into.resolve()
    for dump in dump_dirs:
        if target_dir in (dump.resolve(), (dump / 'logs').resolve()):
            raise ReportError(f'--keep-into {into}: is a DUMP_DIR or its logs/; give another folder')
    done = [r for r in runs if finished(r)]
    names = [r['info']['run'] for r in done]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReportError(f'--keep-into: more than one finished run named {twice[0]}; keep them one folder at a time')
    into.mkdir(parents=True, exist_ok=True)
    kept, already = [], []
    for run in done:
        info = run['info']
        target = into / info['run']
        if target.exists():
            already.append(info['run'])
            say(f'{PROG}: {info["run"]} is already in {into}; left as it is')
            continue
        flags = {k: (Path(v).name if isinstance(v, str) and Path(v).is_absolute() else v)
                 for k, v in info['flags'].items()}
        tmp = into / f'.{info["run"]}.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            (tmp / 'run.json').write_text(json.dumps({**info, 'flags': flags}, indent=1) + '\n')
            shutil.copyfile(run['dir'] / 'metrics.jsonl', tmp / 'metrics.jsonl')
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        kept.append(info['run'])
        say(f'{PROG}: kept {info["run"]} in {into}')
    return kept, already


def build_report(dump_dirs: list[Path], out: Path, runs: list[dict] | None = None) -> list[dict]:
    """Read the runs of ``dump_dirs`` (or take ``runs``, :func:`load_runs` of them) and write
    the tables and figures into ``out``.

    Returns the rows written. Raises :class:`ReportError` when a folder is missing or no
    run is found.
    """
    runs = load_runs(dump_dirs) if runs is None else runs
    if not runs:
        raise ReportError(f'no runs (logs/<run>/run.json) under {", ".join(map(str, dump_dirs))}')
    rows = [summarize(run) for run in runs]
    add_accuracy_loss(rows)
    rows.sort(key=_sort_key)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(*table(rows), out)
    summary = summarize_groups(rows)
    write_summary(summary, out)
    import matplotlib
    matplotlib.use('Agg')
    plot_accuracy_vs_connectivity(summary, out)
    plot_curves(runs, out)
    return rows


def main(argv=None) -> int:
    """Command line: ``report.py DUMP_DIR [DUMP_DIR ...] [--out DIR] [--keep-into DIR]``;
    returns the exit status (0, or 2 with one line on stderr)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('dump_dirs', nargs='+', type=Path, metavar='DUMP_DIR',
                        help='a --dump-dir of the training runs (holds logs/<run>/), or a folder of '
                             'kept runs (<run>/, as docs/results/mnist)')
    parser.add_argument('--out', type=Path, default=None, metavar='DIR',
                        help='where the report goes (default: <first DUMP_DIR>/report)')
    parser.add_argument('--keep-into', type=Path, default=None, metavar='DIR',
                        help='first copy every finished run (its last epoch is its -N) into DIR/<run>/: '
                             'metrics.jsonl, and run.json with its absolute path flags cut to their '
                             'last component; runs already there are left as they are. '
                             'E.g. docs/results/mnist')
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.dump_dirs[0] / 'report'
    try:
        runs = load_runs(args.dump_dirs)
        if args.keep_into is not None:
            keep_finished(runs, args.keep_into, args.dump_dirs)
        rows = build_report(args.dump_dirs, out, runs)
    except ReportError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2
    except OSError as err:
        where = f'{err.filename}: ' if err.filename else ''
        print(f'{PROG}: error: {where}{err.strerror or err}', file=sys.stderr)
        return 2
    print(f'{PROG}: {len(rows)} run(s) -> {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
