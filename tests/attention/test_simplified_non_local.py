"""SimplifiedNonLocal: identity at initialisation, the defining equation, parameters, maps.
(The attention pooling's hand-written backward is tested with GC's, in test_gc.py.)"""
import functools

import pytest
import torch

from cvattn_mm.attention.channel.context_pooling import attention_weights
from cvattn_mm.attention.channel.gc import GC
from cvattn_mm.attention.channel.simplified_non_local import SimplifiedNonLocal
from cvattn_mm.visualization import extract_maps

from . import contract
from .test_gc import check_identity_as_mmdet_plugin


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    params = sum(p.numel() for p in SimplifiedNonLocal(channels).parameters())
    print(f'SimplifiedNonLocal C={channels}: {params} params')
    assert params == channels + channels * channels + channels  # W_k + W_v (with bias)


def test_parameter_count_values():
    assert sum(p.numel() for p in SimplifiedNonLocal(256).parameters()) == 66048
    assert sum(p.numel() for p in SimplifiedNonLocal(2048).parameters()) == 4198400


def test_fresh_block_is_identity():
    x = torch.randn(2, 32, 7, 9)
    module = SimplifiedNonLocal(32)
    assert torch.equal(module(x), x)
    module.init_weights()
    assert torch.equal(module(x), x)
    kaiming = SimplifiedNonLocal(32, init_cfg=dict(type='Kaiming', layer='Conv2d'))
    kaiming.init_weights()
    assert torch.equal(kaiming(x), x)


def test_pretrained_init_cfg_is_not_overwritten(tmp_path):
    source = contract.perturb_parameters(SimplifiedNonLocal(16))
    path = str(tmp_path / 'snl.pth')
    torch.save(source.state_dict(), path)
    module = SimplifiedNonLocal(16, init_cfg=dict(type='Pretrained', checkpoint=path))
    module.init_weights()
    assert torch.equal(module.value_conv.weight, source.value_conv.weight)


def test_equation_against_direct_computation():
    """Paper's order: W_v on every position, then the attention-weighted sum, then add."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(SimplifiedNonLocal(12), scale=0.5).double()
    x = torch.randn(2, 12, 4, 5, dtype=torch.float64)
    flat = x.reshape(2, 12, 20)
    w_k = module.conv_mask.weight.flatten()
    w_v = module.value_conv.weight[:, :, 0, 0]
    b_v = module.value_conv.bias
    expected = torch.empty_like(flat)
    for n in range(2):
        logits = w_k @ flat[n]  # (HW,)
        a = torch.exp(logits - logits.max())
        a = a / a.sum()
        values = w_v @ flat[n] + b_v[:, None]  # (C, HW)
        expected[n] = flat[n] + (values * a).sum(1, keepdim=True)
    with torch.no_grad():
        assert torch.allclose(module(x), expected.reshape_as(x), atol=1e-10)


def test_shares_attention_pooling_with_gc():
    snl = contract.perturb_parameters(SimplifiedNonLocal(16))
    gc = GC(16, reduction=4)
    gc.conv_mask.load_state_dict(snl.conv_mask.state_dict())
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(attention_weights(x, snl.conv_mask), attention_weights(x, gc.conv_mask))
    assert type(snl.conv_mask) is type(gc.conv_mask) and snl.conv_mask.bias is None


@pytest.mark.parametrize('channels', [1, 3, 256])
def test_contract_other_widths(channels):
    contract.run_contract(functools.partial(SimplifiedNonLocal, channels))


@pytest.mark.parametrize('value', [0, -4, 2.5, '8', True])
def test_invalid_in_channels(value):
    with pytest.raises(ValueError, match='SimplifiedNonLocal: in_channels'):
        SimplifiedNonLocal(value)


def test_identity_as_mmdet_plugin():
    check_identity_as_mmdet_plugin('SimplifiedNonLocal', 'snl')


def test_maps_rebuild_the_forward():
    """The output from the context weights map and W_v."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(SimplifiedNonLocal(32), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        maps = extract_maps(module, x)
        weights = maps['context_weights'].values.flatten(1)[:, None]  # (N, 1, HW)
        assert torch.equal(weights, attention_weights(x, module.conv_mask))
        context = (weights * x.flatten(2)).sum(-1)[:, :, None, None]
        rebuilt = x + module.value_conv(context)
    contract.assert_close_rel(rebuilt, expected, 1e-4, 'x + W_v context')
    assert set(maps) == {'context_weights'}


def test_errors_name_the_subclass():
    class MySNL(SimplifiedNonLocal):
        _abbr_ = 'my_snl'

    with pytest.raises(ValueError, match='^MySNL: in_channels'):
        MySNL(0)
