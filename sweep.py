"""Run a grid of configurations, the paper's comparison by default, then the report.

Usage::

    python sweep.py {mnist,c10} --methods grad,deep,soft,no_prune --penalties 1e-4,5e-4,1e-3 \\
        -s 0.95 [flags passed on to mnist/mnist.py or c10/c10.py]

The grid: for each method (its name in ``--methods``: ``engine.methods``, ``Method.sweep``),
every combination of the values of the flags it takes (``Method.grid``: ``--penalties`` for
``-penalty``, ``-s``, ``--flat-widths`` for ``--flat-width``; comma lists); a method that
takes none is one configuration. A method's own flag passed on (e.g. ``--stds-gradient``)
must belong to every method of the grid. Configurations run one after the other as ``python <script> ...``; each run
resumes by itself (the engine resumes a run of the same name, and says ``are done`` for a
finished one), so starting the same sweep again continues where it stopped. At the end of a
full local sweep ``report.py`` runs on the dump folder (``--dump-dir``, passed on; default
``runs/``).

- ``--gpus 0,1``: one configuration per GPU at a time (``--device cuda:<id>``), a worker
  per GPU taking configurations from a shared queue.
- ``--jobs N``: N configurations at a time (fewer when the grid has fewer), each in its
  own process, taking them from the same queue; the CPU cores are split between them: each
  gets ``--threads cores // N`` unless ``--threads`` is passed on (one at a time passes
  nothing: the script's own split). 1 <= N <= the cores this process may use. The released
  data path's loader workers (``--workers``) are not split.
- ``--print``: print the commands, one per line, shell-quoted (for a cluster scheduler).
- ``--task-index I``: run the I-th configuration only (0-based, for a job array).

Neither ``--print`` nor ``--task-index`` runs the report. Bad input ends with one line and
exit status 2; a failed configuration is named at the end, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import math
import queue
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from engine.cli import cpu_cores
from engine.methods import METHODS

REPO = Path(__file__).resolve().parent
PROG = 'sweep.py'
SCRIPTS = {'mnist': REPO / 'mnist' / 'mnist.py', 'c10': REPO / 'c10' / 'c10.py'}
AXES = {'-penalty': '--penalties', '-s': '-s', '--flat-width': '--flat-widths'}
"""The scripts' flags that the grid varies (a method's ``grid``), and the sweep option that
lists their values."""


def method_flags() -> dict[str, list[str]]:
    """The script flags that select each method, by its name in ``--methods``."""
    return {m.sweep: list(m.argv) for m in METHODS.values()}


def set_by_sweep() -> dict[str, str]:
    """Flags of the scripts that the grid sets, and the sweep option to use instead."""
    flags = {'-m': '--methods', **{flag: option for flag, option in AXES.items() if flag != option}}
    for name, argv in method_flags().items():
        flags.update({switch: f'--methods {name}' for switch in argv[2:]})
    return flags


class SweepError(Exception):
    """Bad sweep input: one line on stderr, exit status 2."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise SweepError(message)


def _items(option: str, text: str) -> list[str]:
    items = [t.strip() for t in text.split(',')]
    if not all(items):
        raise SweepError(f'{option}: empty item in {text!r}')
    return list(dict.fromkeys(items))                    # in order, each once


def _numbers(option: str, text: str, low: float, high: float, above_low: bool = False) -> list[str]:
    """Comma-separated numbers in [low, high] (in (low, high] with ``above_low``), kept as
    written (the scripts parse them).

    Raises:
        SweepError: an item that is not a finite number in that range.
    """
    items = _items(option, text)
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise SweepError(f'{option}: {item!r} is not a number') from None
        if not (math.isfinite(value) and (low < value if above_low else low <= value) and value <= high):
            raise SweepError(f'{option}: {item} is outside {"(" if above_low else "["}{low:g}, {high:g}]')
    return items


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's options and the flags passed on to the script.

    Raises:
        SweepError: unknown method, a value that is not a number, a flag the grid sets,
            conflicting options.
    """
    p = _OneLineParser(prog=PROG, allow_abbrev=False, description=__doc__.split('\n\n')[0])
    p.add_argument('dataset', choices=sorted(SCRIPTS), help='mnist or c10')
    p.add_argument('--methods', default=','.join(m.sweep for m in METHODS.values() if m.comparison),
                   help=f'comma list of {", ".join(method_flags())}')
    p.add_argument('--penalties', default=None, help='comma list of -penalty values (>= 0; default 1e-3)')
    p.add_argument('-s', default=None, help='comma list of target sparsities (-s of the scripts)')
    p.add_argument('--flat-widths', default=None,
                   help='comma list of --flat-width values (D > 0) for the methods that take it (stds)')
    p.add_argument('--gpus', default=None, help='comma list of CUDA device indices: one worker each')
    p.add_argument('--jobs', type=int, default=None, metavar='N',
                   help='run N configurations at a time, each with --threads cores // N '
                        '(unless --threads is passed on); 1 <= N <= the CPU cores')
    p.add_argument('--print', action='store_true', help='print the commands instead of running them')
    p.add_argument('--task-index', type=int, default=None, metavar='I',
                   help='run only the I-th configuration (0-based)')
    p.add_argument('--dump-dir', default=None, help='passed on; the report reads it (default runs/)')
    # '-soft' would parse as '-s oft': catch the scripts' grid flags before argparse does.
    grid_flags = set_by_sweep()
    for token in argv:
        flag = token.split('=')[0]
        if flag in grid_flags:
            raise SweepError(f'{flag} is set by the sweep; use {grid_flags[flag]}')
    args, passed_on = p.parse_known_args(argv)
    args.methods = _items('--methods', args.methods)
    known = method_flags()
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        raise SweepError(f'--methods: unknown method {unknown[0]!r}; choose from {", ".join(known)}')
    for flag, given in _axis_values(args).items():
        if given is not None and not any(flag in _grid(m) for m in args.methods):
            takers = [m for m in known if flag in _grid(m)]
            raise SweepError(f'{AXES[flag]}: no method in --methods {",".join(args.methods)} takes {flag} '
                             f'(methods that do: {", ".join(takers)})')
    args.penalties = _numbers('--penalties', '1e-3' if args.penalties is None else args.penalties, 0, math.inf)
    args.s = None if args.s is None else _numbers('-s', args.s, 0, 1)
    with_s = [m for m in args.methods if '-s' in _grid(m)]
    if args.s is None and with_s:
        raise SweepError(f'-s (target sparsity) is required with {", ".join(with_s)}')
    args.flat_widths = (None if args.flat_widths is None
                        else _numbers('--flat-widths', args.flat_widths, 0, math.inf, above_low=True))
    _check_own_flags(args.methods, passed_on)
    with_width = [m for m in args.methods if '--flat-width' in _grid(m)]
    if args.flat_widths is None and with_width:
        raise SweepError(f'--flat-widths (final dead-zone widths D) is required with {", ".join(with_width)}')
    if args.gpus is not None:
        try:
            args.gpus = [int(g) for g in _items('--gpus', args.gpus)]
        except ValueError:
            raise SweepError(f'--gpus: not a comma list of device indices: {args.gpus!r}') from None
        if min(args.gpus) < 0:
            raise SweepError('--gpus: device indices are >= 0')
        if args.print or args.task_index is not None:
            raise SweepError('--gpus runs the sweep here; it does not go with --print or --task-index')
        clash = [t for t in passed_on if t.split('=')[0] in ('-gpu', '--device')]
        if clash:
            raise SweepError(f'{clash[0]} conflicts with --gpus, which sets --device per worker')
    if args.jobs is not None:
        cores = cpu_cores()
        if not 1 <= args.jobs <= cores:
            raise SweepError(f'--jobs {args.jobs}: give 1 to {cores} (configurations at a time; '
                             f'this machine has {cores} CPU cores for them to share)')
        if args.gpus is not None:
            raise SweepError('--jobs does not go with --gpus: --gpus runs one configuration per GPU, '
                             '--jobs N configurations on the CPU cores')
        if args.print or args.task_index is not None:
            raise SweepError('--jobs runs the sweep here; it does not go with --print or --task-index')
    return args, passed_on


def passes_threads(passed_on: list[str]) -> bool:
    """Whether the flags passed on to the script set ``--threads`` (also ``--threads=K`` and
    the abbreviations the script's parser takes, ``--th`` .. ``--thread``)."""
    return any(len(flag) >= 4 and '--threads'.startswith(flag)
               for flag in (token.split('=', 1)[0] for token in passed_on))


def worker_flags(args: argparse.Namespace, passed_on: list[str], n_configs: int) -> list[list[str]]:
    """One list of extra script flags per worker, each worker running one configuration at a
    time: with ``--gpus``, ``--device cuda:<id>`` for each GPU; with ``--jobs N``, J =
    min(N, ``n_configs``) workers (no core is kept for a worker without work), which add
    ``--threads cores // J`` when J > 1 and ``--threads`` is not passed on, else nothing;
    without either, one worker that adds nothing."""
    if args.gpus is not None:
        return [['--device', f'cuda:{g}'] for g in args.gpus]
    jobs = max(1, min(args.jobs or 1, n_configs))
    if jobs == 1 or passes_threads(passed_on):
        return [[] for _ in range(jobs)]
    return [['--threads', str(cpu_cores() // jobs)] for _ in range(jobs)]


def configurations(args: argparse.Namespace, passed_on: list[str]) -> list[tuple[str, list[str]]]:
    """``[(label, command)]`` of the grid in order: methods, then the values of each flag the
    method varies (``-penalty``, then ``-s``); a method that varies none is one configuration."""
    script = [sys.executable, str(SCRIPTS[args.dataset])]
    tail = (['--dump-dir', args.dump_dir] if args.dump_dir is not None else []) + passed_on
    values = _axis_values(args)
    configs = []
    for method in args.methods:
        settings = [[]]
        for flag in (f for f in AXES if f in _grid(method)):
            settings = [s + [flag, v] for s in settings for v in values[flag]]
        for setting in settings:
            label = ' '.join([method] + [f'{f.lstrip("-")} {v}' for f, v in zip(setting[::2], setting[1::2])])
            configs.append((label, script + method_flags()[method] + setting + tail))
    return configs


def _check_own_flags(names: list[str], passed_on: list[str]) -> None:
    """A method's own flag passed on (``Method.options``) must belong to every method of the
    grid, since every configuration gets it.

    Raises:
        SweepError: one that some method of the grid does not take.
    """
    chosen = [m for m in METHODS.values() if m.sweep in names]
    for token in passed_on:
        flag = token.split('=')[0]
        owners = [m for m in METHODS.values() if any(flag in o.flags for o in m.options)]
        strangers = [m.sweep for m in chosen if owners and m not in owners]
        if strangers:
            raise SweepError(f'{flag} is passed to every configuration, but {", ".join(strangers)} '
                             f'does not take it; sweep {", ".join(m.sweep for m in owners)} apart')


def _axis_values(args: argparse.Namespace) -> dict:
    """The values of each grid axis (:data:`AXES`), by the script flag they set: a list, or
    None where the sweep option was not given."""
    return {'-penalty': args.penalties, '-s': args.s, '--flat-width': args.flat_widths}


def _grid(name: str) -> tuple[str, ...]:
    """The flags the method named ``name`` in ``--methods`` varies in the grid."""
    return next(m.grid for m in METHODS.values() if m.sweep == name)


def run_all(configs: list[tuple[str, list[str]]], workers: list[list[str]]) -> list[str]:
    """Run the configurations, ``len(workers)`` at a time: each worker (a thread) takes the
    next configuration from a shared queue, runs its command with the worker's extra flags
    appended (:func:`worker_flags`) and waits for it. Returns one line per failed
    configuration, in the grid's order."""
    jobs = queue.Queue()
    for i, config in enumerate(configs):
        jobs.put((i, config))
    failed, lock = [], threading.Lock()

    def worker(extra):
        while True:
            try:
                i, (label, cmd) = jobs.get_nowait()
            except queue.Empty:
                return
            cmd = cmd + extra
            with lock:      # workers print at once: one whole line each
                print(f'{PROG}: [{i + 1}/{len(configs)}] {shlex.join(cmd)}', flush=True)
            code = subprocess.run(cmd).returncode       # in the caller's folder, as --print's lines
            if code != 0:
                with lock:
                    failed.append(f'configuration {i} ({label}) failed with exit status {code}')

    if len(workers) == 1:
        worker(workers[0])
    else:
        threads = [threading.Thread(target=worker, args=(extra,)) for extra in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sorted(failed, key=lambda line: int(line.split()[1]))


def main(argv=None) -> int:
    """The command line; returns the exit status (0; 1 when a configuration failed or the
    report found nothing; 2 on bad input, with one line on stderr)."""
    try:
        args, passed_on = parse(sys.argv[1:] if argv is None else list(argv))
        configs = configurations(args, passed_on)
        if args.task_index is not None and not 0 <= args.task_index < len(configs):
            raise SweepError(f'--task-index {args.task_index}: the grid has {len(configs)} '
                             f'configurations (0..{len(configs) - 1})')
    except SweepError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2
    if args.task_index is not None:
        configs = [configs[args.task_index]]
    if args.print:
        for _, cmd in configs:
            print(shlex.join(cmd))
        return 0
    failed = run_all(configs, worker_flags(args, passed_on, len(configs)))
    status = 0
    if args.task_index is None:
        import report
        dump = Path(args.dump_dir) if args.dump_dir is not None else REPO / 'runs'
        status = 1 if report.main([str(dump)]) else 0
    for line in failed:
        print(f'{PROG}: {line}', file=sys.stderr)
    return 1 if failed else status


if __name__ == '__main__':
    sys.exit(main())
