"""Every module of cvattn_mm imports, and no two modules of the package import each other.

The graph is read from the source with ``ast``: an edge goes from a module to each module of
the package that it names in an import statement, at module level or inside a function. The
parent packages that Python initialises on the way (``cvattn_mm/__init__.py`` for any
``cvattn_mm.x``) are not edges: they are being imported already when one of their modules
runs.
"""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'cvattn_mm'


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


FILES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def owning_module(name: str):
    """The module of the package that defines ``name`` (a module or a name in one), or None."""
    while name not in FILES and '.' in name:
        name = name.rpartition('.')[0]
    return name if name in FILES else None


def imported_modules(module: str) -> set:
    """The modules of the package that ``module`` imports anywhere in its source."""
    path = FILES[module]
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parts + [base] if base else parts)
            # `from package import submodule` imports the submodule, else the package
            targets += [f'{base}.{alias.name}' for alias in node.names]
    return {owning_module(t) for t in targets} - {None, module}


def find_cycle(graph: dict):
    """A cycle of ``graph`` (``{node: set of nodes}``) as a path whose ends are equal, or
    None."""
    state, path = {}, []  # state: 1 on the current path, 2 done

    def visit(node):
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize('module', sorted(FILES))
def test_module_imports(module):
    importlib.import_module(module)


def test_the_package_imports_have_no_cycle():
    graph = {module: imported_modules(module) for module in FILES}
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_graph_holds_relative_absolute_and_function_level_imports():
    assert {'cvattn_mm.attention', 'cvattn_mm.heads', 'cvattn_mm.registry'} <= \
        imported_modules('cvattn_mm')
    assert 'cvattn_mm.config' in imported_modules('cvattn_mm.visualization.command')
    assert 'cvattn_mm.attention.base' in imported_modules('cvattn_mm.analysis.complexity')


def test_find_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'b'}}) == ['b', 'c', 'b']
