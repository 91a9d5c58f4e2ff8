"""Compare attention modules fairly: one config, one schedule, the same seeds; only the module
varies.

The baseline is the config with no insertion; each module is inserted at its paper's position
(``InsertAttention``'s ``at='paper'``). Every model trains once per seed and is tested on the
same split (:func:`cvattn_mm.analysis.seeds.train_over_seeds`); the report gives mean ± std
over the seeds, the per-seed differences to the baseline and a verdict
(:mod:`cvattn_mm.analysis.seed_report`).
"""
import copy
import os.path as osp
from typing import List, Sequence

from mmengine.config import Config

from .runs import set_attention
from .seeds import SeedSummary, train_over_seeds

#: The seeds of a comparison unless told otherwise.
DEFAULT_SEEDS = (0, 1, 2)


def compare_modules(cfg: Config, modules: Sequence[str], work_dir: str,
                    seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = True,
                    report=print) -> List[SeedSummary]:
    """Train and test ``cfg`` without attention and with each of ``modules``, once per seed.

    Args:
        cfg: A config whose ``model.backbone`` is an ``InsertAttention``.
        modules: Registered attention module names.
        work_dir: Model ``m`` with seed ``s`` writes to ``<work_dir>/<m>/seed_<s>``
            (``baseline`` for the config without attention).
        seeds: The training seeds; every model runs with each.
        progress: Show progress bars.
        report: Called with a line after each run (``None``: silent).

    Returns:
        list[SeedSummary]: The baseline first, then the modules in order.
    """
    stem = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    models = []
    for module in [None, *modules]:
        model_cfg = copy.deepcopy(cfg)  # Config.copy shares the nested dicts
        set_attention(model_cfg, module)
        name = stem if module is None else f'{stem} + {module}'
        models.append((name, model_cfg, osp.join(work_dir, module or 'baseline')))
    return train_over_seeds(models, seeds, progress=progress, report=report)
