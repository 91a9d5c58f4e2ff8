"""`tools/generate_data.py --quickstart`: each task's data where configs/quickstart/ read it,
at the quickstart's sizes; every quickstart config names the command."""
import importlib.util
import os
import os.path as osp

import pytest
from mmengine.config import Config

from cvattn_mm.datasets import QUICKSTART_DATA, ensure_quickstart_data
from cvattn_mm.datasets.quickstart import QUICKSTART_ROOT

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs', 'quickstart')
PREFIX = dict(cls='classification', det='detection', seg='segmentation')
# Small sizes keep the test fast; the command must write whatever QUICKSTART_DATA says.
SMALL = dict(classification=dict(num_train=8, num_val=4, image_size=32),
             detection=dict(num_train=4, num_val=2, image_size=64),
             segmentation=dict(num_train=4, num_val=2, image_size=64))
VAL_IMAGES = dict(classification='val', detection='val', segmentation='img_dir/val')


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'generate_data', osp.join(ROOT, 'tools', 'generate_data.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def quickstart_configs():
    return sorted(name for name in os.listdir(CONFIGS) if name.endswith('.py'))


def count_images(folder):
    return sum(name.endswith('.png') for _, _, names in os.walk(folder) for name in names)


@pytest.mark.parametrize('name', quickstart_configs())
def test_every_quickstart_config_reads_the_commands_data_and_names_it(name):
    task = PREFIX[name.split('_')[0]]
    with open(osp.join(CONFIGS, name)) as f:
        header = ''.join(line for line in f if line.startswith('#')).replace('\n# ', ' ')
    assert f'python tools/generate_data.py --quickstart {task}' in header
    if '-' not in name:  # a baseline config states the sizes
        sizes = QUICKSTART_DATA[task]
        assert (f'{sizes["num_train"]} + {sizes["num_val"]} images of '
                f'{sizes["image_size"]}x{sizes["image_size"]}') in header
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    assert osp.normpath(cfg.data_root) == osp.join(QUICKSTART_ROOT, task)
    if 'image_size' in cfg:
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        assert size == QUICKSTART_DATA[task]['image_size']


def test_command_writes_each_tasks_data_where_the_configs_read_it(tmp_path, monkeypatch,
                                                                   capsys):
    for task, sizes in SMALL.items():
        monkeypatch.setitem(QUICKSTART_DATA, task, sizes)
    monkeypatch.chdir(tmp_path)
    tool = load_tool()
    tool.main(['--quickstart', 'all'])
    printed = capsys.readouterr().out
    for task, sizes in SMALL.items():
        root = tmp_path / QUICKSTART_ROOT / task
        assert (f'{task}: wrote {sizes["num_train"]} train + {sizes["num_val"]} val images of '
                f'{sizes["image_size"]}x{sizes["image_size"]} (seed 0) in {root}') in printed
        assert count_images(root / VAL_IMAGES[task]) == sizes['num_val']
        # what tools/quickstart.py and compare.py look for: found, nothing rewritten
        assert not ensure_quickstart_data(task)['written']
    tool.main(['--quickstart', 'detection', '--data-root', str(tmp_path / 'other')])
    assert count_images(tmp_path / 'other' / 'detection' / 'val') == SMALL['detection']['num_val']
    assert 'up to date' not in capsys.readouterr().out


@pytest.mark.parametrize('argv', [[], ['classification', '--quickstart', 'all'],
                                  ['--quickstart', 'all', '--num-train', '5'],
                                  ['--quickstart', 'detection', '--image-size', '64']])
def test_command_arguments(argv):
    with pytest.raises(SystemExit):
        load_tool().parse_args(argv)
