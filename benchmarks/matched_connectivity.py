"""Each method's accuracy against a reference method's curve at the same trained connectivity.

    python benchmarks/matched_connectivity.py docs/results/summary.csv [--reference grad]

Reads the per-setting means of ``report.py``'s ``summary.csv`` (one data set and ``T`` at a
time, finished settings only; settings still training are named and left out) and,
for every setting of every other pruning method, reads the reference method's curve at that
setting's mean trained connectivity: the straight line, on a log connectivity axis, between
the two reference settings that bracket it (docs/method.md, "Trained connectivity of hard
Deep R", for what "trained" leaves out). Prints one line per setting: its connectivity, its
final and last-16-epoch accuracy (mean over its n seeds), the reference's interpolated
values, and the differences in percentage points (positive: the setting is more accurate).
A setting outside the reference's span is named as such, with the reference's nearest
setting. The interpolation is a reading of
the curve, not a run: between two settings far apart it can miss a bend.

Exit status 2 with one line for a missing file, a summary without the needed columns or an
unknown reference method.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.methods import METHODS  # noqa: E402


def _float(cell: str) -> float | None:
    return float(cell) if cell not in ('', None) else None


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """The value at connectivity ``x`` on the straight line, in log(connectivity), between the
    two ``(connectivity, value)`` points that bracket it; None outside their span or for
    fewer than two points. ``points`` need not be sorted."""
    points = sorted(points)
    if len(points) == 1 and points[0][0] == x:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return (y0 + y1) / 2
            return y0 + (y1 - y0) * (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return None


def matched(rows: list[dict], reference: str) -> list[str]:
    """The printed lines for the ``summary.csv`` rows of one data set (module docstring)."""
    ref = [r for r in rows if r['method'] == reference]
    curves = {key: [(_float(r['trained_connectivity_mean']), _float(r[f'{key}_mean'])) for r in ref
                    if _float(r['trained_connectivity_mean']) and _float(r[f'{key}_mean']) is not None]
              for key in ('final_acc', 'tail_acc')}
    label = METHODS[reference].label
    lines = []
    for r in rows:
        method = METHODS.get(r['method'])
        x = _float(r['trained_connectivity_mean'])
        if r['method'] == reference or method is None or not method.prunes or not x:
            continue
        head = f'{method.label} {r["setting"]} (n {r["n"]}) at {x:.2f}% trained:'
        parts = []
        for key, name in (('final_acc', 'final'), ('tail_acc', 'last 16')):
            own, theirs = _float(r[f'{key}_mean']), interpolate(curves[key], x)
            if own is None:
                continue
            if theirs is None:
                end = (min if x < min(curves[key])[0] else max)(curves[key]) if curves[key] else None
                parts.append(f'{name} {own:.2f}%, outside {label}\'s span' + (
                    '' if end is None else f' (its nearest setting: {end[1]:.2f}% at {end[0]:.2f}%)'))
            else:
                parts.append(f'{name} {own:.2f}% against {label} {theirs:.2f}% ({own - theirs:+.2f} pp)')
        lines.append(f'{head} ' + '; '.join(parts))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('summary', type=Path, help="report.py's summary.csv")
    p.add_argument('--reference', default='grad', help='the method whose curve is read (default: grad)')
    args = p.parse_args(argv)
    if not args.summary.is_file():
        print(f'matched_connectivity.py: {args.summary} is not a file; give report.py\'s summary.csv', file=sys.stderr)
        return 2
    if args.reference not in METHODS:
        print(f'matched_connectivity.py: --reference {args.reference!r} is not a method; allowed: '
              f'{", ".join(METHODS)}', file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(args.summary, newline='')))
    needed = {'dataset', 'method', 'setting', 'n', 'T', 'training_done', 'final_acc_mean', 'tail_acc_mean',
              'trained_connectivity_mean'}
    if rows and not needed <= set(rows[0]):
        print(f'matched_connectivity.py: {args.summary} lacks the columns {sorted(needed - set(rows[0]))}; '
              'regenerate it with report.py', file=sys.stderr)
        return 2
    unfinished = [r for r in rows if r['training_done'] != 'true']
    for r in unfinished:
        print(f'{r["dataset"]} {r["method"]} {r["setting"]}: still training, left out')
    done = [r for r in rows if r['training_done'] == 'true']
    for dataset, T in dict.fromkeys((r['dataset'], r['T']) for r in done):
        print(f'{dataset}, T = {T}: against {METHODS[args.reference].label}\'s curve')
        for line in matched([r for r in done if (r['dataset'], r['T']) == (dataset, T)], args.reference):
            print(f'  {line}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
