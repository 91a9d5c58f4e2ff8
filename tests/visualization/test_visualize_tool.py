"""tools/visualize_attention.py in-process on a tiny classifier and generated images, and the
drawing on its own."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from mmengine.config import Config
from mmengine.registry import DefaultScope

from cvattn_mm.datasets import generate_dataset
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import (
    AttentionMap,
    CapturedMaps,
    draw_attention_maps,
    visualize_config_model,
)
from cvattn_mm.visualization.draw import select_sites, site_label

from .test_maps import MAPPED, resnet18_insertion

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

CONFIG = """\
default_scope = 'mmpretrain'
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(num_classes=4, mean=[127.5] * 3, std=[64.0] * 3, to_rgb=True),
    backbone=dict(
        type='InsertAttention',
        module=dict(type='ResNet', depth=18, base_channels=16, stem_channels=8,
                    out_indices=(3, )),
        insertions=[{insertion!r}]),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=4, in_channels=128, topk=(1, )))
"""


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'visualize_attention', osp.join(ROOT, 'tools', 'visualize_attention.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope='module')
def tool():
    return load_tool()


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    generate_dataset('classification', str(root), num_train=4, num_val=4, image_size=64, seed=0)
    return root


def insertion(name):
    return resnet18_insertion(name)


def write_config(tmp_path, name):
    path = tmp_path / f'{name}.py'
    path.write_text(CONFIG.format(insertion=insertion(name)))
    return str(path)


def assert_png(path):
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not blank


@pytest.mark.parametrize('name', MAPPED)
def test_tool_writes_a_png_per_image(name, tool, data_root, tmp_path, capsys):
    image = sorted((data_root / 'val').rglob('*.png'))[0]
    out_dir = tmp_path / 'maps'
    assert tool.main([write_config(tmp_path, name), '--images', str(image), '--out-dir',
                      str(out_dir), '--max-sites', '1']) == 0
    written = sorted(out_dir.iterdir())
    assert [p.name for p in written] == [f'000_{image.parent.name}_{image.stem}.png']
    assert str(written[0]) in capsys.readouterr().out.splitlines()
    assert_png(written[0])


def test_tool_image_dir_checkpoint_and_sites(tool, data_root, tmp_path, capsys):
    config = write_config(tmp_path, 'CBAM')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(Config.fromfile(config).model)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'ckpt.pth')
    out_dir = tmp_path / 'maps'
    tool.main([config, '--checkpoint', str(tmp_path / 'ckpt.pth'), '--image-dir',
               str(data_root / 'val'), '--num-images', '2', '--out-dir', str(out_dir),
               '--sites', '*layer4*', '--cfg-options', 'model.head.topk=1'])
    printed = capsys.readouterr().out
    assert 'no --checkpoint' not in printed
    written = sorted(str(p) for p in out_dir.iterdir())
    assert len(written) == 2
    assert written == sorted(line for line in printed.splitlines() if line.endswith('.png'))
    for path in written:
        assert_png(path)
    with pytest.raises(ValueError, match='no attention map to draw'):
        tool.main([config, '--images', written[0], '--out-dir', str(out_dir),
                   '--sites', '*layer9*'])


def test_tool_arguments(tool):
    with pytest.raises(SystemExit):
        tool.parse_args(['cfg.py'])  # --images or --image-dir is required
    with pytest.raises(SystemExit):
        tool.parse_args(['cfg.py', '--image-dir', 'd', '--max-sites', '0'])
    args = tool.parse_args(['cfg.py', '--images', 'a.png', 'b.png'])
    assert args.images == ['a.png', 'b.png'] and args.max_sites == 6
    assert args.out_dir == 'work_dirs/attention_maps'


def test_visualize_config_model_on_a_built_model(data_root, tmp_path):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(Config.fromfile(write_config(tmp_path, 'SE')).model)
    model.train()
    images = [str(p) for p in sorted((data_root / 'val').rglob('*.png'))[:2]]
    paths = visualize_config_model(model, images, str(tmp_path / 'out'), 3)
    assert [osp.basename(p)[:4] for p in paths] == ['000_', '001_']
    assert all(osp.isfile(p) for p in paths)
    assert model.training
    model.backbone.attention_sites.clear()
    with pytest.raises(ValueError, match='no attention module'):
        visualize_config_model(model, images, str(tmp_path / 'out'), 3)


def fake(path, **maps):
    return CapturedMaps(path, 'Fake', (1, 4, 4, 6), maps)


def test_draw_every_kind_on_a_padded_input(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8)
    points = torch.rand(1, 10, 2) * 2 - 1
    captured = [
        fake('a.attention_sites.layer1-0-bn2.attentions.se',
             gate=AttentionMap('channel', torch.rand(1, 16), 'channel gate')),
        fake('b', spatial=AttentionMap('spatial', torch.rand(1, 4, 6), 'spatial gate'),
             constant=AttentionMap('spatial', torch.full((1, 4, 6), 0.5), 'constant'),
             weights=AttentionMap('weights', torch.rand(1, 2, 3), 'softmax'),
             points=AttentionMap('points', points, 'points', origins=points * 0.5)),
        fake('c'),  # no map: skipped
    ]
    out_file = str(tmp_path / 'maps.png')
    drawn = draw_attention_maps(image, captured, out_file, max_sites=5, input_hw=(32, 64))
    assert [c.path for c in drawn] == [captured[0].path, 'b']
    assert_png(out_file)


def test_site_selection():
    captured = [fake(f'm.attention_sites.layer{i}.attentions.cbam',
                     g=AttentionMap('channel', torch.rand(1, 4), 'g')) for i in range(10)]
    assert site_label(captured[3].path) == 'm.layer3 (cbam)'
    assert site_label('neck.gc') == 'neck.gc'
    chosen = select_sites(captured, 4)
    assert [c.path for c in chosen] == [captured[i].path for i in (0, 3, 6, 9)]
    assert select_sites(captured, 4, 'm.layer7*') == [captured[7]]
    with pytest.raises(ValueError, match='m.layer0'):
        select_sites(captured, 4, 'nothing')
