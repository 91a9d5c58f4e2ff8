"""tools/analysis/device_check.py: arguments, an unavailable device, a tiny run on the CPU."""
import json

import pytest
import torch

from .test_benchmark import load_tool


def test_pass_through_groups_take_everything_up_to_the_other_flag():
    tool = load_tool('device_check')
    own, groups = tool.split_pass_through(
        ['--device', 'cpu', '--benchmark-args', '--modules', 'SE', '--repeats', '3',
         '--pytest-args', '-x', '-k', 'SE and not jit'])
    assert own == ['--device', 'cpu']
    assert groups == {'--benchmark-args': ['--modules', 'SE', '--repeats', '3'],
                      '--pytest-args': ['-x', '-k', 'SE and not jit']}


def test_arguments(tmp_path):
    tool = load_tool('device_check')
    args = tool.parse_args(['--device', 'cpu', '--benchmark-args', '--modules', 'SE',
                            '--no-models'])
    assert args.device == 'cpu' and args.pytest_args == []
    bench = args.benchmark
    assert bench.device == 'cpu' and bench.modules == ['SE'] and bench.no_models
    assert bench.out_dir == 'work_dirs/device_check/cpu'
    args = tool.parse_args(['--device', 'cpu', '--no-benchmark', '--pytest-args', '-x'])
    assert args.benchmark is None and args.pytest_args == ['-x']
    args = tool.parse_args(['--device', 'cpu', '--benchmark-args', '--out-dir', str(tmp_path)])
    assert args.benchmark.out_dir == str(tmp_path)


@pytest.mark.parametrize('argv, message', [
    ([], 'the following arguments are required: --device'),
    (['--device', 'gpu'], "--device gpu: 'gpu' is not a device name"),
    (['--device', 'cpu', '--benchmark-args', '--modules', 'SEE'], "unknown modules ['SEE']"),
    (['--device', 'cpu', '--benchmark-args', '--device', 'cpu'], 'give the device once'),
])
def test_bad_arguments_exit_with_code_2(argv, message, capsys):
    tool = load_tool('device_check')
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_fails_fast_saying_it_is_not_available(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # also on a GPU machine
    tool = load_tool('device_check')
    monkeypatch.setattr(tool, 'run_tests', lambda *a: pytest.fail('tests ran'))
    with pytest.raises(SystemExit) as exit_:
        tool.main(['--device', 'cuda'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert '--device cuda: CUDA is not available on this machine' in err
    assert 'torch.cuda.is_available() is False' in err


def test_tiny_run_on_the_cpu(tmp_path, capsys):
    """Tests filtered to one module, then a one-call benchmark of it; the summary names the
    result line and the Markdown."""
    tool = load_tool('device_check')
    threads = torch.get_num_threads()
    try:
        code = tool.main(['--device', 'cpu', '--pytest-args', '-k', 'test_contract and ECA',
                          '--benchmark-args', '--modules', 'ECA', '--shapes', '1x8x4x5',
                          '--repeats', '1', '--warmup', '0', '--no-models', '--threads', '1',
                          '--out-dir', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    assert '$ CVATTN_TEST_DEVICE=cpu -m pytest tests/attention/test_contract.py' in out
    summary = out[out.index('device check on cpu'):].splitlines()
    assert summary[1].split()[0] == 'tests' and ' passed' in summary[1]
    assert 'failed' not in summary[1] and '(pytest exit code 0)' in summary[1]
    assert summary[2] == (f'  benchmark  2 cases: 2 ok, 0 skipped, 0 failed; Markdown: '
                          f'{tmp_path / "benchmark.md"}')
    results = json.loads((tmp_path / 'benchmark.json').read_text())
    assert results['meta']['device'] == 'cpu'
    assert [r['peer'] for r in results['peers']] == ['timm EcaModule']


def test_failing_tests_give_a_nonzero_exit_code(tmp_path, capsys):
    failing = tmp_path / 'test_failing.py'
    failing.write_text('def test_fails():\n    assert False\n')
    tool = load_tool('device_check')
    code = tool.main(['--device', 'cpu', '--no-benchmark', '--pytest-args', str(failing), '-k',
                      'test_fails'])
    out = capsys.readouterr().out
    assert code == 1
    summary = out[out.index('device check on cpu'):].splitlines()
    assert '1 failed' in summary[1] and '(pytest exit code 1)' in summary[1]
    assert len(summary) == 2  # no benchmark
