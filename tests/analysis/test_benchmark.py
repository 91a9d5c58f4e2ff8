"""The benchmark tool and the complexity analysis (params, FLOPs) of modules and configs."""
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

import cvattn_mm  # noqa: F401
from cvattn_mm.analysis import benchmark
from cvattn_mm.analysis.benchmark import (
    Timing,
    benchmark_module,
    build_resnet,
    forward_backward_fn,
    peak_memory,
    time_interleaved,
)
from cvattn_mm.analysis.complexity import count_flops, count_params, strip_attention
from cvattn_mm.analysis.device import resolve_device
from cvattn_mm.attention.channel.se import SE

ROOT = Path(__file__).parents[2]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / 'analysis' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def se_flops(n, c, hidden):
    """FC1 and FC2 on the pooled vector: one multiply-add per weight, per sample (the
    pooling, the sigmoid and the product are element-wise: not counted)."""
    return n * (c * hidden + hidden * c)


def test_se_flops_equal_the_hand_computed_figure():
    se = SE(32, reduction=4)  # hidden 8
    assert count_flops(se, torch.randn(2, 32, 5, 7)) == se_flops(2, 32, 8) == 1024
    assert count_params(se) == 2 * 32 * 8 + 8 + 32


def test_peak_memory_counts_the_live_tensors():
    def run():
        a = torch.ones(256, 1024)  # 1 MiB
        b = a * 2  # 1 MiB more while a is alive
        del a
        c = b + 1  # a was freed: the peak stays at 2 MiB
        del b, c

    assert 2 * 2**20 <= peak_memory(run) < 2 * 2**20 + 1024


def test_forward_backward_peak_memory_is_the_same_every_call():
    """Each call starts from no gradients: the parameters' and the input's gradients, the
    output and its gradient of ones are all counted, every time."""
    se = SE(32)
    se.train()
    fn = forward_backward_fn(se, torch.randn(2, 32, 8, 8))
    first = peak_memory(fn)
    assert first == peak_memory(fn) == peak_memory(fn)
    assert first >= 3 * 2 * 32 * 8 * 8 * 4 + count_params(se) * 4


def test_time_budget_stops_warmup_and_timing_early():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)

    (timing, ) = time_interleaved([slow], repeats=50, warmup=10, max_seconds=0.03)
    assert timing['repeats'] == 3  # the minimum
    assert len(calls) == 2 + 3  # warm-up stopped after the call that reached 0.03 s
    assert timing['min'] >= 20


def test_memory_budget_skips_a_case():
    record = benchmark_module('SE', (2, 32, 8, 8), Timing(1, 0, max_memory_gb=1e-9))
    assert record['status'] == 'skipped'
    assert 'budget 1e-09 GiB' in record['reason']
    assert 'forward_ms' not in record


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')
    tool = load_tool('benchmark')
    threads = torch.get_num_threads()
    try:  # one thread: on a loaded CPU, tiny ops with two threads mostly wait for each other
        tool.main(['--modules', 'SE', 'GC', '--shapes', '2x32x8x12', '1x64x6x10', '--repeats',
                   '2', '--warmup', '1', '--threads', '1', '--out-dir', str(out),
                   '--model-input', '1x3x64x64', '--model-depth', '18'])
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / 'benchmark.json').read_text())


def assert_latency(t, repeats=2):
    assert t['repeats'] == repeats
    assert 0 < t['min'] <= t['q1'] <= t['median'] <= t['q3'] <= t['max']


def test_benchmark_json_modules(bench):
    _, results = bench
    assert results['meta']['repeats'] == 2 and results['meta']['warmup'] == 1
    assert results['meta']['threads'] == 1
    records = results['modules']
    assert [(r['module'], r['shape']) for r in records] == [
        ('SE', [2, 32, 8, 12]), ('GC', [2, 32, 8, 12]), ('SE', [1, 64, 6, 10]),
        ('GC', [1, 64, 6, 10])]
    for r in records:
        assert r['status'] == 'ok', r['reason']
        assert r['params'] > 0 and r['flops'] > 0 and r['peak_memory_mb'] > 0
        assert_latency(r['forward_ms'])
        assert_latency(r['forward_backward_ms'])
    assert records[0]['params'] == count_params(SE(32))
    assert records[0]['flops'] == se_flops(2, 32, 2)
    assert records[2]['flops'] == se_flops(1, 64, 4)


def test_benchmark_json_peers(bench):
    _, results = bench
    records = results['peers']
    assert [(r['peer'], r['shape'][2]) for r in records] == [
        ('timm SEModule', 8), ('timm GlobalContext', 8), ('mmcv ContextBlock', 8),
        ('timm SEModule', 6), ('timm GlobalContext', 6), ('mmcv ContextBlock', 6)]
    for r in records:
        assert r['status'] == 'ok', r['reason']
        assert r['incomparable'] is None and r['max_rel_diff'] < 1e-5
        assert r['ours']['flops'] == r['theirs']['flops']
        for key in ('forward', 'forward_backward'):
            ratio = r['ours'][f'{key}_ms']['median'] / r['theirs'][f'{key}_ms']['median']
            assert r[f'ratio_{key}'] == pytest.approx(ratio)


def test_benchmark_json_models(bench):
    _, results = bench
    records = results['models']
    plain = count_params(build_resnet(18))
    assert [r['module'] for r in records] == ['SE', 'GC']
    assert records[0]['sites'] == 8  # SE ends each BasicBlock's residual branch
    assert records[1]['sites'] > 0
    for r in records:
        assert r['status'] == 'ok', r['reason']
        assert r['model'] == 'ResNet-18' and r['input'] == [1, 3, 64, 64]
        assert r['plain']['params'] == plain
        assert r['ratios']['params'] == pytest.approx(r['params'] / plain)
        assert r['ratios']['params'] > 1 and r['ratios']['flops'] > 1
        assert_latency(r['forward_ms'])
        assert_latency(r['plain']['forward_backward_ms'])


def test_benchmark_markdown_and_png(bench):
    out, results = bench
    text = (out / 'benchmark.md').read_text()
    for title in ('## Modules', '## Side by side with public implementations',
                  '## ResNet-18 (mmpretrain) with each module at its paper positions'):
        assert title in text
    rows = [line for line in text.splitlines() if line.startswith('| ')]
    # 3 headers, 4 module rows, 6 peer rows, the plain model and 2 models with attention
    assert len(rows) == 3 + 4 + 6 + 1 + 2
    assert all(row.count('|') == rows[0].count('|') for row in rows[:5])
    assert '| SE | 2x32x8x12 | 162 | 256 |' in text
    png = (out / 'benchmark.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    import matplotlib.image
    image = matplotlib.image.imread(str(out / 'benchmark.png'))
    assert image.shape[0] > 300 and image.shape[1] > 1000  # three panels side by side


def test_benchmark_rejects_unknown_modules():
    tool = load_tool('benchmark')
    with pytest.raises(SystemExit):
        tool.parse_args(['--modules', 'SEE'])


CONFIG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='InsertAttention', module=dict(type='ResNet', depth=18),
                  insertions=[dict(attention=dict(type='SE'), at='paper')]),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
              loss=dict(type='CrossEntropyLoss')))
"""


def test_get_flops_reports_the_params_of_the_inserted_se(tmp_path, capsys):
    path = tmp_path / 'resnet18_se.py'
    path.write_text(CONFIG)
    tool = load_tool('get_flops')
    assert tool.main([str(path), '--shape', '64']) == 0
    printed = capsys.readouterr().out
    # SE at the end of the 8 BasicBlocks: 2 C * C/16 + C/16 + C parameters each.
    se_params = sum(2 * (2 * c * (c // 16) + c // 16 + c) for c in (64, 128, 256, 512))
    assert se_params == 89080
    from cvattn_mm.analysis.complexity import config_complexity
    result = config_complexity(str(path), (64, 64))
    assert result['added_params'] == result['attention_params'] == se_params
    assert result['attention_modules'] == 8
    assert result['parts']['backbone']['added_params'] == se_params
    assert result['parts']['head']['added_params'] == 0
    assert result['base_params'] == count_params(build_resnet(18)) + 512 * 10 + 10
    # the FLOPs SE adds: its two FCs at each of the 8 places, for one image
    assert result['added_flops'] == sum(2 * se_flops(1, c, c // 16) for c in (64, 128, 256, 512))
    assert f'{result["added_params"]:,}' in printed
    assert 'attention modules of cvattn_mm: 8' in printed


def test_strip_attention_removes_only_our_attention():
    cfg = dict(type='FasterRCNN', backbone=dict(
        type='InsertAttention',
        module=dict(type='ResNet', depth=50, plugins=[
            dict(cfg=dict(type='CBAM'), position='after_conv3'),
            dict(cfg=dict(type='ContextBlock', ratio=1 / 16), position='after_conv3')]),
        insertions=[dict(attention=dict(type='SE'))]),
        neck=dict(type='FPN', plugins=[dict(cfg=dict(type='cvattn_mm.ECA'))]))
    stripped = strip_attention(cfg)
    assert stripped == dict(type='FasterRCNN', backbone=dict(
        type='ResNet', depth=50,
        plugins=[dict(cfg=dict(type='ContextBlock', ratio=1 / 16), position='after_conv3')]),
        neck=dict(type='FPN'))
    assert cfg['backbone']['type'] == 'InsertAttention'  # the input is not modified


# --- devices -------------------------------------------------------------------------------


def test_benchmark_records_the_device(bench):
    _, results = bench
    assert results['meta']['device'] == 'cpu' and results['meta']['device_name'] == 'cpu'


def test_benchmark_rejects_an_unavailable_device(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # also on a GPU machine
    tool = load_tool('benchmark')
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(['--device', 'cuda'])
    assert exit_.value.code == 2
    assert '--device cuda: CUDA is not available on this machine' in capsys.readouterr().err


def test_device_names_are_checked(monkeypatch):
    assert resolve_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match="'gpu' is not a device name"):
        resolve_device('gpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert resolve_device('cuda:0') == torch.device('cuda:0')
    with pytest.raises(ValueError, match=r'cuda:1 does not exist: this machine has 1 cuda'):
        resolve_device('cuda:1')


def test_latency_synchronises_the_device_before_reading_the_clock(monkeypatch):
    events = []
    monkeypatch.setattr(benchmark, 'synchronize', lambda device: events.append(str(device)))
    time_interleaved([lambda: events.append('call')], repeats=2, warmup=1, device='cuda:1')
    sync = 'cuda:1'
    assert events == [sync, 'call', sync] + [sync, 'call', sync] * 2


def test_peak_memory_on_cuda_comes_from_its_counters(monkeypatch):
    """Reset before the call; the peak above what was allocated before it."""
    calls = []
    for name, value in (('synchronize', None), ('reset_peak_memory_stats', None),
                        ('memory_allocated', 100), ('max_memory_allocated', 612)):
        monkeypatch.setattr(torch.cuda, name,
                            lambda device, name=name, value=value: calls.append(name) or value)
    assert peak_memory(lambda: calls.append('fn'), 'cuda') == 512
    assert calls.index('reset_peak_memory_stats') < calls.index('fn')
    assert calls[-2:] == ['synchronize', 'max_memory_allocated']


def test_module_and_input_are_on_the_device(monkeypatch):
    """The meta device stands in for an accelerator: nothing is computed on it."""
    seen = {}

    def measure(modules, x, timing, input_grad=True):
        seen.update(devices={p.device.type for m in modules for p in m.parameters()},
                    input=x.device.type)
        return [{}]

    monkeypatch.setattr(benchmark, '_measure', measure)
    assert benchmark_module('SE', (2, 16, 4, 4), Timing(1, 0), 'meta')['status'] == 'ok'
    assert seen == dict(devices={'meta'}, input='meta')


def test_every_case_gets_the_device(monkeypatch):
    devices = []
    monkeypatch.setattr(benchmark, 'benchmark_module', lambda n, s, t, d: devices.append(d) or {})
    monkeypatch.setattr(benchmark, 'benchmark_peer', lambda p, s, t, d: devices.append(d) or {})
    monkeypatch.setattr(benchmark, 'build_resnet', lambda depth: torch.nn.Linear(1, 1))
    monkeypatch.setattr(benchmark, 'benchmark_model',
                        lambda n, plain, i, depth, t, d: devices.append((d, plain.weight.device))
                        or {})
    device = torch.device('meta')
    benchmark.run_benchmark(['SE'], [(1, 8, 4, 4)], model_input=(1, 3, 8, 8), device=device)
    assert devices == [device, device, (device, device)]  # SE, timm's SE, the model


def test_conv_replacements_are_timed_against_the_conv_they_replace():
    from cvattn_mm.analysis.benchmark_command import conv_table
    from cvattn_mm.registry import MODELS

    from ..attention.plain_conv_replacement import PlainConvReplacement
    MODELS.register_module(module=PlainConvReplacement)
    try:
        record = benchmark_module('PlainConvReplacement', (1, 8, 6, 6), Timing(2, 1))
    finally:
        MODELS.module_dict.pop('PlainConvReplacement')
    conv = record['replaced_conv']
    assert conv['params'] == record['params'] == 8 * 8 * 9
    assert record['ratio_to_conv']['params'] == record['ratio_to_conv']['flops'] == 1
    assert record['ratio_to_conv']['forward_ms'] == pytest.approx(
        record['forward_ms']['median'] / conv['forward_ms']['median'])
    row = conv_table([record], 2)[-1].split(' | ')
    assert row[0] == '| PlainConvReplacement' and row[-2:] == ['1.00', '1.00 |']
