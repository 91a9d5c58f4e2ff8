"""Where inserted attention lives: one :class:`AttentionSite` per host module."""
from typing import Optional, Tuple

import torch
import torch.nn as nn

#: Attribute of the model that holds its sites (an ``nn.ModuleDict``).
SITES = 'attention_sites'

#: Suffix of a place on the input of a module (``'layer1.0.conv3:input'``).
INPUT_SUFFIX = ':input'

#: Separator of an 'around' place (``'layer1.1~layer1.2'``): the site wraps the modules from
#: the first path's input to the second path's output (one module when both are equal). Its
#: modules are called as ``attention(output, wrapped_input)``: they replace the output of
#: the second module and also read the input of the first.
AROUND_SEP = '~'


def host_of(path: str) -> str:
    """The module whose output (or input, for ``':input'``) a site at ``path`` changes."""
    return path.split(AROUND_SEP)[-1].removesuffix(INPUT_SUFFIX)

LAYOUTS = {
    'nchw': '(N, C, H, W) feature map',
    'nhwc': '(N, H, W, C) channels-last map (e.g. the Linear layers of ConvNeXt blocks)',
    'tokens': "(N, H*W, C) tokens with the block's hw_shape (Swin, PVT, ...)",
}


class IdentityBlend(nn.Module):
    """``x + gain * (attention(x) - x)`` with a learnable scalar ``gain`` starting at 0.

    At initialisation the output is exactly ``x``, so a pretrained host computes what it
    computed without attention; the gain learns how much attention to mix in.
    """

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return x + self.gain * (self.attention(x, *args) - x)


class AttentionSite(nn.Module):
    """The attention modules applied, in order, to the output of one host module.

    The site converts the host's layout to NCHW and back; for token layouts the (H, W) of
    the current call is recorded by a pre-hook on the enclosing block (``hw_shape``).
    ``split_pair`` is ``(conv path, norm path)`` when the site lies between a conv and the
    BatchNorm that mmcv's ``fuse_conv_bn`` would fold into it (see ``fusion.py``), else None.

    An 'around' site (path ``'<first>~<last>'``, see :data:`AROUND_SEP`) records the input
    of ``<first>`` and passes it to its modules with the output of ``<last>`` (NCHW only).

    Args:
        path (str): Path of the host module in the model (``'layer1.0.bn3'``), with the
            suffix ``':input'`` for a site on the host's input instead of its output, or
            ``'<first>~<last>'`` for an 'around' site.
        layout (str): A key of :data:`LAYOUTS`.
        channels (int): Channels of the host's output.
    """

    def __init__(self, path: str, layout: str, channels: int):
        super().__init__()
        self.path = path
        self.layout = layout
        self.channels = channels
        self.attentions = nn.ModuleDict()
        self.hw_shape: Optional[Tuple[int, int]] = None
        self.split_pair: Optional[Tuple[str, str]] = None

    @property
    def host_path(self) -> str:
        return host_of(self.path)

    @property
    def on_input(self) -> bool:
        return self.path.endswith(INPUT_SUFFIX)

    @property
    def wraps_from(self) -> Optional[str]:
        """For an 'around' site, the module whose input the site reads; else None."""
        return self.path.split(AROUND_SEP)[0] if AROUND_SEP in self.path else None

    def forward(self, x: torch.Tensor, *wrapped_input: torch.Tensor) -> torch.Tensor:
        if self.layout == 'nchw':
            return self._attend(x, *wrapped_input)
        if self.layout == 'nhwc':
            return self._attend(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        n, length, c = x.shape
        h, w = self.hw_shape
        if h * w != length:
            raise ValueError(f'AttentionSite {self.path}: {length} tokens do not match the '
                             f'recorded hw_shape {self.hw_shape}')
        y = self._attend(x.transpose(1, 2).reshape(n, c, h, w))
        return y.flatten(2).transpose(1, 2)

    def _attend(self, x: torch.Tensor, *wrapped_input: torch.Tensor) -> torch.Tensor:
        for attention in self.attentions.values():
            x = attention(x, *wrapped_input)
        return x

    def extra_repr(self) -> str:
        return f'path={self.path!r}, layout={self.layout!r}, channels={self.channels}'


class ApplySite:
    """Forward hook of a host module: passes its output through the site."""

    def __init__(self, site: AttentionSite):
        self.site = site

    def __call__(self, module, args, output):
        return self.site(output)


class ApplySiteToInput:
    """Forward pre-hook of a host module: passes its first input through the site."""

    def __init__(self, site: AttentionSite):
        self.site = site

    def __call__(self, module, args):
        return (self.site(args[0]), *args[1:])


class RecordWrappedInput:
    """Forward pre-hook of the first module of an 'around' site: keeps its first input until
    the site runs."""

    def __init__(self, site: AttentionSite):
        self.site = site

    def __call__(self, module, args):
        self.site.__dict__['_wrapped_input'] = args[0]


class ApplyAroundSite:
    """Forward hook of the last module of an 'around' site: passes its output and the
    recorded input of the first module through the site (and drops the recorded input)."""

    def __init__(self, site: AttentionSite):
        self.site = site

    def __call__(self, module, args, output):
        wrapped_input = self.site.__dict__.pop('_wrapped_input', None)
        if wrapped_input is None:
            raise RuntimeError(f'attention site {self.site.path!r}: '
                               f'{self.site.wraps_from!r} did not run before '
                               f'{self.site.host_path!r}, so its input is unknown')
        return self.site(output, wrapped_input)


class RecordHWShape:
    """Forward pre-hook of a token block: records the ``hw_shape`` argument of the call."""

    def __init__(self, site: AttentionSite, position: int):
        self.site = site
        self.position = position

    def __call__(self, module, args, kwargs):
        hw_shape = kwargs['hw_shape'] if 'hw_shape' in kwargs else args[self.position]
        self.site.hw_shape = (int(hw_shape[0]), int(hw_shape[1]))
