"""Quickstart: train a baseline and an attention model on generated data, compare, visualise.

    python tools/quickstart.py [--task classification|detection|segmentation|all]
        [--data-root data/quickstart] [--work-dir work_dirs/quickstart]

Per task: generates the data set into ``<data-root>/<task>`` unless it is there already,
trains the task's two quickstart configs (``configs/quickstart/``: ResNet-18 plain and with
attention inserted by ``InsertAttention``) on this machine's CPU, tests both, prints a table
(the task's metric, parameters, training time, inference time) and draws the attention
model's maps on a few validation images. Everything is written under ``--work-dir``.
"""
import argparse
import os
import os.path as osp
import sys
import time

import torch
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint

import cvattn_mm  # noqa: F401  (registers the modules)
from cvattn_mm.analysis.runs import format_table, set_data_root, train_and_evaluate
from cvattn_mm.analysis.schedule import set_schedule_length
from cvattn_mm.config import build_model, load_config
from cvattn_mm.datasets import ensure_quickstart_data
from cvattn_mm.quiet import silence_upstream_noise
from cvattn_mm.visualization import visualize_config_model
from cvattn_mm.visualization.visualize import find_images

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs', 'quickstart')
# task: (baseline config, attention config, model names)
TASKS = {
    'classification': ('cls_resnet18.py', 'cls_resnet18-cbam.py',
                       ('ResNet-18', 'ResNet-18 + CBAM')),
    'detection': ('det_retinanet_r18.py', 'det_retinanet_r18-gc.py',
                  ('RetinaNet R-18', 'RetinaNet R-18 + GC')),
    'segmentation': ('seg_pspnet_r18.py', 'seg_pspnet_r18-cbam.py',
                     ('PSPNet R-18', 'PSPNet R-18 + CBAM')),
}
# the folder of each task's generated validation images
VAL_IMAGES = dict(classification='val', detection='val', segmentation='img_dir/val')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', choices=[*TASKS, 'all'], default='classification')
    parser.add_argument('--data-root', default='data/quickstart',
                        help='generated data sets go to <data-root>/<task>')
    parser.add_argument('--work-dir', default='work_dirs/quickstart')
    parser.add_argument('--num-maps', type=int, default=4,
                        help='validation images whose attention maps are drawn')
    parser.add_argument('--num-train', type=int, help='training images (default: per task)')
    parser.add_argument('--num-val', type=int, help='validation images (default: per task)')
    parser.add_argument('--train-length', type=int, metavar='N',
                        help='train every run for N epochs (iterations for iteration-based '
                        'configs): loop, learning-rate schedule and intervals together')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, key=value')
    return parser.parse_args(argv)


def run_task(task: str, args) -> str:
    baseline, attention, names = TASKS[task]
    data_root = osp.abspath(osp.join(args.data_root, task))
    start = time.perf_counter()
    sizes = {k: v for k, v in dict(num_train=args.num_train, num_val=args.num_val).items()
             if v is not None}
    data = ensure_quickstart_data(task, data_root, **sizes)
    state = f'generated in {time.perf_counter() - start:.0f} s' if data['written'] else 'found'
    print(f'\n== {task}: data {data_root} ({data["num_train"]} train, {data["num_val"]} val '
          f'images of {data["image_size"]}x{data["image_size"]}, {state})', flush=True)
    results = []
    for config, name in zip((baseline, attention), names):
        cfg = load_config(osp.join(CONFIGS, config))
        if args.train_length is not None:
            set_schedule_length(cfg, args.train_length)
        cfg.merge_from_dict(args.cfg_options or {})
        set_data_root(cfg, data_root)
        work_dir = osp.join(args.work_dir, task, osp.splitext(config)[0])
        result = train_and_evaluate(cfg, work_dir, name)
        results.append(result)
        print(f'{name}: {result.metric_name} {result.metric:.2f} after '
              f'{result.train_seconds:.0f} s of training', flush=True)
    table = format_table(results)
    images = find_images(osp.join(data_root, VAL_IMAGES[task]), args.num_maps)
    model = load_trained_model(osp.join(CONFIGS, attention), results[-1].work_dir,
                               args.cfg_options)
    pictures = visualize_config_model(model, images, osp.join(args.work_dir, task, 'maps'),
                                      max_sites=6)
    with open(osp.join(args.work_dir, task, 'results.md'), 'w') as f:
        f.write(f'# Quickstart, {task}\n\n{table}\n')
    return f'{task}\n\n{table}\n\nattention maps of {names[1]}:\n' + '\n'.join(
        f'  {p}' for p in pictures)


def load_trained_model(config: str, work_dir: str, cfg_options=None):
    """The model of ``config`` with the weights of the last checkpoint in ``work_dir``."""
    model = build_model(config, cfg_options)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        load_checkpoint(model, f.read().strip(), map_location='cpu', logger='silent')
    return model.eval()


def main(argv=None) -> int:
    silence_upstream_noise()
    args = parse_args(argv)
    tasks = list(TASKS) if args.task == 'all' else [args.task]
    print(f'cvattn_mm quickstart: {", ".join(tasks)} on {torch.get_num_threads()} CPU threads; '
          f'writing to {osp.abspath(args.work_dir)}', flush=True)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.perf_counter()
    reports = [run_task(task, args) for task in tasks]
    print('\n' + '\n\n'.join(reports))
    print(f'\nquickstart finished in {time.perf_counter() - start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
