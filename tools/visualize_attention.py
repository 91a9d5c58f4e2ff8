"""Draw the attention maps of a config's model on images, one PNG per image.

    python tools/visualize_attention.py CONFIG [--checkpoint CKPT]
        (--images IMG [IMG ...] | --image-dir DIR [--num-images N])
        [--out-dir work_dirs/attention_maps] [--sites PATTERN] [--max-sites 6]
        [--cfg-options k=v ...]

Spatial gates and attention weights are overlaid on the image, channel gates shown as
histograms, deformable sampling points scattered over it; see cvattn_mm/visualization.
"""
import argparse
import sys

from cvattn_mm.quiet import silence_upstream_noise
from cvattn_mm.visualization.command import add_arguments, run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    silence_upstream_noise()
    run(parse_args(argv))
    return 0


if __name__ == '__main__':
    sys.exit(main())
