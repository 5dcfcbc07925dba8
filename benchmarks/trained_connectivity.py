"""Connectivity of a Deep R checkpoint counted two ways: linked synapses (``|w| >= 1e-10``, what
``metrics.jsonl`` and the report count) and trained ones (linked and active in the optimizer's
state). They differ where hard Deep R's released regrowth holds the sparsity at ``max_s`` with
``+eps`` placeholders that are inactive and zeroed at the next step (docs/method.md, "Regrowth in
hard Deep R").

    python benchmarks/trained_connectivity.py DUMP/models/RUN/checkpoint.pt
    python benchmarks/trained_connectivity.py docs/results/mnist/RUN      # a run's logs: an estimate

Prints one line per synapse tensor and one for the whole network: synapses, linked %, trained %,
placeholders % (linked, not active). Exit status 2 with one line when the checkpoint holds no
optimizer state with an ``active`` mask (a method other than Deep R).

Given a run's log folder (``run.json`` and ``metrics.jsonl``, as kept in ``docs/results/``)
instead, it estimates the same from the regrowth counts of each tensor's last 16 epochs
(``report.trained_per_tensor``; docs/method.md, "Trained connectivity of hard Deep R"),
only for hard Deep R with the released regrowth (exit status 2 otherwise).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from report import holds_placeholders, read_records, trained_per_tensor  # noqa: E402


def _print_rows(rows) -> None:
    """One line per (name, synapses, linked, trained) row, then the sum over all rows."""
    total = ['all synapses', *(sum(r[i] for r in rows) for i in (1, 2, 3))]
    for name, n, linked, trained in [*rows, total]:
        print(f'{name}: {n} synapses, linked {100 * linked / n:.2f}%, trained {100 * trained / n:.2f}%, '
              f'placeholders {100 * (linked - trained) / n:.2f}%')


def estimate_from_logs(folder: Path) -> int:
    """Estimate linked, trained and placeholder counts of a hard Deep R run (released
    regrowth) at its last epoch from its ``run.json`` and ``metrics.jsonl``
    (``report.trained_per_tensor``); print them as :func:`main` does and return 0, or 2 with
    one line on stderr when the run is not such a run or its logs lack consistent counts."""
    info = json.loads((folder / 'run.json').read_text())
    if not holds_placeholders(info):
        print(f'trained_connectivity.py: {folder} is not a hard Deep R run with the released regrowth; '
              'only such runs hold placeholders', file=sys.stderr)
        return 2
    records = read_records(folder / 'metrics.jsonl')
    trained = trained_per_tensor(info, records)
    if trained is None:
        print(f'trained_connectivity.py: {folder}: run.json and the last line of metrics.jsonl lack consistent '
              'synapse_counts, layer_sparsity and prune_regrow counts', file=sys.stderr)
        return 2
    counts, last = info['synapse_counts'], records[-1]
    print(f'{folder} (epoch {last["epoch"]}; estimated from the regrowth counts of the last epochs)')
    _print_rows([(name, counts[name], round(counts[name] * (1 - last['layer_sparsity'][name])), t)
                 for name, t in trained.items()])
    return 0


def main(argv: list[str]) -> int:
    """Print the linked, trained and placeholder share (% of synapses) of each synapse tensor
    of the checkpoint ``argv[0]`` and of all together, or their estimate when ``argv[0]`` is a
    run's log folder (:func:`estimate_from_logs`); return the exit status (0, or 2 with one
    line on stderr for a bad argument or a checkpoint without Deep R's ``active`` masks).
    Source: docs/method.md, "Regrowth in hard Deep R"."""
    if len(argv) == 1 and (Path(argv[0]) / 'run.json').is_file() and (Path(argv[0]) / 'metrics.jsonl').is_file():
        return estimate_from_logs(Path(argv[0]))
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print('trained_connectivity.py: give one checkpoint file (DUMP/models/RUN/checkpoint.pt) '
              'or one run\'s log folder (holding run.json and metrics.jsonl)', file=sys.stderr)
        return 2
    ckpt = engine.load_checkpoint(argv[0])
    # The synapse optimizer's parameter i is the model's i-th tensor of more than one dimension
    # (snn.synapse_parameters; a Deep R model's state dict holds no such buffer).
    names = [name for name, w in ckpt['model'].items() if w.dim() > 1]
    opt = ckpt['optimizers']['synapse']
    rows = []
    for index in (i for group in opt['param_groups'] for i in group['params']):
        state = opt['state'].get(index, {})
        if 'active' in state:
            linked = engine.metrics.linked(ckpt['model'][names[index]])
            trained = linked & (state['active'] != 0)
            rows.append((names[index], linked.numel(), linked.sum().item(), trained.sum().item()))
    if not rows:
        print(f'trained_connectivity.py: {argv[0]} holds no Deep R optimizer state (no active mask)', file=sys.stderr)
        return 2
    print(f'{argv[0]} (epoch {ckpt["epoch"]})')
    _print_rows(rows)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
