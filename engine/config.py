"""The configuration of one run, resolved once from the command line and then frozen.

:func:`engine.cli.resolve` builds it after every flag has been checked; nothing changes it
afterwards, and no code below the command-line layer sees the argparse namespace.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch

from engine.methods import Method

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository: the default ``data/`` and ``runs/`` folders are in it."""


@dataclass(frozen=True)
class RunConfig:
    """What a run uses.

    The flags keep their command-line names and meanings (README, "Command line"): ``b``,
    ``lr``, ``penalty``, ``s``, ``T``, ``N``, ``i1``, ``i2``, ``seed``, ``eval_batch``,
    ``train_size``, ``test_size``, ``amp``, ``compile``, ``data_pipeline``, ``workers``,
    ``threads``, ``sync_bn``, ``test``, ``resume_from``, ``dataset_dir``, ``dump_dir``,
    ``gpu``; ``m`` is the ``-m`` value and ``options`` the method's own flags by name (e.g.
    ``soft``, ``deepr_regrowth``).

    Resolved: ``method`` (the :class:`engine.methods.Method` record), ``device`` (this
    process's torch device), ``threads`` and ``workers`` (CPU cores shared out), ``compile``
    (on when the toolchain is there), the processes (``rank``, ``local_rank``,
    ``world_size``; ``distributed`` under torchrun), ``data_source`` (which copy of the data
    set is read, where the experiment has several; None otherwise) and ``name`` (the run
    name).
    """
    prog: str
    name: str
    method: Method
    m: str
    options: Mapping
    b: int
    lr: float
    penalty: float
    s: float | None
    T: int
    N: int
    i1: int
    i2: int
    seed: int
    eval_batch: int
    train_size: int | None
    test_size: int | None
    amp: bool
    compile: bool
    data_pipeline: str
    workers: int
    threads: int
    sync_bn: bool
    test: bool
    resume_from: Path | None
    dataset_dir: Path
    dump_dir: Path
    gpu: int | None
    device: torch.device
    data_source: str | None = None
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False

    def __post_init__(self):
        object.__setattr__(self, 'options', MappingProxyType(dict(self.options)))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and console lines."""
        return self.rank == 0

    @property
    def log_dir(self) -> Path:
        """``<dump>/logs/<run>``: TensorBoard, ``metrics.jsonl``, ``run.json``."""
        return self.dump_dir / 'logs' / self.name

    @property
    def model_dir(self) -> Path:
        """``<dump>/models/<run>``: the checkpoints and ``-test``'s firing rates."""
        return self.dump_dir / 'models' / self.name

    def flags(self) -> dict:
        """Every flag by its command-line name, the method's own among them, and the resolved
        values (``distributed``, ``world_size``, ``data_source`` where there is one), as
        ``run.json`` records them."""
        skip = {'prog', 'name', 'method', 'options', 'rank', 'local_rank', 'data_source'}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out.update(self.options)
        if self.data_source is not None:
            out['data_source'] = self.data_source
        return out
