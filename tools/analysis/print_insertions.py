"""Print where the attention of a config lands (inserted or plugins=): path, channels, params.

    python tools/analysis/print_insertions.py CONFIG [--cfg-options k=v ...]
"""
import argparse

from mmengine.config import DictAction

from cvattn_mm.cli import print_insertions
from cvattn_mm.quiet import silence_upstream_noise


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings, key=value')
    return parser.parse_args()


if __name__ == '__main__':
    silence_upstream_noise()
    print_insertions(parse_args())
