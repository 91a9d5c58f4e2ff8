"""The base class of the modules that replace a convolution (``replace=`` insertions)."""
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn as nn

from .base import AttentionModule
from .checks import check_int

#: Paper positions of conv-replacing modules (``replace='paper'``), see ``base.PAPER_POSITIONS``.
REPLACING_POSITIONS = ('replaces_mid_conv', 'replaces_block_convs')


class ConvReplacement(AttentionModule):
    """Base of the modules that take the place of a ``Conv2d`` (SKConv, ODConv, SASA, ...).

    A subclass is built from the replaced conv's hyper-parameters (:meth:`from_conv`, used by
    ``replace=`` insertions) and maps ``(N, in_channels, H, W)`` to ``(N, out_channels,
    H_out, W_out)`` with the conv's output size (:meth:`output_size`), so the host block runs
    unchanged. Besides the attributes of :class:`AttentionModule` it declares what it can
    replace:

    * ``kernel_sizes``: the replaced kernel sizes it takes (``None``: any);
    * ``takes_groups`` / ``takes_dilation`` / ``takes_bias``: whether ``groups > 1``,
      ``dilation > 1`` and a conv bias are supported (otherwise a ``ValueError``);
    * ``any_padding``: whether it reproduces any zero padding (a dynamic conv does); if not,
      the padding must be the size-keeping ``dilation * (kernel_size - 1) // 2``;
    * ``absorbs_norm``: the module ends with its own norm and activation, so the insertion
      swaps the norm that followed the replaced conv for ``nn.Identity``; the host's
      activation (an in-place ReLU in mmpretrain's and mmdet's Bottleneck) then runs on the
      module's output, so its last operation must not save its output for backward;
    * ``conv_init``: what :meth:`init_from_conv` does, in words (``''`` when it cannot: then
      ``no_conv_init`` says why).

    Args:
        in_channels (int): Input channels of the replaced conv.
        out_channels (int | None): Output channels (``None``: ``in_channels``).
        kernel_size (int): Kernel size of the replaced conv (square).
        stride (int): Stride of the replaced conv.
        padding (int | None): Zero padding of the replaced conv (``None``: size-keeping).
        dilation (int): Dilation of the replaced conv.
        groups (int): Groups of the replaced conv.
        bias (bool): Whether the replaced conv has a bias.
        init_cfg (dict | list[dict], optional): mmengine initialisation config.
    """

    paper_position: ClassVar[str] = 'replaces_mid_conv'
    kernel_sizes: ClassVar[Optional[Tuple[int, ...]]] = (3, )
    takes_groups: ClassVar[bool] = False
    takes_dilation: ClassVar[bool] = False
    takes_bias: ClassVar[bool] = False
    any_padding: ClassVar[bool] = False
    absorbs_norm: ClassVar[bool] = False
    conv_init: ClassVar[str] = ''
    no_conv_init: ClassVar[str] = ''

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        name = type(self).__name__
        if in_channels is None:
            raise ValueError(f'{name}: in_channels is required (the replaced conv\'s)')
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = check_int(name, 'out_channels', out_channels, 1)
        self.kernel_size = check_int(name, 'kernel_size', kernel_size, 1)
        self.stride = check_int(name, 'stride', stride, 1)
        self.dilation = check_int(name, 'dilation', dilation, 1)
        self.groups = check_int(name, 'groups', groups, 1)
        same = self.dilation * (self.kernel_size - 1) // 2
        self.padding = same if padding is None else check_int(name, 'padding', padding, 0)
        self.with_bias = bool(bias)
        if self.kernel_sizes is not None and self.kernel_size not in self.kernel_sizes:
            raise ValueError(f'{name} replaces convs with kernel_size in {self.kernel_sizes}, '
                             f'got kernel_size={self.kernel_size}')
        unsupported = [(f'groups={self.groups}', self.groups > 1 and not self.takes_groups),
                       (f'dilation={self.dilation}',
                        self.dilation > 1 and not self.takes_dilation),
                       ('bias=True', bool(bias) and not self.takes_bias)]
        for what, refused in unsupported:
            if refused:
                raise ValueError(f'{name} cannot replace a conv with {what} (its paper '
                                 'defines none)')
        if self.padding != same and not self.any_padding:
            raise ValueError(f'{name} keeps the map size (up to the stride): it replaces convs '
                             f'with padding dilation * (kernel_size - 1) // 2 = {same}, got '
                             f'padding={self.padding}')
        for what, channels in (('in_channels', in_channels), ('out_channels', out_channels)):
            if channels % self.groups:
                raise ValueError(f'{name}: {what}={channels} must be divisible by '
                                 f'groups={self.groups}')

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options) -> 'ConvReplacement':
        """The module built with the hyper-parameters of ``conv`` and ``options``."""
        name = cls.__name__
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f'{name} replaces an nn.Conv2d, got {type(conv).__name__}')
        given = sorted(set(options) & set(CONV_OPTIONS))
        if given:
            raise ValueError(f'{name}: {given} are taken from the replaced conv; remove them '
                             'from the config')
        for what in ('kernel_size', 'stride', 'dilation', 'padding'):
            value = getattr(conv, what)
            if isinstance(value, str) or len(set(value)) != 1:
                raise ValueError(f'{name} replaces convs with a square {what}, got '
                                 f'{what}={value!r}')
        if conv.padding_mode != 'zeros':
            raise ValueError(f"{name} replaces zero-padded convs, got padding_mode="
                             f"{conv.padding_mode!r}")
        return cls(in_channels=conv.in_channels, out_channels=conv.out_channels,
                   kernel_size=conv.kernel_size[0], stride=conv.stride[0],
                   padding=conv.padding[0], dilation=conv.dilation[0], groups=conv.groups,
                   bias=conv.bias is not None, **options)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """``(H_out, W_out)`` of the replaced conv for an ``(H, W)`` input."""
        span = self.dilation * (self.kernel_size - 1)
        return tuple((size + 2 * self.padding - span - 1) // self.stride + 1
                     for size in (height, width))

    def check_input(self, x: torch.Tensor) -> None:
        """As :meth:`AttentionModule.check_input`, and the replaced conv's output must not
        be empty."""
        super().check_input(x)
        if not torch.jit.is_tracing() and min(self.output_size(*x.shape[-2:])) < 1:
            raise ValueError(f'{type(self).__name__}: an input of {tuple(x.shape[-2:])} gives '
                             'an empty output for the replaced conv (kernel_size='
                             f'{self.kernel_size}, padding={self.padding}, dilation='
                             f'{self.dilation})')

    def init_from_conv(self, conv: nn.Conv2d, norm: Optional[nn.Module] = None) -> bool:
        """Take what the math allows from the replaced ``conv`` (and, for modules that
        absorb it, the ``norm`` after it); return True when the module now computes exactly
        what ``conv`` (followed by ``norm`` and the host's activation, if absorbed) did.

        The base class cannot: it raises a ``ValueError`` with :attr:`no_conv_init`.
        """
        raise ValueError(f'{type(self).__name__} cannot take its weights from the replaced '
                         f'conv: {self.no_conv_init or "it has no weights of a conv"}')

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}, dilation={self.dilation}, '
                f'groups={self.groups}, bias={self.with_bias}')


#: The constructor arguments that :meth:`ConvReplacement.from_conv` takes from the conv.
CONV_OPTIONS = ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
                'groups', 'bias')
