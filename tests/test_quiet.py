"""Upstream noise is silenced in the commands (cvattn_mm/quiet.py)."""
import os
import sys
import warnings

from cvattn_mm.quiet import silence_upstream_noise

from .tools.processes import run_together, succeeded

TINY_DETECTION_CONFIG = """\
_base_ = ['mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['cvattn_mm'])
model = dict(type='ResNet', depth=50, base_channels=8, stem_channels=8,
             plugins=[dict(cfg=dict(type='GC'), stages=(False, False, False, True),
                           position='after_conv3')])
"""
NOISE = ('pkg_resources', 'USDT', 'profiler_start', 'gpuGetDeviceCount')


def test_only_the_pkg_resources_warning_is_hidden_and_a_user_kineto_level_kept(monkeypatch):
    monkeypatch.setenv('KINETO_LOG_LEVEL', '2')
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter('always')
        silence_upstream_noise()
        warnings.warn('pkg_resources is deprecated as an API. See ...', UserWarning, stacklevel=1)
        warnings.warn('a warning of the user', UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ['a warning of the user']
    assert os.environ['KINETO_LOG_LEVEL'] == '2'


def test_insertions_and_benchmark_print_no_upstream_noise(tmp_path):
    (tmp_path / 'tiny.py').write_text(TINY_DETECTION_CONFIG)
    cli = [sys.executable, '-m', 'cvattn_mm.cli']
    results = run_together({
        'insertions': (cli + ['insertions', 'tiny.py'], {}),
        'benchmark': (cli + ['benchmark', '--modules', 'SE', '--shapes', '2x16x5x7',
                             '--repeats', '2', '--warmup', '1', '--no-peers', '--no-models',
                             '--out-dir', 'bench'], {}),
    }, cwd=str(tmp_path))
    insertions, benchmark = succeeded(results['insertions']), succeeded(results['benchmark'])
    assert 'layer4.2.gc' in insertions and '| SE | 2x16x5x7 |' in benchmark
    for output in (insertions, benchmark):
        assert [line for line in output.splitlines() if any(n in line for n in NOISE)] == []
