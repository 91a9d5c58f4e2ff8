"""PointwiseConv2d: a 1x1 conv layer type computing what nn.Conv2d computes."""
import pytest
import torch
import torch.nn as nn

from cvattn_mm.attention.pointwise import PointwiseConv2d


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('size', [(1, 1), (7, 9)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_equals_a_1x1_conv(bias, size, channels_last):
    torch.manual_seed(0)
    layer = PointwiseConv2d(12, 5, bias=bias).double()
    conv = nn.Conv2d(12, 5, 1, bias=bias).double()
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(3, 12, *size, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y, expected = layer(x), conv(x)
    assert y.shape == expected.shape == (3, 5, *size)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    expected_grads = torch.autograd.grad(expected, [x, *conv.parameters()], g)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b)


def test_is_a_conv_with_the_keys_of_one():
    layer = PointwiseConv2d(8, 4)
    assert isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1)
    assert sorted(layer.state_dict()) == sorted(nn.Conv2d(8, 4, 1).state_dict())


def test_a_trace_on_a_1x1_map_is_valid_for_other_sizes():
    layer = PointwiseConv2d(8, 4).eval()
    with torch.no_grad():
        traced = torch.jit.trace(layer, torch.randn(2, 8, 1, 1))
        x = torch.randn(2, 8, 5, 3)
        torch.testing.assert_close(traced(x), layer(x))
