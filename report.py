"""The results report of one or more dump folders: a table and the paper's figures.

Usage::

    python report.py DUMP_DIR [DUMP_DIR ...] [--out DIR]

Reads ``<DUMP_DIR>/logs/<run>/run.json`` (written when a run starts, ``engine/runinfo.py``)
and ``metrics.jsonl`` (one record per epoch) of every run and writes into ``--out`` (default
``<first DUMP_DIR>/report``):

- ``results.csv`` and ``results.md``: one row per run (columns :data:`BASE_COLUMNS`, the
  per-layer connectivity columns, then :data:`TAIL_COLUMNS`);
- ``accuracy_vs_connectivity.png`` / ``.svg``: final test accuracy against connectivity,
  one series per (method, data set), as in the comparison figure of Chen et al. 2021;
- ``curves.png``: test accuracy and connectivity against epoch, one line per run.

Connectivity is the percentage of linked synapses (``|w| >= 1e-10``), BatchNorm never
counted (``docs/method.md``, "Sparsity and rewiring counts"). Exit status 2, with one line
on stderr, when a DUMP_DIR does not exist or no run is found.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from engine.methods import METHODS

PROG = 'report.py'
BASE_COLUMNS = ['run', 'dataset', 'method', 'penalty', 's', 'T', 'epochs_done', 'training_done',
                'final_acc_pct', 'best_acc_pct', 'connectivity_pct']
TAIL_COLUMNS = ['synapses_kept', 'acc_loss_pp', 'sops_per_image']


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
    'records': metrics records}`` (records sorted by epoch, a repeated epoch's last one kept).

    Raises:
        ReportError: a dump folder does not exist.
    """
    runs = []
    for dump in dump_dirs:
        if not dump.is_dir():
            raise ReportError(f'{dump}: no such folder')
        for log_dir in sorted(p for p in (dump / 'logs').glob('*') if p.is_dir()):
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
            runs.append({'info': info, 'records': [by_epoch[e] for e in sorted(by_epoch)]})
    return runs


def _connectivity(sparsity) -> float | None:
    return None if sparsity is None else 100.0 * (1.0 - sparsity)


def summarize(run: dict) -> dict:
    """One table row of a run (see the module docstring); a missing value is None."""
    info, records = run['info'], run['records']
    flags, last = info['flags'], (records[-1] if records else {})
    method = METHODS.get(info['method'])
    grid = method.grid if method is not None else ('-penalty', '-s')
    layers = {k: _connectivity(v) for k, v in last.get('layer_sparsity', {}).items()}
    counts = info.get('synapse_counts', {})
    kept = None
    if layers and set(layers) <= set(counts):
        kept = round(sum(counts[k] * c / 100 for k, c in layers.items()))
    with_sops = [r for r in records if isinstance(r.get('sops'), dict)]
    accs = [r['test_acc'] for r in records if 'test_acc' in r]
    return {'run': info['run'], 'dataset': info['dataset'], 'method': info['method'],
            'penalty': flags.get('penalty') if '-penalty' in grid else None,
            's': flags.get('s') if '-s' in grid else None, 'T': flags.get('T'),
            'epochs_done': last['epoch'] + 1 if records else 0,
            'training_done': bool(records) and last['epoch'] >= flags['N'],
            'final_acc_pct': 100 * last['test_acc'] if 'test_acc' in last else None,
            'best_acc_pct': 100 * max(accs) if accs else None,
            'connectivity_pct': _connectivity(last.get('sparsity')),
            'layers': layers, 'synapses_kept': kept, 'acc_loss_pp': None,
            'sops_per_image': with_sops[-1]['sops'].get('total') if with_sops else None,
            'started': info.get('started', '')}


def add_accuracy_loss(rows: list[dict]) -> None:
    """Set ``acc_loss_pp`` = final accuracy of the newest (latest ``started``) unpruned run
    with the same data set and T minus the row's, in percentage points; None without one."""
    baselines = {}
    unpruned = {key for key, m in METHODS.items() if not m.prunes}
    for row in sorted((r for r in rows if r['method'] in unpruned and r['final_acc_pct'] is not None),
                      key=lambda r: r['started']):
        baselines[row['dataset'], row['T']] = row['final_acc_pct']
    for row in rows:
        base = baselines.get((row['dataset'], row['T']))
        if base is not None and row['final_acc_pct'] is not None:
            row['acc_loss_pp'] = base - row['final_acc_pct']


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


def plot_accuracy_vs_connectivity(rows: list[dict], out: Path) -> None:
    """``accuracy_vs_connectivity.png`` and ``.svg``: final test accuracy (%) against
    connectivity (%, log scale), one series per (method, data set)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = {}
    for row in rows:
        if row['final_acc_pct'] is not None and row['connectivity_pct']:
            series.setdefault((row['method'], row['dataset']), []).append(
                (row['connectivity_pct'], row['final_acc_pct']))
    for (method, dataset), points in sorted(series.items(), key=lambda kv: _sort_key(
            {'dataset': kv[0][1], 'method': kv[0][0], 'penalty': 0, 's': 0, 'run': ''})):
        x, y = zip(*sorted(points))
        known = METHODS.get(method)
        style = {'marker': 'o', 'markersize': 6, **(known.style if known is not None else {})}
        ax.plot(x, y, **style, label=f'{known.label if known is not None else method} ({dataset})')
    ax.set_xscale('log')
    ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))      # 1, 10, 100 rather than 10^k
    xs = [x for points in series.values() for x, _ in points]
    if xs and max(xs) < 10 * min(xs):                           # within a decade: label minors
        ax.xaxis.set_minor_formatter(FormatStrFormatter('%g'))
    ax.set_xlabel('connectivity (% of synapses kept, log scale)')
    ax.set_ylabel('final test accuracy (%)')
    ax.set_title('Accuracy against connectivity')
    ax.grid(True, which='both', alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    for suffix in ('png', 'svg'):
        fig.savefig(out / f'accuracy_vs_connectivity.{suffix}', dpi=150)
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
        acc_ax.plot(epochs, [100 * r['test_acc'] for r in records], marker='.', label=run['info']['run'])
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


def build_report(dump_dirs: list[Path], out: Path) -> list[dict]:
    """Read the runs of ``dump_dirs`` and write the tables and figures into ``out``.

    Returns the rows written. Raises :class:`ReportError` when a folder is missing or no
    run is found.
    """
    runs = load_runs(dump_dirs)
    if not runs:
        raise ReportError(f'no runs (logs/<run>/run.json) under {", ".join(map(str, dump_dirs))}')
    rows = [summarize(run) for run in runs]
    add_accuracy_loss(rows)
    rows.sort(key=_sort_key)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(*table(rows), out)
    import matplotlib
    matplotlib.use('Agg')
    plot_accuracy_vs_connectivity(rows, out)
    plot_curves(runs, out)
    return rows


def main(argv=None) -> int:
    """Command line: ``report.py DUMP_DIR [DUMP_DIR ...] [--out DIR]``; returns the exit
    status (0, or 2 with one line on stderr)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('dump_dirs', nargs='+', type=Path, metavar='DUMP_DIR',
                        help='a --dump-dir of the training runs (holds logs/<run>/)')
    parser.add_argument('--out', type=Path, default=None,
                        help='where the report goes (default: <first DUMP_DIR>/report)')
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.dump_dirs[0] / 'report'
    try:
        rows = build_report(args.dump_dirs, out)
    except ReportError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2
    print(f'{PROG}: {len(rows)} run(s) -> {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
