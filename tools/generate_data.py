"""Write a synthetic data set for the quickstart (docs/architecture.md, "Embedded data and
the quickstart").

Example::

    python tools/generate_data.py classification data/generated/classification --num-train 400
"""
import argparse
import os

from cvattn_mm.datasets import TASKS, generate_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate a synthetic data set in the '
                                     'format the upstream OpenMMLab dataset reads.')
    parser.add_argument('task', choices=tuple(TASKS))
    parser.add_argument('out_dir', nargs='?', help='default: data/generated/<task>')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--image-size', type=int, help='default: 64 for classification, '
                        '128 otherwise')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = args.out_dir or os.path.join('data', 'generated', args.task)
    info = generate_dataset(args.task, out_dir, num_train=args.num_train,
                            num_val=args.num_val, image_size=args.image_size, seed=args.seed)
    state = 'wrote' if info['written'] else 'up to date (same arguments, nothing written):'
    size = info['image_size']
    print(f'{info["task"]}: {state} {info["num_train"]} train + {info["num_val"]} val images '
          f'of {size}x{size} (seed {info["seed"]}) in {info["data_root"]}')
    print(f'classes: {", ".join(info["classes"])}')
    for split in ('train', 'val'):
        counts = ', '.join(f'{name} {n}' for name, n in info['counts'][split].items())
        print(f'{split}: {info[split]}\n  {info["counted"]} per class: {counts}')


if __name__ == '__main__':
    main()
