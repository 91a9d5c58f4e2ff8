"""The ConvReplacement base: construction from a conv, declared capabilities, errors."""
import pytest
import torch
import torch.nn as nn

from cvattn_mm.attention import ConvReplacement

from . import contract
from .plain_conv_replacement import PlainConvReplacement


class NarrowReplacement(ConvReplacement):
    """Takes only 3x3, size-keeping, ungrouped, undilated, bias-free convs (arXiv:1512.03385).
    """

    family = 'spatial'
    paper = 'test double, arXiv:1512.03385'
    _abbr_ = 'narrow'
    no_conv_init = 'it is a test double without weights'

    def forward(self, x):
        self.check_input(x)
        return x.new_zeros(x.shape[0], self.out_channels, *self.output_size(*x.shape[-2:]))


def test_the_test_double_passes_the_replacement_contract():
    contract.check_metadata(PlainConvReplacement)
    contract.check_replaces_conv(PlainConvReplacement)
    contract.check_metadata(NarrowReplacement)


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1),
    dict(in_channels=8, out_channels=8, kernel_size=1, stride=1, padding=0),
    dict(in_channels=8, out_channels=8, kernel_size=3, stride=1, padding=2, dilation=2,
         groups=4),
    dict(in_channels=8, out_channels=4, kernel_size=3, stride=2, padding=0, bias=True),
])
def test_from_conv_takes_every_hyper_parameter_of_the_conv(kwargs):
    conv = nn.Conv2d(**kwargs)
    module = PlainConvReplacement.from_conv(conv)
    assert (module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, module.groups, module.with_bias) == (
        conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
        conv.padding[0], conv.dilation[0], conv.groups, conv.bias is not None)
    for size in [(1, 1), (7, 7), (13, 17), (8, 8)]:
        if min(module.output_size(*size)) < 1:
            continue
        x = torch.randn(1, conv.in_channels, *size)
        assert module.output_size(*size) == tuple(conv(x).shape[-2:])
    assert module.init_from_conv(conv) is True
    x = torch.randn(2, conv.in_channels, 9, 11)
    torch.testing.assert_close(module(x), conv(x), rtol=0, atol=0)


def conv(*args, bias=False, **kwargs):
    return nn.Conv2d(*args, bias=bias, **kwargs)


@pytest.mark.parametrize('conv,match', [
    (conv(8, 8, 5, padding=2), r'NarrowReplacement replaces convs with kernel_size in '
                               r'\(3,\), got kernel_size=5'),
    (conv(8, 8, 3, padding=1, groups=2), 'cannot replace a conv with groups=2'),
    (conv(8, 8, 3, padding=2, dilation=2), 'cannot replace a conv with dilation=2'),
    (conv(8, 8, 3, padding=1, bias=True), 'cannot replace a conv with bias=True'),
    (conv(8, 8, 3, padding=0), r'padding dilation \* \(kernel_size - 1\) // 2 = 1, got '
                               'padding=0'),
    (conv(8, 8, (3, 1), padding=(1, 0)), 'square kernel_size'),
    (conv(8, 8, 3, stride=(2, 1), padding=1), 'square stride'),
    (conv(8, 8, 3, padding='same'), "square padding, got padding='same'"),
    (conv(8, 8, 3, padding=1, padding_mode='reflect'), "padding_mode='reflect'"),
    (nn.Linear(8, 8), 'replaces an nn.Conv2d, got Linear'),
])
def test_convs_it_cannot_replace_are_refused_by_name(conv, match):
    with pytest.raises(ValueError, match=match):
        NarrowReplacement.from_conv(conv)


def test_options_of_the_conv_come_from_the_conv():
    with pytest.raises(ValueError, match=r"PlainConvReplacement: \['stride'\] are taken from "
                                         'the replaced conv'):
        PlainConvReplacement.from_conv(nn.Conv2d(8, 8, 3, padding=1, bias=False), stride=2)


def test_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match='out_channels=6 must be divisible by groups=4'):
        PlainConvReplacement(8, 6, groups=4)


def test_an_empty_conv_output_is_a_clear_error():
    module = PlainConvReplacement(4, kernel_size=3, padding=0)
    with pytest.raises(ValueError, match=r'an input of \(2, 2\) gives an empty output'):
        module(torch.randn(1, 4, 2, 2))


def test_init_from_conv_says_why_it_cannot():
    module = NarrowReplacement(8)
    with pytest.raises(ValueError, match='NarrowReplacement cannot take its weights from the '
                                         'replaced conv: it is a test double without weights'):
        module.init_from_conv(nn.Conv2d(8, 8, 3, padding=1, bias=False))


def test_repr_names_the_replaced_conv():
    assert PlainConvReplacement(8, 16, stride=2).extra_repr() == (
        '8, 16, kernel_size=3, stride=2, padding=1, dilation=1, groups=1, bias=False')
