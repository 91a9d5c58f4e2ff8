"""Several training seeds per model: the runs, their statistics and the verdict.

One seed decides nothing on a small task: the optimiser's luck can move a model by more than
the attention does. Every model is trained once per seed (``randomness.seed``: the
initialisation, the data order and the augmentation; the data set stays the same), and a
model is compared with the baseline seed by seed (a paired difference).

The verdict against the baseline is claimed only when the difference has the same sign in
every seed and its mean is larger than the spread: the largest of the baseline's, the model's
and the differences' sample standard deviations (``ddof=1``). Otherwise it is
:data:`NO_CLEAR_DIFFERENCE`.
"""
import copy
import math
import os.path as osp
import statistics
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from mmengine.config import Config

from .runs import RunResult, train_and_evaluate

BASELINE = 'baseline'
NO_CLEAR_DIFFERENCE = 'no clear difference'


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (``ddof=1``); NaN for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class SeedSummary:
    """One model over the seeds; the differences are to the baseline's run of the same seed.

    ``metrics``, ``diffs`` and ``runs`` follow ``seeds``. ``diffs``, ``diff_mean`` and
    ``diff_std`` are ``None`` for the baseline; ``train_seconds`` and ``latency_ms`` are means
    over the seeds.
    """

    name: str
    metric_name: str
    seeds: List[int]
    metrics: List[float]
    mean: float
    std: float
    params: int
    attention_params: int
    train_seconds: float
    latency_ms: float
    verdict: str
    diffs: Optional[List[float]] = None
    diff_mean: Optional[float] = None
    diff_std: Optional[float] = None
    runs: List[RunResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = {k: v for k, v in vars(self).items() if k != 'runs'}
        # JSON has no NaN: a single seed has no standard deviation
        for key in ('std', 'diff_std'):
            if data[key] is not None and math.isnan(data[key]):
                data[key] = None
        data['runs'] = [dict(seed=s, **r.as_dict()) for s, r in zip(self.seeds, self.runs)]
        return data


def verdict(diffs: Sequence[float], spread: float) -> str:
    """``'better'`` / ``'worse'`` than the baseline, or :data:`NO_CLEAR_DIFFERENCE`.

    Args:
        diffs: The model's metric minus the baseline's, one per seed.
        spread: The seed spread the mean difference must exceed.
    """
    if len(diffs) < 2:
        return f'{NO_CLEAR_DIFFERENCE} (one seed)'
    mean = statistics.fmean(diffs)
    if all(d > 0 for d in diffs) and mean > spread:
        return 'better'
    if all(d < 0 for d in diffs) and -mean > spread:
        return 'worse'
    return NO_CLEAR_DIFFERENCE


def summarize(models: Sequence[Tuple[str, Sequence[RunResult]]],
              seeds: Sequence[int]) -> List[SeedSummary]:
    """Statistics of each model's runs; the first model is the baseline.

    Args:
        models: ``(name, runs)`` per model, ``runs`` one per seed in the order of ``seeds``.
        seeds: The seeds of the runs.

    Returns:
        list[SeedSummary]: In the order of ``models``.
    """
    seeds = list(seeds)
    if not models:
        raise ValueError('summarize: no models')
    for name, runs in models:
        if len(runs) != len(seeds):
            raise ValueError(f'summarize: {name} has {len(runs)} runs for {len(seeds)} seeds '
                             f'{seeds}')
    reference = [r.metric for r in models[0][1]]
    reference_std = sample_std(reference)
    summaries = []
    for index, (name, runs) in enumerate(models):
        metrics = [r.metric for r in runs]
        std = sample_std(metrics)
        common = dict(
            name=name, metric_name=runs[0].metric_name, seeds=seeds, metrics=metrics,
            mean=statistics.fmean(metrics), std=std, params=runs[0].params,
            attention_params=runs[0].attention_params,
            train_seconds=statistics.fmean(r.train_seconds for r in runs),
            latency_ms=statistics.fmean(r.latency_ms for r in runs), runs=list(runs))
        if index == 0:
            summaries.append(SeedSummary(verdict=BASELINE, **common))
            continue
        diffs = [m - b for m, b in zip(metrics, reference)]
        diff_std = sample_std(diffs)
        spread = max(reference_std, std, diff_std)
        summaries.append(SeedSummary(
            verdict=verdict(diffs, spread), diffs=diffs, diff_mean=statistics.fmean(diffs),
            diff_std=diff_std, **common))
    return summaries


def train_over_seeds(models: Sequence[Tuple[str, Config, str]], seeds: Sequence[int],
                     progress: bool = True, report=print) -> List[SeedSummary]:
    """Train and test every model once per seed; the first model is the baseline.

    The seeds run in the outer loop, so that the first seed's comparison is complete early.

    Args:
        models: ``(name, config, work_dir)`` per model; seed ``s`` writes to
            ``<work_dir>/seed_<s>``.
        seeds: Training seeds (``randomness.seed`` of each run), at least one, distinct.
        progress: Show progress bars.
        report: Called with a line after each run (``None``: silent).

    Returns:
        list[SeedSummary]: See :func:`summarize`.
    """
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'train_over_seeds: seeds must be distinct and at least one, '
                         f'got {seeds}')
    runs = {name: [] for name, _, _ in models}
    if len(runs) != len(models):
        raise ValueError(f'train_over_seeds: model names must be distinct, got '
                         f'{[name for name, _, _ in models]}')
    for seed in seeds:
        for name, cfg, work_dir in models:
            run_cfg = copy.deepcopy(cfg)
            run_cfg.randomness = dict(seed=seed, deterministic=False)
            result = train_and_evaluate(run_cfg, osp.join(work_dir, f'seed_{seed}'), name,
                                        progress=progress)
            runs[name].append(result)
            if report is not None:
                report(f'{name}, seed {seed}: {result.metric_name} {result.metric:.2f} after '
                       f'{result.train_seconds:.0f} s of training')
    return summarize([(name, runs[name]) for name, _, _ in models], seeds)
