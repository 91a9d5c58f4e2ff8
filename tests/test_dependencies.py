"""What ``import cvattn_mm`` needs: requirements/runtime.txt; no mmdet, mmseg, mmpretrain and
no compiled mmcv ops.

Each test runs a fresh interpreter in which mmdet, mmseg, mmpretrain and mmcv's ops cannot be
imported (a finder at the front of ``sys.meta_path`` raises the ``ModuleNotFoundError`` that
Python raises for a package that is not installed).
"""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WITHOUT_MM_STACK = '''
import json
import sys

BLOCKED = ('mmdet', 'mmseg', 'mmpretrain', 'mmcv.ops', 'mmcv._ext')


def blocked(name):
    return any(name == b or name.startswith(f'{b}.') for b in BLOCKED)


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)


sys.meta_path.insert(0, NotInstalled())
'''


def run_without_mm_stack(code: str):
    """What ``code`` (run after the blocker) prints, as JSON; fails on a non-zero exit."""
    result = subprocess.run([sys.executable, '-c', WITHOUT_MM_STACK + code], cwd=ROOT,
                            text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def normalise(distribution: str) -> str:
    return re.sub(r'[-_.]+', '-', distribution).lower()


def requirement_names(name: str) -> set:
    """The distribution names of ``requirements/<name>.txt``, normalised."""
    lines = (ROOT / 'requirements' / f'{name}.txt').read_text().splitlines()
    return {normalise(re.split(r'[\s<>=!~;\[]', line.strip(), maxsplit=1)[0])
            for line in lines if line.split('#', 1)[0].strip()}


def test_import_builds_the_attention_modules_without_the_mm_stack_and_mmcv_ops():
    out = run_without_mm_stack('''
import torch

import cvattn_mm
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.registry import MODELS

names = sorted(attention_classes())
for name in names:
    MODELS.build(dict(type=name, in_channels=64))  # PyramidSplitAttention: C / 4 by 16
x = torch.randn(2, 32, 7, 9)
try:
    MODELS.build(dict(type='CSRAHead', num_classes=10, in_channels=32))
    csra = None
except ImportError as error:
    csra = str(error)
print(json.dumps(dict(
    built=len(names), csra=csra,
    cbam_shape=list(MODELS.build(dict(type='CBAM', in_channels=32))(x).shape),
    loaded=sorted(m for m in sys.modules if blocked(m)))))
''')
    assert out['built'] >= 10 and out['cbam_shape'] == [2, 32, 7, 9]
    assert out['loaded'] == []
    assert 'CSRAHead' in out['csra']
    assert 'mmpretrain is not installed: pip install mmpretrain' in out['csra']


def test_runtime_requirements_are_the_imports_of_import_cvattn_mm():
    """The third-party packages that the modules loaded by ``import cvattn_mm`` import when
    they load (not inside functions) are the runtime requirements, plus torch (expected to
    be installed)."""
    imported = run_without_mm_stack('''
import ast
import importlib.metadata

import cvattn_mm


def load_time_imports(node):
    """Import statements of ``node`` outside function bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from load_time_imports(child)


names = set()
for name, module in list(sys.modules.items()):
    if name.split('.')[0] == 'cvattn_mm':
        with open(module.__file__) as f:
            for node in load_time_imports(ast.parse(f.read())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split('.')[0] for alias in node.names}
                elif not node.level:
                    names.add(node.module.split('.')[0])
names -= set(sys.stdlib_module_names) | {'cvattn_mm'}
distributions = importlib.metadata.packages_distributions()
print(json.dumps(sorted({d for n in names for d in distributions[n]})))
''')
    assert {normalise(d) for d in imported} == requirement_names('runtime') | {'torch'}
