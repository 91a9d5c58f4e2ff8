"""Train a baseline and several attention modules on one config over several seeds; table and
plot.

    python tools/analysis/compare.py [CONFIG] [--modules SE ECA CBAM SimAM] [--seeds 0 1 2]
        [--data-root DIR] [--work-dir work_dirs/compare] [--train-length N]
        [--cfg-options k=v ...]

CONFIG (default: the classification quickstart, configs/quickstart/cls_resnet18.py) must wrap
its backbone in InsertAttention; each module goes to its paper's position. Every model trains
once per seed. A quickstart config's data set is generated when its folder is missing. Writes
compare.md (mean ± std over the seeds, the per-seed figures and differences to the baseline, a
verdict), compare.json (every run) and compare.png (error bars) to --work-dir.
"""
import argparse
import functools
import os.path as osp
import sys

from mmengine.config import DictAction

import cvattn_mm  # noqa: F401  (registers the modules)
from cvattn_mm.analysis.compare import DEFAULT_SEEDS, compare_modules
from cvattn_mm.analysis.runs import set_data_root
from cvattn_mm.analysis.schedule import set_schedule_length
from cvattn_mm.analysis.seed_report import format_seed_table, write_seed_report
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.config import load_config
from cvattn_mm.datasets import SCOPE_TASKS, ensure_quickstart_data
from cvattn_mm.quiet import silence_upstream_noise

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'quickstart', 'cls_resnet18.py')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG,
                        help='config with an InsertAttention backbone (default: %(default)s)')
    parser.add_argument('--modules', nargs='+', default=['SE', 'ECA', 'CBAM', 'SimAM'],
                        help='attention modules to compare (default: %(default)s)')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(DEFAULT_SEEDS),
                        help='training seeds; every model runs with each (default: %(default)s)')
    parser.add_argument('--data-root', help="the data set's folder (default: the config's)")
    parser.add_argument('--work-dir', default='work_dirs/compare')
    parser.add_argument('--train-length', type=int, metavar='N',
                        help='train every run for N epochs (iterations for iteration-based '
                        'configs): loop, learning-rate schedule and intervals together')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings of every run, key=value')
    args = parser.parse_args(argv)
    known = sorted(attention_classes())
    unknown = [m for m in args.modules if m not in known]
    if unknown:
        parser.error(f'unknown modules {unknown}; registered: {", ".join(known)}')
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')
    return args


def main(argv=None) -> int:
    silence_upstream_noise()
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.train_length is not None:
        set_schedule_length(cfg, args.train_length)
    cfg.merge_from_dict(args.cfg_options or {})
    if args.data_root:
        set_data_root(cfg, osp.abspath(args.data_root))
    quickstart = osp.dirname(osp.abspath(args.config)) == osp.dirname(DEFAULT_CONFIG)
    if quickstart and not osp.isdir(cfg.data_root):
        ensure_quickstart_data(SCOPE_TASKS[cfg.default_scope], cfg.data_root)
    summaries = compare_modules(cfg, args.modules, args.work_dir, seeds=args.seeds,
                                report=functools.partial(print, flush=True))
    title = f'{summaries[0].name}: baseline vs {", ".join(args.modules)}'
    paths = write_seed_report(summaries, args.work_dir, 'compare', title)
    print(format_seed_table(summaries))
    print('\n'.join(f'wrote {path}' for path in paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
