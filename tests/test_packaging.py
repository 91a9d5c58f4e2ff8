"""``pip install .`` (a real, non-editable install) gives a working package."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_imports_from_anywhere(tmp_path):
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check']
    subprocess.run([*pip, 'install', '--no-deps', '--no-build-isolation', '--target',
                    str(tmp_path / 'site'), str(ROOT)], check=True, capture_output=True)
    packaged = {p.relative_to(tmp_path / 'site').as_posix()
                for p in (tmp_path / 'site' / 'cvattn_mm').rglob('*.py')}
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'cvattn_mm').rglob('*.py')}
    assert packaged == source
    code = ('import cvattn_mm, sys; from cvattn_mm.registry import MODELS; '
            "print(cvattn_mm.__file__, MODELS.build(dict(type='CBAM', in_channels=32)))")
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, check=True, text=True,
                         capture_output=True,
                         env={**os.environ, 'PYTHONPATH': str(tmp_path / 'site')}).stdout
    assert out.startswith(str(tmp_path / 'site' / 'cvattn_mm' / '__init__.py'))
    assert 'CBAM' in out
