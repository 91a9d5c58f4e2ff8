"""A ConvReplacement that computes exactly its conv: the test double of the replacement
machinery (not registered; tests register it temporarily where an insertion needs it)."""
import torch.nn as nn

from cvattn_mm.attention import ConvReplacement


class PlainConvReplacement(ConvReplacement):
    """A conv with the replaced conv's hyper-parameters (test double; see arXiv:1512.03385 for
    the ResNet convs it stands in for).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: The
            replaced conv's.
        absorb (bool): Whether to absorb the norm after the replaced conv (then it adds a BN).
        init_cfg (dict, optional): mmengine initialisation config.
    """

    family = 'spatial'
    paper = 'test double, arXiv:1512.03385'
    _abbr_ = 'plain_conv'
    kernel_sizes = None
    takes_groups = takes_dilation = takes_bias = any_padding = True
    conv_init = 'copies the conv (and the absorbed norm)'

    def __init__(self, in_channels, out_channels=None, kernel_size=3, stride=1, padding=None,
                 dilation=1, groups=1, bias=False, init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        self.conv = nn.Conv2d(in_channels, self.out_channels, kernel_size, stride, self.padding,
                              dilation, groups, bias)

    def forward(self, x):
        self.check_input(x)
        return self.conv(x)

    def init_from_conv(self, conv, norm=None):
        self.conv.load_state_dict(conv.state_dict())
        return True


class AbsorbingConvReplacement(PlainConvReplacement):
    """:class:`PlainConvReplacement` followed by its own BN and a ReLU: absorbs the host norm
    (arXiv:1512.03385). The ReLU is a clamp, which saves its input, not its output, for
    backward: the host's in-place ReLU after the (now Identity) norm may modify the output.
    """

    _abbr_ = 'absorbing_conv'
    absorbs_norm = True

    def __init__(self, in_channels, out_channels=None, kernel_size=3, stride=1, padding=None,
                 dilation=1, groups=1, bias=False, init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        self.norm = nn.BatchNorm2d(self.out_channels)

    def forward(self, x):
        return self.norm(super().forward(x)).clamp(min=0)

    def init_from_conv(self, conv, norm=None):
        super().init_from_conv(conv)
        self.norm.load_state_dict(norm.state_dict())
        return True
