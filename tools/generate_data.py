"""Write a synthetic data set, or the quickstart's data sets (docs/architecture.md, "Embedded
data and the quickstart").

Examples::

    python tools/generate_data.py --quickstart all
    python tools/generate_data.py classification data/generated/classification --num-train 400

``--quickstart TASK`` (or ``all``) writes each task's data set where configs/quickstart/ read
it (``data/quickstart/<task>``, or ``<--data-root>/<task>``) at the quickstart's sizes
(``cvattn_mm.datasets.QUICKSTART_DATA``); a data set already there with those settings is
kept.
"""
import argparse
import os

from cvattn_mm.datasets import QUICKSTART_DATA, TASKS, ensure_quickstart_data, generate_dataset
from cvattn_mm.datasets.quickstart import QUICKSTART_ROOT

SIZE_OPTIONS = ('num_train', 'num_val', 'image_size')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate a synthetic data set in the '
                                     'format the upstream OpenMMLab dataset reads.')
    parser.add_argument('task', nargs='?', choices=tuple(TASKS))
    parser.add_argument('out_dir', nargs='?', help='default: data/generated/<task>')
    parser.add_argument('--quickstart', choices=(*QUICKSTART_DATA, 'all'),
                        help="the quickstart's data set of a task (or all), at its sizes")
    parser.add_argument('--data-root', default=QUICKSTART_ROOT,
                        help='with --quickstart: data sets go to <data-root>/<task> '
                        f'(default {QUICKSTART_ROOT}, where configs/quickstart/ read them)')
    parser.add_argument('--num-train', type=int, help='default 200')
    parser.add_argument('--num-val', type=int, help='default 50')
    parser.add_argument('--image-size', type=int, help='default: 32 for classification, '
                        '128 otherwise')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if (args.task is None) == (args.quickstart is None):
        parser.error('give a task, or --quickstart TASK|all')
    if args.quickstart and (args.out_dir or any(getattr(args, k) is not None
                                                for k in SIZE_OPTIONS)):
        parser.error('--quickstart writes the quickstart\'s sizes to <--data-root>/<task>: '
                     'no out_dir, --num-train, --num-val or --image-size')
    return args


def describe(info: dict) -> str:
    """What was generated (or found), its classes and splits."""
    state = 'wrote' if info['written'] else 'up to date (same arguments, nothing written):'
    size = info['image_size']
    lines = [f'{info["task"]}: {state} {info["num_train"]} train + {info["num_val"]} val '
             f'images of {size}x{size} (seed {info["seed"]}) in {info["data_root"]}',
             f'classes: {", ".join(info["classes"])}']
    for split in ('train', 'val'):
        counts = ', '.join(f'{name} {n}' for name, n in info['counts'][split].items())
        lines.append(f'{split}: {info[split]}\n  {info["counted"]} per class: {counts}')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.quickstart:
        tasks = list(QUICKSTART_DATA) if args.quickstart == 'all' else [args.quickstart]
        for task in tasks:
            print(describe(ensure_quickstart_data(task, os.path.join(args.data_root, task),
                                                  seed=args.seed)))
        return
    sizes = {k: getattr(args, k) for k in SIZE_OPTIONS if getattr(args, k) is not None}
    out_dir = args.out_dir or os.path.join('data', 'generated', args.task)
    print(describe(generate_dataset(args.task, out_dir, seed=args.seed,
                                    **{'num_train': 200, 'num_val': 50, **sizes})))


if __name__ == '__main__':
    main()
