"""Params and FLOPs of a config's model, and what its attention adds.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--elementwise]
        [--cfg-options k=v ...]

The model is built with the config's default scope (mmpretrain, mmdet, mmseg) and compared
with the same config's model without the attention of cvattn_mm (``InsertAttention``
wrappers replaced by the model they wrap, attention ``plugins`` removed). FLOPs are
mmengine's count on one random image (see ``cvattn_mm/analysis/complexity.py``): multiply-adds
of convs, linears and matmuls, norms and adaptive average pools; ``--elementwise`` also counts
the element-wise work (gates, products, means, max pools, softmax; the rule is in
``cvattn_mm/analysis/elementwise_flops.py``). Detectors get one data sample with the image's
shape, as in mmdet's ``get_flops``. The output states the convention used.
"""
import argparse
import sys

from mmengine.config import DictAction

from cvattn_mm.analysis.complexity import config_complexity
from cvattn_mm.analysis.elementwise_flops import DEFAULT_CONVENTION, ELEMENTWISE_CONVENTION
from cvattn_mm.config import load_config
from cvattn_mm.quiet import silence_upstream_noise


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input size: H W, or one value for a square (default 224 224)')
    parser.add_argument('--elementwise', action='store_true',
                        help='also count element-wise work: gates, products, means, pools, '
                        'softmax (default: mmengine\'s multiply-add count)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings, key=value')
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2) or min(args.shape) < 1:
        parser.error(f'--shape takes H W or one size, got {args.shape}')
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    return args


def percent(added: int, base: int) -> str:
    return f'{100 * added / base:+.2f}%' if base else 'n/a'


def report(config: str, result: dict) -> str:
    """The text printed for ``result`` of :func:`config_complexity`."""
    lines = [f'config: {config}', f'input: 1x3x{result["shape"][0]}x{result["shape"][1]}', '',
             f'{"":24s} {"params":>12s} {"added":>10s} {"":>8s} {"FLOPs":>16s} {"added":>14s}']
    rows = [('model', result)] + [(f'  {name}', part) for name, part in result['parts'].items()]
    for name, r in rows:
        lines.append(f'{name:24s} {r["params"]:12,d} {r["added_params"]:10,d} '
                     f'{percent(r["added_params"], r["base_params"]):>8s} {r["flops"]:16,d} '
                     f'{r["added_flops"]:14,d} {percent(r["added_flops"], r["base_flops"]):>8s}')
    lines += ['', 'added: compared with the same model without the attention of cvattn_mm '
              '(random weights: heads whose work depends on their input, such as an RPN, '
              'may differ by chance)',
              f'attention modules of cvattn_mm: {result["attention_modules"]}, '
              f'{result["attention_params"]:,} params',
              ELEMENTWISE_CONVENTION if result['elementwise'] else DEFAULT_CONVENTION]
    return '\n'.join(lines)


def main(argv=None) -> int:
    silence_upstream_noise()
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    print(report(args.config, config_complexity(cfg, args.shape, args.elementwise)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
