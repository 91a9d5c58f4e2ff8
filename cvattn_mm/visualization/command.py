"""The command line of the attention-map visualisation (``tools/visualize_attention.py``)."""
import argparse
from typing import List

from mmengine.config import DictAction


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of the visualisation to ``parser``."""
    parser.add_argument('config', help='config file; its model is built with its default scope')
    parser.add_argument('--checkpoint', help='weights to load (default: random initialisation)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', nargs='+', metavar='IMG', help='image files')
    source.add_argument('--image-dir', metavar='DIR',
                        help='folder searched recursively for images')
    parser.add_argument('--num-images', type=_positive_int, default=4,
                        help='images taken from --image-dir, spread evenly (default 4)')
    parser.add_argument('--out-dir', default='work_dirs/attention_maps',
                        help='folder of the PNGs (default work_dirs/attention_maps)')
    parser.add_argument('--sites', metavar='PATTERN',
                        help="fnmatch pattern over module paths or site labels, e.g. '*layer4*'")
    parser.add_argument('--max-sites', type=_positive_int, default=6,
                        help='most attention modules per image, spread over depth (default 6)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')


def run(args: argparse.Namespace) -> List[str]:
    """Build the model, load the checkpoint, draw the maps; print and return the PNG paths."""
    from ..config import build_model
    from .visualize import find_images, visualize_config_model

    model = build_model(args.config, args.cfg_options)
    if args.checkpoint:
        from mmengine.runner import load_checkpoint

        load_checkpoint(model, args.checkpoint, map_location='cpu')
    else:
        print('no --checkpoint: the maps are those of randomly initialised weights')
    images = args.images or find_images(args.image_dir, args.num_images)
    paths = visualize_config_model(model, images, args.out_dir, args.max_sites,
                                   sites=args.sites)
    for path in paths:
        print(path)
    return paths
