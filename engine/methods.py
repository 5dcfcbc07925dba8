"""The pruning methods, one record each: Grad R, Deep R, soft Deep R, no pruning and STDS.

A :class:`Method` says everything the rest of the code needs to know of a method: how the
command line selects it and which flags it owns and checks, its part of the run name, the
optimizer of its synapses, where its hidden strength lives (for the histograms), its label and
marker in the report and its flags in ``sweep.py``. The command line (``engine.cli``), the
optimizers of a run, ``run.json``, the logs, ``report.py`` and ``sweep.py`` read the records
and name no method themselves. A new method is one :func:`register` call (``docs/method.md``,
"Adding a method").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from deeprewire import DeepRewiring
from gradrewire import GradRewiring
from rewiring_base import HyperparameterError
from snn import synapse_parameters
from stds import STDSAdam, apply_stds


class MethodError(ValueError):
    """A flag of the method out of range: one line that names the flag."""


@dataclass(frozen=True)
class Option:
    """A command-line flag that belongs to some methods: ``flags`` and ``kwargs`` as for
    ``argparse.ArgumentParser.add_argument``; its value is read under ``dest``."""
    flags: tuple[str, ...]
    kwargs: dict

    @property
    def dest(self) -> str:
        return self.flags[0].lstrip('-').replace('-', '_')


@dataclass(frozen=True)
class Method:
    """One pruning method.

    Attributes:
        key: the method's name in ``run.json`` and the report, e.g. ``'soft_deep'``.
        argv: the command-line words that select it, e.g. ``('-m', 'deep', '-soft')``: the
            ``-m`` value first, then the ``store_true`` options that must be on.
        label: its name in the report.
        style: its points' matplotlib style in the report's figure (``marker``, ...).
        sweep: its name in ``sweep.py --methods``.
        optimizer: ``(config, model, steps_per_epoch) -> torch.optim.Optimizer`` of the
            model's synapses (``snn.synapse_parameters``); ``config`` is the run's
            :class:`engine.config.RunConfig`. It may reparameterise the synapses first.
        prunes: False for the unpruned reference, against which the report measures the
            accuracy loss.
        comparison: one of the Grad R paper's comparison (``sweep.py``'s default
            ``--methods``).
        options: the flags it owns; giving one of them with another method is an error.
        grid: the shared flags (``-penalty``, ``-s``) the method reads, which ``sweep.py``
            varies and the run name carries.
        check: ``(settings) -> None`` on the parsed flags (a mapping), raising
            :class:`MethodError` with the flag named; runs before any work.
        name_prefix: put in front of the run name (``'soft-'``, as released).
        name_middle: ``(flags) -> str`` before the ``-m`` value in the run name; default:
            the grid flags' values (:func:`grid_name`).
        name_tail: ``(flags) -> str`` appended after the seed part of the run name.
        strength: ``(optimizer, synapses) -> {name: theta}``: the hidden strength of each
            synapse tensor, histogrammed as ``<name>-theta``; None when it has none.
        scalars: ``(optimizer) -> {tag: float}``: the method's own numbers, logged every
            epoch to TensorBoard and ``metrics.jsonl``; None when it has none.
        placeholders: ``(flags) -> bool`` on a run's ``run.json`` flags: whether its logged
            connectivity counts linked synapses that are never trained (hard Deep R's
            released regrowth, docs/method.md, "Regrowth in hard Deep R"), so that the
            report estimates its trained connectivity apart; None: never.
    """
    key: str
    argv: tuple[str, ...]
    label: str
    style: dict
    sweep: str
    optimizer: Callable[[Any, torch.nn.Module, int], torch.optim.Optimizer]
    prunes: bool = True
    comparison: bool = True
    options: tuple[Option, ...] = ()
    grid: tuple[str, ...] = ()
    check: Callable[[dict], None] | None = None
    name_prefix: str = ''
    name_middle: Callable[[dict], str] | None = None
    name_tail: Callable[[dict], str] = field(default=lambda flags: '')
    strength: Callable[[torch.optim.Optimizer, dict], dict] | None = None
    scalars: Callable[[torch.optim.Optimizer], dict] | None = None
    placeholders: Callable[[dict], bool] | None = None

    @property
    def cli(self) -> str:
        """The value of ``-m``."""
        return self.argv[1]

    def selected_by(self, flags: dict) -> bool:
        """Whether the parsed flags select this method: the ``-m`` value and its switches."""
        switches = [a.lstrip('-').replace('-', '_') for a in self.argv[2:]]
        own = {o.dest for o in self.options if o.kwargs.get('action') == 'store_true'}
        return flags['m'] == self.cli and all(flags.get(d) is True for d in switches) and \
            not any(flags.get(d) is True for d in own - set(switches))


METHODS: dict[str, Method] = {}
"""Every registered method by key, in registration order (the report's order)."""


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (the command line, sweep and report see it).

    Raises:
        ValueError: a method of that key or with the same selecting words exists.
    """
    if method.key in METHODS or any(m.argv == method.argv for m in METHODS.values()):
        raise ValueError(f'a method {method.key!r} / {" ".join(method.argv)} is registered already')
    METHODS[method.key] = method
    return method


def unregister(key: str) -> None:
    """Remove a method (tests register toy methods)."""
    METHODS.pop(key, None)


def select(flags: dict) -> Method:
    """The method the parsed flags select.

    Raises:
        MethodError: an option given to a method that does not own it (e.g. ``-soft`` with
            ``-m grad``).
    """
    chosen = next((m for m in METHODS.values() if m.selected_by(flags)), None)
    owners: dict[str, list[Method]] = {}
    for m in METHODS.values():
        for o in m.options:
            owners.setdefault(o.flags[0], []).append(m)
    for flag, methods in owners.items():
        option = next(o for o in methods[0].options if o.flags[0] == flag)
        given = flags.get(option.dest) != option.kwargs.get('default', False if option.kwargs.get('action') == 'store_true' else None)
        if given and (chosen is None or chosen not in methods):
            clis = ' or '.join(dict.fromkeys(f'-m {m.cli}' for m in methods))
            raise MethodError(f'{flag} applies to {clis} only, got -m {flags["m"]}')
    if chosen is None:
        raise MethodError(f'-m {flags["m"]}: no such method')
    return chosen


def options() -> list[Option]:
    """Every method-owned option, each once, in registration order."""
    seen = {}
    for m in METHODS.values():
        for o in m.options:
            seen.setdefault(o.flags[0], o)
    return list(seen.values())


def sci(x: float) -> str:
    """``x`` in the short scientific notation of run names: 1e-3, 5e-4, 1.5e-2."""
    return np.format_float_scientific(x, trim='-', exp_digits=1)


def exact(x: float) -> str:
    """``x`` in its shortest form that reads back as the same float: 2, 0.5, 1.0000001."""
    return repr(float(x)).removesuffix('.0')


def grid_name(method: Method, flags: dict) -> str:
    """The run-name part of the shared flags the method reads: ``-penalty-1e-3-s-0.95``
    (``-s`` written in full, and left out when not given), or the method's own
    ``name_middle``."""
    if method.name_middle is not None:
        return method.name_middle(flags)
    part = f'-penalty-{sci(flags["penalty"])}' if '-penalty' in method.grid else ''
    if '-s' in method.grid and flags['s'] is not None:
        part += f'-s-{flags["s"]}'
    return part


# ------------------------------------------------------------------ the released methods

def _named_error(method: str, flag_of: dict[str, str], err: HyperparameterError) -> MethodError:
    flag = flag_of.get(err.argument)
    return MethodError(f'-m {method} {flag}: {err}' if flag else f'-m {method}: {err}')


def _from_state(key: str):
    """The hidden strength kept in the optimizer's per-tensor state under ``key``."""
    def strength(optimizer, synapses: dict) -> dict:
        return {n: optimizer.state[p][key] for n, p in synapses.items() if key in optimizer.state.get(p, {})}
    return strength


def _check_grad(flags: dict) -> None:
    if flags['s'] is None and flags['penalty'] > 1e-8:
        raise MethodError('-s (target sparsity) is required with -m grad; allowed: 0.5 <= s < 1')
    try:
        GradRewiring.check_settings(lr=flags['lr'], alpha=flags['penalty'], s=flags['s'])
    except HyperparameterError as err:
        raise _named_error('grad', {'s': '-s', 'alpha': '-penalty', 'lr': '-lr'}, err) from None


def _check_deep(flags: dict) -> None:
    if flags['s'] is None:
        raise MethodError('-s (target sparsity) is required with -m deep; allowed: 0 <= s <= 1')
    try:
        DeepRewiring.check_settings(lr=flags['lr'], T=0, l1=flags['penalty'], max_s=flags['s'],
                                    soft=flags['soft'], regrowth=flags['deepr_regrowth'])
    except HyperparameterError as err:
        raise _named_error('deep', {'max_s': '-s', 'l1': '-penalty', 'lr': '-lr'}, err) from None


def _grad_optimizer(config, model, steps_per_epoch):
    return GradRewiring(synapse_parameters(model), lr=config.lr, alpha=config.penalty, s=config.s,
                        compiled=config.compile)


def _deep_optimizer(config, model, steps_per_epoch):
    # Draws on the run's device; under torchrun on the CPU, so that every process draws alike.
    generator = torch.Generator(device='cpu' if config.distributed else config.device).manual_seed(config.seed)
    return DeepRewiring(synapse_parameters(model), lr=config.lr, T=0, l1=config.penalty, max_s=config.s,
                        soft=config.options['soft'], regrowth=config.options['deepr_regrowth'],
                        generator=generator, compiled=config.compile)


_SOFT = Option(('-soft',), {'action': 'store_true', 'help': 'soft Deep R (with -m deep)'})
_REGROWTH = Option(('--deepr-regrowth',), {
    'choices': ('released', 'active'), 'default': 'released',
    'help': 'with -m deep: reactivated synapses as in the released runs (never trained again) '
            'or as Bellec et al. 2018 (trained); see docs/method.md'})

# Hard and soft Deep R often coincide (docs/method.md, "Soft and hard Deep R without noise"), so
# Deep R's marker is a larger open circle around soft Deep R's cross.
register(Method('grad', ('-m', 'grad'), 'Grad R', {'marker': 'o'}, 'grad', _grad_optimizer,
                grid=('-penalty', '-s'), check=_check_grad, strength=_from_state('strength')))
register(Method('deep', ('-m', 'deep'), 'Deep R', {'marker': 'o', 'markersize': 9, 'fillstyle': 'none'},
                'deep', _deep_optimizer,
                options=(_SOFT, _REGROWTH), grid=('-penalty', '-s'), check=_check_deep,
                name_tail=lambda o: '' if o['deepr_regrowth'] == 'released' else f'-regrowth-{o["deepr_regrowth"]}',
                placeholders=lambda flags: flags.get('deepr_regrowth', 'released') == 'released'))
register(Method('soft_deep', ('-m', 'deep', '-soft'), 'soft Deep R', {'marker': 'x'}, 'soft', _deep_optimizer,
                options=(_SOFT, _REGROWTH), grid=('-penalty', '-s'), check=_check_deep,
                name_prefix='soft-', strength=_from_state('strength')))
register(Method('no_prune', ('-m', 'no_prune'), 'no pruning', {'marker': 's'}, 'no_prune',
                lambda config, model, steps: torch.optim.Adam(synapse_parameters(model), lr=config.lr),
                prunes=False))


# ------------------------------------------------------------------ STDS (Chen et al., ICML 2022)

def _check_stds(flags: dict) -> None:
    D = flags['flat_width']
    if D is None or not D > 0 or not np.isfinite(D):
        raise MethodError(f'--flat-width (the final dead-zone width D) must be a number > 0 with -m stds, got {D}')


def _stds_optimizer(config, model, steps_per_epoch):
    o = config.options
    controller = apply_stds(model, o['flat_width'], steps_per_epoch * (config.N + 1),
                            gradient=o['stds_gradient'], schedule=o['flat_schedule'])
    return STDSAdam(synapse_parameters(model), controller, lr=config.lr)


def _stds_theta(optimizer, synapses: dict) -> dict:
    return {f'{name}.weight': m.parametrizations.weight.original.detach()
            for name, m in optimizer.controller.layers.items()}


register(Method('stds', ('-m', 'stds'), 'STDS', {'marker': 'D'}, 'stds', _stds_optimizer, comparison=False,
                options=(Option(('--flat-width',), {
                             'type': float, 'default': None, 'metavar': 'D',
                             'help': 'with -m stds: final width D of the dead zone |theta| <= d in '
                                     'which a synapse is pruned (d grows from 0 to D; > 0)'}),
                         Option(('--stds-gradient',), {
                             'choices': ('stmod', 'st'), 'default': 'stmod',
                             'help': "with -m stds: 'stmod' passes dL/dw to theta everywhere (pruned "
                                     "synapses can regrow, as released), 'st' the soft threshold's "
                                     "true gradient (0 while pruned)"}),
                         Option(('--flat-schedule',), {
                             'choices': ('sine', 'linear'), 'default': 'sine',
                             'help': 'with -m stds: how d grows from 0 to D over the run'})),
                grid=('--flat-width',), check=_check_stds,
                name_middle=lambda f: f'-flat-{exact(f["flat_width"])}-{f["stds_gradient"]}-{f["flat_schedule"]}',
                strength=_stds_theta,
                scalars=lambda optimizer: {'flat_width': optimizer.controller.d}))
