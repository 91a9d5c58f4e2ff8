"""Compare attention modules fairly: one config, one seed, one schedule; only the module varies.

The baseline is the config with no insertion; each module is inserted at its paper's position
(``InsertAttention``'s ``at='paper'``). Every run trains from the same seed and is tested on
the same split (:func:`cvattn_mm.analysis.runs.train_and_evaluate`).
"""
import json
import os
import os.path as osp
from typing import List, Sequence

from mmengine.config import Config

from .runs import RunResult, format_table, set_attention, train_and_evaluate


def compare_modules(cfg: Config, modules: Sequence[str], work_dir: str, seed: int = 0,
                    progress: bool = True) -> List[RunResult]:
    """Train and test ``cfg`` without attention and with each of ``modules``.

    Args:
        cfg: A config whose ``model.backbone`` is an ``InsertAttention``.
        modules: Registered attention module names.
        work_dir: Each run writes to ``<work_dir>/<name>``.
        seed: The seed of every run.
        progress: Show progress bars.

    Returns:
        list[RunResult]: The baseline first, then the modules in order.
    """
    stem = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    results = []
    for module in [None, *modules]:
        run_cfg = cfg.copy()
        run_cfg.randomness = dict(seed=seed, deterministic=False)
        set_attention(run_cfg, module)
        name = stem if module is None else f'{stem} + {module}'
        results.append(train_and_evaluate(run_cfg, osp.join(work_dir, module or 'baseline'),
                                          name, progress=progress))
    return results


def plot_comparison(results: Sequence[RunResult], path: str) -> None:
    """Two panels: the metric against parameters and against inference time per image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = (('params', 'parameters (M)', 1e-6), ('latency_ms', 'inference (ms / image)', 1))
    for ax, (key, label, scale) in zip(axes, panels):
        for i, r in enumerate(results):
            x = getattr(r, key) * scale
            ax.scatter(x, r.metric, s=40, marker='s' if i == 0 else 'o',
                       color='black' if i == 0 else f'C{i % 10}')
            ax.annotate(r.name.split(' + ')[-1] if i else 'baseline', (x, r.metric),
                        textcoords='offset points', xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(results[0].metric_name)
        ax.grid(alpha=0.3)
    fig.suptitle(f'{results[0].name}: baseline vs attention modules (same seed and schedule)',
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_comparison(results: Sequence[RunResult], out_dir: str) -> dict:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` to ``out_dir``; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: osp.join(out_dir, f'compare.{ext}') for ext in ('md', 'json', 'png')}
    with open(paths['md'], 'w') as f:
        f.write(format_table(results) + '\n')
    with open(paths['json'], 'w') as f:
        json.dump([r.as_dict() for r in results], f, indent=1)
    plot_comparison(results, paths['png'])
    return paths
