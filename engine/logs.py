"""What a run writes for people: TensorBoard scalars and histograms, the per-epoch
``metrics.jsonl`` record, the console lines and the ``-test`` report.

Tags and their meaning: ``docs/method.md``, "Logging".
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from torch.utils.tensorboard import SummaryWriter

from engine.methods import Method
from engine.metrics import prune_regrow_counts, sparsity_report
from snn import synapses


def log_epoch(writer, model: nn.Module, method: Method, synapse_optimizer: torch.optim.Optimizer,
              epoch: int, step: int, histograms: bool, acc: float, rates: dict, before: dict,
              train_s: float, test_s: float) -> dict:
    """Write one epoch's TensorBoard scalars (and, when ``histograms``, firing rates and
    weight histograms, and the histograms of the method's hidden strength theta where it has
    one: ``Method.strength``) and return its ``metrics.jsonl`` record.

    ``before`` maps each synapse tensor's name to its linked mask at the previous
    evaluation (updated in place) for the prune/regrow counts.
    """
    report = sparsity_report(model)
    writer.add_scalar('test_acc', acc, epoch)
    own = method.scalars(synapse_optimizer) if method.scalars is not None else {}
    for tag, value in own.items():
        writer.add_scalar(tag, value, epoch)
    if 'with_bn' in report:
        writer.add_scalar('sparsity/with bn', report['with_bn'], epoch)
        writer.add_scalar('sparsity/without bn', report['overall'], epoch)
    else:
        writer.add_scalar('sparsity', report['overall'], epoch)
    counts = prune_regrow_counts(model, before)
    for name, c in counts.items():
        writer.add_scalar(f'layer sparsity/{name}', report['layers'][name], epoch)
        writer.add_scalar(f'prune_cnt/{name}', c['pruned'], epoch)
        writer.add_scalar(f'regrow_cnt/{name}', c['regrown'], epoch)
        writer.add_scalar(f'prune-regrow/{name}', c['pruned'] - c['regrown'], epoch)
    if histograms:
        for layer, r in rates.items():
            writer.add_scalar(f'avg_firing_rate/{layer}', r['avg_firing_rate'], epoch)
            writer.add_scalar(f'nonfire_prop/{layer}', r['nonfire_prop'], epoch)
        weights = synapses(model)
        thetas = method.strength(synapse_optimizer, weights) if method.strength is not None else {}
        for name, p in weights.items():
            writer.add_histogram(f'{name}-w', p.detach(), epoch)
            if name in thetas:
                writer.add_histogram(f'{name}-theta', thetas[name], epoch)
    writer.flush()
    record = {'epoch': epoch, 'step': step, 'test_acc': acc,
              'sparsity': report['overall'], 'layer_sparsity': report['layers'],
              'prune_regrow': counts,
              'firing_rate': {k: r['avg_firing_rate'] for k, r in rates.items()},
              'train_seconds': round(train_s, 3), 'test_seconds': round(test_s, 3)}
    if 'with_bn' in report:
        record['sparsity_with_bn'] = report['with_bn']
    return {**record, **own}


def epoch_line(record: dict, best_acc: float) -> str:
    """The console line of a finished epoch."""
    syn = ', '.join(f'{k} {v:.4f}' for k, v in record['layer_sparsity'].items())
    return (f"epoch {record['epoch']}: test_acc {record['test_acc']:.4f} (best {best_acc:.4f}), "
            f"sparsity {record['sparsity']:.4f} [{syn}], "
            f"train {record['train_seconds']:.1f} s, test {record['test_seconds']:.1f} s")


def print_test_report(name: str, epoch: int, model: nn.Module, acc: float, rates: dict,
                      model_dir: Path) -> None:
    """``-test``: print accuracy, sparsities and firing rates; save per-neuron firing rates
    as ``<model_dir>/firing_rate-<layer>.npy``."""
    report = sparsity_report(model)
    print(f'run {name}, checkpoint of epoch {epoch}')
    print(f'test_acc {acc:.4f}')
    for layer, s in report['layers'].items():
        print(f'layer sparsity {layer}: {s:.4f}')
    if 'with_bn' in report:
        print(f"sparsity without bn {report['overall']:.4f}")
        print(f"sparsity with bn {report['with_bn']:.4f}")
    else:
        print(f"sparsity {report['overall']:.4f}")
    for layer, r in rates.items():
        path = model_dir / f'firing_rate-{layer}.npy'
        np.save(path, r['per_neuron'])
        print(f"firing rate {layer}: {r['avg_firing_rate']:.4f} (non-firing {r['nonfire_prop']:.4f}) -> {path}")


def resumed_writer(log_dir, epoch: int, kept: list[dict]) -> SummaryWriter:
    """A TensorBoard writer that continues the run's log at ``epoch``.

    TensorBoard purges every tag of a folder from one step on, while the per-epoch tags count
    epochs and ``train/*`` counts steps. So the log is purged from step ``epoch`` (every
    per-epoch point of an epoch that is trained again goes), and the ``train/*`` points of
    finished epochs at steps >= ``epoch``, which the purge also removes, are written again
    from ``metrics.jsonl``. Afterwards every per-epoch tag has one point per finished epoch
    and no ``train/*`` point of a finished epoch is lost.

    TensorBoard reads a folder's event files in name order, and a name starts with the second
    it was opened in, then host, pid and a counter compared as text. So the new file is opened
    in a later second than every file already there (a wait of at most 2 s, for a resume in
    the same second as an earlier file, as in-process tests do); otherwise it could be read
    before the file it purges, and the purge would drop the points written after it. A file
    further ahead of this clock (a clock set back, another machine's clock) gets one warning
    line on stderr and no wait.
    """
    _after_last_event_file(Path(log_dir))
    writer = SummaryWriter(str(log_dir), purge_step=epoch)
    for record in kept:
        for step, acc, loss in record.get('train', []):
            if step >= epoch:
                writer.add_scalar('train/acc', acc, step)
                writer.add_scalar('train/loss', loss, step)
    return writer


def _after_last_event_file(log_dir: Path) -> None:
    """Sleep until the clock's whole second is past that of every event file in ``log_dir``
    (``events.out.tfevents.<second>.…``), if that is at most 2 s away; warn instead if it is
    further."""
    seconds = [int(m.group(1)) for f in log_dir.glob('events.out.tfevents.*')
               if (m := re.match(r'events\.out\.tfevents\.(\d+)\.', f.name))]
    wait = max(seconds) + 1 - time.time() if seconds else 0.0
    if 0 < wait <= 2:
        time.sleep(wait)
    elif wait > 2:
        print(f'warning: {log_dir} holds a TensorBoard event file from {wait - 1:.0f} s ahead of this '
              f'clock; TensorBoard may show the resumed points out of order', file=sys.stderr)


class NullWriter:
    """A TensorBoard writer that writes nothing (ranks > 0)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    add_histogram = add_scalar

    def flush(self) -> None:
        pass

    close = flush
