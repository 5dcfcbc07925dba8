"""Connectivity of a Deep R checkpoint counted two ways: linked synapses (``|w| >= 1e-10``, what
``metrics.jsonl`` and the report count) and trained ones (linked and active in the optimizer's
state). They differ where hard Deep R's released regrowth holds the sparsity at ``max_s`` with
``+eps`` placeholders that are inactive and zeroed at the next step (docs/method.md, "Regrowth in
hard Deep R").

    python benchmarks/trained_connectivity.py DUMP/models/RUN/checkpoint.pt

Prints one line per synapse tensor and one for the whole network: synapses, linked %, trained %,
placeholders % (linked, not active). Exit status 2 with one line when the checkpoint holds no
optimizer state with an ``active`` mask (a method other than Deep R).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402


def main(argv: list[str]) -> int:
    """Print the linked, trained and placeholder share (% of synapses) of each synapse tensor
    of the checkpoint ``argv[0]`` and of all together; return the exit status (0, or 2 with
    one line on stderr for a bad argument or a checkpoint without Deep R's ``active`` masks).
    Source: docs/method.md, "Regrowth in hard Deep R"."""
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print('trained_connectivity.py: give one checkpoint file (DUMP/models/RUN/checkpoint.pt)', file=sys.stderr)
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
    total = ['all synapses', *(sum(r[i] for r in rows) for i in (1, 2, 3))]
    for name, n, linked, trained in [*rows, total]:
        print(f'{name}: {n} synapses, linked {100 * linked / n:.2f}%, trained {100 * trained / n:.2f}%, '
              f'placeholders {100 * (linked - trained) / n:.2f}%')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
