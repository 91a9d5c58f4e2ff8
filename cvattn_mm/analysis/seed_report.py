"""Report models trained over several seeds: a Markdown table, JSON and an error-bar plot.

The input is :func:`cvattn_mm.analysis.seeds.summarize`'s list (the baseline first).
"""
import json
import math
import os
import os.path as osp
from typing import Dict, Sequence

import numpy as np

from .seeds import SeedSummary


def _number(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return 'n/a'
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def _mean_std(mean: float, std: float, signed: bool = False) -> str:
    text = _number(mean, signed)
    return text if std is None or math.isnan(std) else f'{text} ± {std:.2f}'


def format_seed_table(summaries: Sequence[SeedSummary]) -> str:
    """A Markdown table: per model the metric's mean ± sample std and the per-seed figures,
    the difference to the baseline (mean ± std, per seed), the verdict, the sizes and the
    times (means over the seeds)."""
    if not summaries:
        return ''
    first = summaries[0]
    seeds = '/'.join(str(s) for s in first.seeds)
    rows = [f'| model | {first.metric_name} mean ± std | seeds {seeds} | vs baseline | '
            f'per seed | verdict | params | + attention | train (s/run) | inference (ms/img) |',
            '|---|---:|---:|---:|---:|---|---:|---:|---:|---:|']
    for s in summaries:
        per_seed = ' / '.join(_number(m) for m in s.metrics)
        if s.diffs is None:
            diff, diffs = '', ''
        else:
            diff = _mean_std(s.diff_mean, s.diff_std, signed=True)
            diffs = ' / '.join(_number(d, signed=True) for d in s.diffs)
        rows.append(f'| {s.name} | {_mean_std(s.mean, s.std)} | {per_seed} | {diff} | {diffs} | '
                    f'{s.verdict} | {s.params / 1e6:.2f}M | {s.attention_params:,} | '
                    f'{s.train_seconds:.0f} | {s.latency_ms:.2f} |')
    return '\n'.join(rows)


def plot_seeds(summaries: Sequence[SeedSummary], path: str, title: str = '') -> None:
    """Two panels with error bars (mean ± sample std) and each seed's figure as a dot: the
    metric per model, and each model's difference to the baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4))
    FigureCanvasAgg(fig)
    metric_ax, diff_ax = fig.subplots(1, 2)
    labels = [s.name for s in summaries]
    # the seeds' dots right of the error bar, in the order of the seeds
    offsets = np.linspace(0.12, 0.3, len(summaries[0].seeds))

    def panel(ax, positions, means, stds, values, colours):
        for x, mean, std, points, colour in zip(positions, means, stds, values, colours):
            ax.errorbar(x, mean, yerr=None if math.isnan(std) else std, fmt='s', color=colour,
                        capsize=6, markersize=7, elinewidth=1.5)
            ax.scatter(x + offsets, points, s=14, color=colour, alpha=0.55,
                       zorder=3)

    colours = ['black'] + [f'C{i % 10}' for i in range(len(summaries) - 1)]
    panel(metric_ax, range(len(summaries)), [s.mean for s in summaries],
          [s.std for s in summaries], [s.metrics for s in summaries], colours)
    metric_ax.set_xticks(range(len(summaries)), labels, rotation=20, ha='right', fontsize=8)
    metric_ax.set_ylabel(summaries[0].metric_name)
    metric_ax.set_title('per model: mean ± std, dots = seeds', fontsize=9)
    others = summaries[1:]
    if others:
        panel(diff_ax, range(len(others)), [s.diff_mean for s in others],
              [s.diff_std for s in others], [s.diffs for s in others], colours[1:])
        diff_ax.set_xticks(range(len(others)), [f'{s.name}\n({s.verdict})' for s in others],
                           rotation=20, ha='right', fontsize=8)
    diff_ax.axhline(0.0, color='black', linewidth=0.8)
    diff_ax.set_ylabel(f'difference to {summaries[0].name}')
    diff_ax.set_title('vs baseline, seed by seed', fontsize=9)
    for ax in (metric_ax, diff_ax):
        ax.grid(axis='y', alpha=0.3)
    seeds = ', '.join(str(s) for s in summaries[0].seeds)
    fig.suptitle(f'{title + ": " if title else ""}seeds {seeds}', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_seed_report(summaries: Sequence[SeedSummary], out_dir: str, stem: str,
                      title: str = '') -> Dict[str, str]:
    """Write ``<stem>.md`` (the table), ``<stem>.json`` (every figure, per seed) and
    ``<stem>.png`` (:func:`plot_seeds`) to ``out_dir``.

    Returns:
        dict: The paths by extension.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: osp.join(out_dir, f'{stem}.{ext}') for ext in ('md', 'json', 'png')}
    with open(paths['md'], 'w') as f:
        f.write(f'# {title}\n\n' if title else '')
        f.write(format_seed_table(summaries) + '\n')
    with open(paths['json'], 'w') as f:
        json.dump(dict(title=title, seeds=summaries[0].seeds,
                       models=[s.as_dict() for s in summaries]), f, indent=1)
        f.write('\n')
    plot_seeds(summaries, paths['png'], title)
    return paths
