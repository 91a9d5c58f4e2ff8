"""The module benchmark's command line (``tools/analysis/benchmark.py``, ``cvattn-mm benchmark``).

What is measured, and how, is described in :mod:`cvattn_mm.analysis.benchmark`.
"""
import argparse
import datetime
import json
import os
import platform
import sys

import torch
from tqdm import tqdm

from ..version import __version__
from .benchmark import Timing, default_modules, run_benchmark
from .device import device_name, resolve_device
from .references import all_peers

DEFAULT_SHAPES = ['8x256x56x56', '8x1024x14x14']


def shape_arg(text: str):
    """``'8x256x56x56'`` -> ``(8, 256, 56, 56)``."""
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f'a shape is NxCxHxW with positive integers, got {text!r}')
    return shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's arguments to ``parser``."""
    parser.add_argument('--modules', nargs='+', help='registry names (default: all)')
    parser.add_argument('--shapes', nargs='+', type=shape_arg, default=None,
                        help=f'input shapes NxCxHxW (default: {" ".join(DEFAULT_SHAPES)})')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls per latency')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls before timing')
    parser.add_argument('--max-seconds', type=float, default=10.0,
                        help='stop warming up / timing a latency after this time (at least 1 '
                        'warm-up and 3 timed calls); 0 for no limit')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch.get_num_threads())')
    parser.add_argument('--device', default='cpu',
                        help="where modules, peers, inputs and models run: 'cpu' (default), "
                        "'cuda', 'cuda:1', ...")
    parser.add_argument('--out-dir', default='work_dirs/benchmark', help='output folder')
    parser.add_argument('--no-peers', action='store_true',
                        help='skip the peers (public implementations and references)')
    parser.add_argument('--model-input', type=shape_arg, default=(1, 3, 224, 224),
                        help='input NxCxHxW of the model-level cases (default 1x3x224x224)')
    parser.add_argument('--model-depth', type=int, default=50,
                        help="depth of mmpretrain's ResNet for the model-level cases")
    parser.add_argument('--no-models', action='store_true', help='skip the model-level cases')
    parser.add_argument('--max-memory-gb', type=float, default=4.0,
                        help='skip module cases whose forward at batch 1 times N exceeds this')


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject unknown modules, impossible repeat counts and a device this machine does not
    have through ``parser.error``."""
    known = default_modules()
    unknown = sorted(set(args.modules or ()) - set(known))
    if unknown:
        parser.error(f'unknown modules {unknown}; registered: {", ".join(known)}')
    if args.repeats < 1 or args.warmup < 0 or args.max_seconds < 0:
        parser.error('--repeats must be >= 1, --warmup and --max-seconds >= 0')
    try:
        resolve_device(args.device)
    except ValueError as e:
        parser.error(f'--device {args.device}: {e}')


def meta(args) -> dict:
    cpu = next((line.split(':', 1)[1].strip() for line in _cpuinfo()
                if line.startswith('model name')), platform.processor())
    device = resolve_device(args.device)
    return dict(date=datetime.datetime.now().isoformat(timespec='seconds'),
                cvattn_mm=__version__, torch=torch.__version__,
                python=platform.python_version(), cpu=cpu, cpu_count=os.cpu_count(),
                threads=torch.get_num_threads(), repeats=args.repeats, warmup=args.warmup,
                max_seconds=args.max_seconds or None, dtype='float32', device=str(device),
                device_name=device_name(device), max_memory_gb=args.max_memory_gb,
                load_average=list(os.getloadavg()))


def _cpuinfo():
    try:
        with open('/proc/cpuinfo') as f:
            return f.read().splitlines()
    except OSError:
        return []


# --- Markdown --------------------------------------------------------------------------


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= scale:
            return f'{n / scale:.3g}{unit}'
    return f'{n:.3g}'


def latency(t: dict, repeats: int) -> str:
    """``'median [q1, q3]'``, with the number of calls when it is not ``repeats``."""
    calls = f' n={t["repeats"]}' if t['repeats'] != repeats else ''
    return f'{t["median"]:.2f} [{t["q1"]:.2f}, {t["q3"]:.2f}]{calls}'


def median(t: dict, repeats: int) -> str:
    calls = f' n={t["repeats"]}' if t['repeats'] != repeats else ''
    return f'{t["median"]:.2f}{calls}'


def shape_str(shape) -> str:
    return 'x'.join(str(v) for v in shape)


def _failed(record: dict, columns: int, lead: list) -> str:
    cells = lead + [f'{record["status"]}: {record["reason"]}'] + [''] * (columns - len(lead) - 1)
    return '| ' + ' | '.join(cells) + ' |'


def module_table(records, repeats: int) -> list:
    head = ['module', 'input', 'params', 'FLOPs', 'forward ms', 'fwd+bwd ms', 'peak MiB']
    lines = _table_head(head)
    for r in records:
        lead = [r['module'], shape_str(r['shape'])]
        if r['status'] != 'ok':
            lines.append(_failed(r, len(head), lead))
            continue
        lines.append('| ' + ' | '.join(lead + [
            f'{r["params"]:,}', human(r['flops']), latency(r['forward_ms'], repeats),
            latency(r['forward_backward_ms'], repeats), f'{r["peak_memory_mb"]:.1f}']) + ' |')
    return lines


def conv_table(records, repeats: int) -> list:
    """Conv-replacing modules against the conv they replace (timed interleaved)."""
    head = ['module', 'input', 'conv forward ms', 'ratio', 'conv fwd+bwd ms', 'ratio',
            'conv peak MiB', 'ratio', 'params ratio', 'FLOPs ratio']
    lines = _table_head(head)
    for r in records:
        c, q = r['replaced_conv'], r['ratio_to_conv']
        lines.append('| ' + ' | '.join([
            r['module'], shape_str(r['shape']), median(c['forward_ms'], repeats),
            f'{q["forward_ms"]:.2f}', median(c['forward_backward_ms'], repeats),
            f'{q["forward_backward_ms"]:.2f}', f'{c["peak_memory_mb"]:.1f}',
            f'{q["peak_memory_mb"]:.2f}', f'{q["params"]:.2f}', f'{q["flops"]:.2f}']) + ' |')
    return lines


def peer_table(records, repeats: int) -> list:
    head = ['module', 'peer', 'input', 'params ours / theirs', 'FLOPs ours / theirs',
            'max rel. diff', 'forward ms ours / theirs', 'ratio', 'fwd+bwd ms ours / theirs',
            'ratio', 'peak MiB ours / theirs']
    lines = _table_head(head)
    for r in records:
        lead = [r['module'], r['peer'], shape_str(r['shape'])]
        if r['status'] != 'ok':
            lines.append(_failed(r, len(head), lead))
            continue
        o, t = r['ours'], r['theirs']
        diff = f'{r["max_rel_diff"]:.1e}' if r['incomparable'] is None else 'n/a (see notes)'
        lines.append('| ' + ' | '.join(lead + [
            f'{o["params"]:,} / {t["params"]:,}', f'{human(o["flops"])} / {human(t["flops"])}',
            diff, f'{median(o["forward_ms"], repeats)} / {median(t["forward_ms"], repeats)}',
            f'{r["ratio_forward"]:.2f}',
            f'{median(o["forward_backward_ms"], repeats)} / '
            f'{median(t["forward_backward_ms"], repeats)}',
            f'{r["ratio_forward_backward"]:.2f}',
            f'{o["peak_memory_mb"]:.1f} / {t["peak_memory_mb"]:.1f}']) + ' |')
    return lines


def model_table(records, repeats: int) -> list:
    head = ['model', 'sites', 'params', 'x plain', 'FLOPs', 'x plain', 'forward ms', 'x plain',
            'fwd+bwd ms', 'x plain', 'peak MiB', 'x plain']
    lines = _table_head(head)
    ok = [r for r in records if r['status'] == 'ok']
    if ok:
        plains = [r['plain'] for r in ok]
        lines.append('| ' + ' | '.join([
            f'{ok[0]["model"]} (plain)', '0', f'{plains[0]["params"]:,}', '1',
            human(plains[0]['flops']), '1',
            f'{_median(p["forward_ms"]["median"] for p in plains):.2f}', '1',
            f'{_median(p["forward_backward_ms"]["median"] for p in plains):.2f}', '1',
            f'{_median(p["peak_memory_mb"] for p in plains):.1f}', '1']) + ' |')
    for r in records:
        lead = [f'{r["model"]} + {r["module"]}']
        if r['status'] != 'ok':
            lines.append(_failed(r, len(head), lead))
            continue
        q = r['ratios']
        lines.append('| ' + ' | '.join(lead + [
            str(r['sites']), f'{r["params"]:,}', f'{q["params"]:.3f}', human(r['flops']),
            f'{q["flops"]:.3f}', latency(r['forward_ms'], repeats), f'{q["forward_ms"]:.2f}',
            latency(r['forward_backward_ms'], repeats), f'{q["forward_backward_ms"]:.2f}',
            f'{r["peak_memory_mb"]:.1f}', f'{q["peak_memory_mb"]:.2f}']) + ' |')
    return lines


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _table_head(head) -> list:
    return ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * len(head)) + '|']


def _budget(m) -> str:
    if not m['max_seconds']:
        return ''
    return (f' (fewer when warming up or timing reached {m["max_seconds"]:g} s, at least 1 '
            'and 3; then n = the number of timed calls is shown)')


def _loads(values) -> str:
    return ', '.join(f'{v:.1f}' for v in values)


def _device(m) -> str:
    name = m.get('device_name', m['device'])
    return m['device'] if name == m['device'] else f'{m["device"]} ({name})'


def _memory_source(m) -> str:
    if m['device'] == 'cpu':
        return 'torch profiler allocation records, profile_memory=True'
    return 'max_memory_allocated, reset before each measurement, minus the bytes allocated before'


def markdown(results: dict) -> str:
    m = results['meta']
    sync = '' if m['device'] == 'cpu' else ', the clock read after synchronising the device'
    lines = [
        '# Attention module benchmark', '',
        f'{m["date"]}; cvattn_mm {m["cvattn_mm"]}, torch {m["torch"]}, Python {m["python"]}; '
        f'{m["cpu"]} ({m["cpu_count"]} logical CPUs), {m["threads"]} torch threads, '
        f'{m["dtype"]} on {_device(m)}; load average (1, 5, 15 min) at the start '
        f'{_loads(m["load_average"])}, at the end {_loads(m["load_average_end"])}.', '',
        f'Latency: median [first quartile, third quartile] of {m["repeats"]} calls after '
        f'{m["warmup"]} warm-up calls, in ms{_budget(m)}{sync}; forward in eval mode without '
        'autograd, forward+backward in train mode (gradients of the input and the parameters). '
        'Peak memory: the most bytes held by tensors allocated during one forward+backward '
        f'({_memory_source(m)}; inputs and weights excluded). FLOPs: mmengine FlopAnalyzer '
        '(one multiply-add = 1; element-wise ops not counted).', '']
    if results['modules']:
        lines += ['## Modules', ''] + module_table(results['modules'], m['repeats']) + ['']
        replacing = [r for r in results['modules'] if r['status'] == 'ok' and 'ratio_to_conv' in r]
        if replacing:
            lines += ['## Conv-replacing modules against the conv they replace', '',
                      'The bias-free conv of the same kernel size, in = out channels, stride 1, '
                      'timed interleaved with the module; ratio = module / conv (medians).', '']
            lines += conv_table(replacing, m['repeats']) + ['']
    if results['peers']:
        lines += ['## Side by side with public implementations', '',
                  'Ours with the hyper-parameters of the pair, the peer holding our weights; '
                  'ratio = ours / theirs (medians, timed interleaved call by call). Max rel. '
                  'diff: max |ours - theirs| / max |theirs| on random weights in eval mode at '
                  'that input. A peer named "reference ..." stands in for a module without a '
                  'package implementation: the paper\'s equations in plain autograd ops, laid '
                  'out as the official code named in its note computes them '
                  '(cvattn_mm/analysis/references.py).', '']
        lines += peer_table(results['peers'], m['repeats']) + ['', 'Notes:', '']
        names = {r['peer'] for r in results['peers']}
        lines += [f'- {p.name} ({p.module}): {p.differences}' for p in all_peers()
                  if p.name in names]
        lines += [f'- {r["peer"]} at {shape_str(r["shape"])}: outputs not compared: '
                  f'{r["incomparable"]}' for r in results['peers']
                  if r['status'] == 'ok' and r['incomparable']]
        lines.append('')
    if results['models']:
        lines += [f'## {results["models"][0]["model"]} (mmpretrain) with each module at its '
                  'paper positions', '',
                  f'Input {shape_str(results["models"][0]["input"])}. Each model is timed '
                  'interleaved with the plain model, and its ratios are against the plain '
                  'model of that round; the plain row shows the median over the rounds.', '']
        lines += model_table(results['models'], m['repeats']) + ['']
    return '\n'.join(lines)


# --- plot ------------------------------------------------------------------------------


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = [k for k in ('modules', 'peers', 'models')
              if any(r['status'] == 'ok' for r in results[k])]
    rows = max([sum(r['status'] == 'ok' for r in results[k]) for k in panels] + [1])
    fig, axes = plt.subplots(1, max(len(panels), 1), squeeze=False,
                             figsize=(6.5 * max(len(panels), 1), max(5, 1.5 + 0.3 * rows)))
    for ax, kind in zip(axes[0], panels):
        ok = [r for r in results[kind] if r['status'] == 'ok']
        if kind == 'modules':
            labels = [f'{r["module"]} {shape_str(r["shape"])}' for r in ok]
            series = {'forward': [r['forward_ms']['median'] for r in ok],
                      'fwd+bwd': [r['forward_backward_ms']['median'] for r in ok]}
            _bars(ax, labels, series, 'median latency (ms, log)', log=True)
            ax.set_title('Modules')
        elif kind == 'peers':
            labels = [f'{r["module"]} vs {r["peer"].split()[0]} {shape_str(r["shape"])}'
                      for r in ok]
            series = {'forward': [r['ratio_forward'] for r in ok],
                      'fwd+bwd': [r['ratio_forward_backward'] for r in ok]}
            _bars(ax, labels, series, 'latency ours / theirs', ref=1.0)
            ax.set_title('Ours vs public implementations')
        else:
            labels = [f'+ {r["module"]}' for r in ok]
            series = {name: [r['ratios'][key] for r in ok]
                      for name, key in (('params', 'params'), ('forward', 'forward_ms'),
                                        ('fwd+bwd', 'forward_backward_ms'))}
            _bars(ax, labels, series, 'ratio to the plain model', ref=1.0)
            ax.set_title(f'{ok[0]["model"]}, paper positions')
    if not panels:
        axes[0][0].text(0.5, 0.5, 'no successful case', ha='center', va='center')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(ax, labels, series, xlabel, log=False, ref=None):
    height = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.barh([j + i * height for j in range(len(labels))], values, height, label=name)
    ax.set_yticks([j + height * (len(series) - 1) / 2 for j in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    if log:
        ax.set_xscale('log')
    if ref is not None:
        ax.axvline(ref, color='black', linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark, write benchmark.json, .md and .png to ``args.out_dir``, print the
    Markdown; return the results."""
    if args.threads:
        torch.set_num_threads(args.threads)
    info = meta(args)
    results = run_benchmark(
        args.modules or default_modules(), args.shapes or [shape_arg(s) for s in DEFAULT_SHAPES],
        Timing(args.repeats, args.warmup, args.max_seconds or None, args.max_memory_gb),
        peers=not args.no_peers, model_input=None if args.no_models else args.model_input,
        model_depth=args.model_depth,
        progress=lambda cases: tqdm(cases, desc='benchmark', unit='case', file=sys.stderr),
        device=resolve_device(args.device))
    info['load_average_end'] = list(os.getloadavg())
    results = dict(meta=info, **results)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'benchmark.json'), 'w') as f:
        json.dump(results, f, indent=1)
    text = markdown(results)
    with open(os.path.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(text + '\n')
    plot(results, os.path.join(args.out_dir, 'benchmark.png'))
    print(text)
    return results

