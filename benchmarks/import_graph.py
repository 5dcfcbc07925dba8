"""The structure of a checkout, measured from its own imports and definitions: modules, import
edges, layers (the longest chain of imports), imports from the engine into an experiment,
the largest files and the largest classes (lines). Tests are left out.

    python benchmarks/import_graph.py [CHECKOUT]          # default: this repository

``from package import module`` counts as an import of that module alone (not of the
package's ``__init__``).
"""
from __future__ import annotations

import argparse
import ast
from functools import lru_cache
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file outside ``tests/`` and hidden folders."""
    out = {}
    for f in root.rglob('*.py'):
        parts = f.relative_to(root).parts
        if 'tests' in parts or any(p.startswith('.') for p in parts):
            continue
        names = list(f.relative_to(root).with_suffix('').parts)
        if names[-1] == '__init__':
            names = names[:-1]
        out['.'.join(names)] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the checkout it imports."""
    def known(name):
        while name and name not in mods:
            name = name.rpartition('.')[0]
        return name or None
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f'{node.module}.{a.name}' for a in node.names} & set(mods)
                deps.update(subs or {known(node.module)})
        graph[name] = deps - {None, name}
    return graph


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkout', type=Path, nargs='?', default=Path(__file__).resolve().parents[1])
    root = p.parse_args().checkout.resolve()
    mods = modules(root)
    graph = import_graph(mods)

    @lru_cache(maxsize=None)
    def layer(name, seen=frozenset()):
        return 1 + max((layer(d, seen | {name}) for d in graph[name] if d not in seen), default=0)
    print(f'{root}: {len(graph)} modules, {sum(map(len, graph.values()))} imports, '
          f'{max(map(layer, graph))} layers')
    back = sorted(f'{m} -> {d}' for m, deps in graph.items() for d in deps
                  if m.startswith('engine') and d.split('.')[0] in ('mnist', 'c10'))
    print(f'engine -> experiment imports: {", ".join(back) or "none"}')
    files = sorted(((len(f.read_text().splitlines()), str(f.relative_to(root))) for f in mods.values()), reverse=True)
    print('largest files: ' + ', '.join(f'{name} {n}' for n, name in files[:5]))
    classes = sorted(((c.end_lineno - c.lineno + 1, f'{f.relative_to(root)}:{c.name}')
                      for f in mods.values() for c in ast.walk(ast.parse(f.read_text()))
                      if isinstance(c, ast.ClassDef)), reverse=True)
    print('largest classes: ' + ', '.join(f'{name} {n}' for n, name in classes[:5]))


if __name__ == '__main__':
    main()
