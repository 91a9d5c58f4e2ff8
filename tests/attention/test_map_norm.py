"""map_norm: norms of NCHW maps from an mmcv norm_cfg; ChannelLayerNorm normalises channels."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.map_norm import ChannelLayerNorm, build_map_norm


@pytest.mark.parametrize('channels_last', [False, True])
def test_channel_layer_norm_normalises_every_position_over_the_channels(channels_last):
    torch.manual_seed(0)
    norm = ChannelLayerNorm(6, eps=1e-6).double()
    with torch.no_grad():
        norm.norm.weight.normal_()
        norm.norm.bias.normal_()
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)  # W = C: the axis mmcv's 'LN' would take
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = norm(x)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = ((x - mean) / (var + 1e-6).sqrt() * norm.norm.weight.view(1, -1, 1, 1)
                + norm.norm.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_the_inner_layer_norm_sees_channels_last_inputs():
    norm = ChannelLayerNorm(4)
    seen = []
    norm.norm.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    norm(torch.randn(2, 4, 3, 5))
    assert seen == [(2, 3, 5, 4)]
    assert sorted(norm.state_dict()) == ['norm.bias', 'norm.weight']
    assert norm.weight is norm.norm.weight and norm.bias is norm.norm.bias


@pytest.mark.parametrize('norm_type', ['LN', 'LayerNorm', nn.LayerNorm])
def test_build_map_norm_layer_norm(norm_type):
    norm = build_map_norm(dict(type=norm_type, eps=1e-6, requires_grad=False), 8)
    assert isinstance(norm, ChannelLayerNorm) and norm.norm.normalized_shape == (8, )
    assert norm.norm.eps == 1e-6
    assert not any(p.requires_grad for p in norm.parameters())
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(norm(x), F.layer_norm(x.permute(0, 2, 3, 1), (8, ), eps=1e-6)
                               .permute(0, 3, 1, 2))


@pytest.mark.parametrize('cfg,cls', [(dict(type='BN'), nn.BatchNorm2d),
                                     (dict(type='GN', num_groups=2), nn.GroupNorm),
                                     (dict(type='IN'), nn.InstanceNorm2d)])
def test_build_map_norm_other_types_are_mmcv_s(cfg, cls):
    norm = build_map_norm(cfg, 8)
    assert type(norm) is cls
    assert cfg['type'] in ('BN', 'GN', 'IN')  # the caller's config is left unchanged


def modules_with_a_norm_cfg():
    import inspect

    from cvattn_mm.attention.catalog import attention_classes
    from cvattn_mm.registry import MODELS
    return [name for name in attention_classes()
            if 'norm_cfg' in inspect.signature(MODELS.get(name).__init__).parameters]


#: Options under which a module whose defaults build no norm builds its norm_cfg.
USES_ITS_NORM = {'GatherExcite': dict(variant='theta', extent=4)}


@pytest.mark.parametrize('name', modules_with_a_norm_cfg())
def test_every_norm_cfg_takes_a_layer_norm_over_the_channels(name):
    """mmcv's dict(type='LN') is nn.LayerNorm(C) on the last axis: every module builds its
    map norms through build_map_norm, so a LayerNorm normalises channels, at any width."""
    from cvattn_mm.registry import MODELS
    module = MODELS.build(dict(type=name, in_channels=64, norm_cfg=dict(type='LN'),
                               **USES_ITS_NORM.get(name, {})))
    layer_norms = [(p, m) for p, m in module.named_modules() if isinstance(m, nn.LayerNorm)]
    assert layer_norms, f'{name} builds no LayerNorm from norm_cfg LN'
    for path, norm in layer_norms:
        parent = module.get_submodule(path.rpartition('.')[0]) if '.' in path else module
        # a LayerNorm over the channels: inside a ChannelLayerNorm, or over (C', 1, 1)
        assert isinstance(parent, ChannelLayerNorm) or norm.normalized_shape[1:] == (1, 1), path
    x = torch.randn(2, 64, 9, 11)
    module.train()(x).sum().backward()
    assert module.eval()(x).shape == x.shape
