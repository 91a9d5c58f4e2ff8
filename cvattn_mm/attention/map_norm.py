"""Norms of (N, C, H, W) maps built from an mmcv ``norm_cfg``, LayerNorm over the channels."""
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

#: ``norm_cfg`` types that mean a LayerNorm (mmcv registers ``nn.LayerNorm`` as 'LN').
LAYER_NORM_TYPES = ('LN', 'LayerNorm', nn.LayerNorm)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an (N, C, H, W) map, at every position.

    mmcv's ``dict(type='LN')`` builds ``nn.LayerNorm(C)``, which normalises the last axis:
    on an NCHW map that is the width (an error unless W = C, and the wrong axis then). This
    layer moves the channels last and calls its ``nn.LayerNorm``, which so sees its standard
    (..., C) input (a tool that replaces or wraps it computes the right thing), as DAT's
    ``LayerNormProxy`` does; the state-dict keys are ``norm.weight`` and ``norm.bias``.

    Args:
        channels (int): Channels C.
        **kwargs: ``nn.LayerNorm``'s other arguments (``eps``, ``elementwise_affine``,
            ``bias``).

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(channels, **kwargs)

    @property
    def weight(self):
        """The affine weight (as on mmcv's other norms, for initialisations)."""
        return self.norm.weight

    @property
    def bias(self):
        """The affine bias."""
        return self.norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def build_map_norm(norm_cfg: dict, channels: int) -> nn.Module:
    """A norm of (N, ``channels``, H, W) maps from an mmcv ``norm_cfg``.

    A LayerNorm type (:data:`LAYER_NORM_TYPES`) gives a :class:`ChannelLayerNorm`, with the
    config's other keys as its arguments (``requires_grad`` as in mmcv); every other type
    is built by mmcv's ``build_norm_layer`` (BN, GN, IN normalise the channels of a map).
    """
    cfg = dict(norm_cfg)
    if cfg.pop('type', None) not in LAYER_NORM_TYPES:
        return build_norm_layer(norm_cfg, channels)[1]
    requires_grad = cfg.pop('requires_grad', True)
    norm = ChannelLayerNorm(channels, **cfg)
    for p in norm.parameters():
        p.requires_grad_(requires_grad)
    return norm
