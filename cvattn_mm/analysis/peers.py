"""Public implementations of the same math as our modules ("peers"), with weight copying.

A :class:`Peer` builds, from one of our modules, the public module that computes the same
function (its hyper-parameters chosen to match), and maps our state dict onto the peer's
(loaded strictly, so every peer weight comes from ours). The tests in
``tests/analysis/test_peers.py`` keep the equivalence true; the benchmark times each pair
side by side.

Peers: timm (``SEModule``, ``EcaModule``, ``CbamModule``, ``GlobalContext``,
``SelectiveKernel`` (for SK and SKConv), ``NonLocalAttn``, ``CoordAttn``, ``GatherExcite``,
``EfficientLocalAttn``), mmcv
(``ContextBlock``, ``NonLocal2d``), mmseg (``PAM``, ``CAM`` of ``da_head``: DualAttention's
branches alone) and lucidrains' ``deformable-attention`` (``DeformableAttention2D``).
mmcv's ``CrissCrossAttention`` is RCCA's (one pass).
Modules without a package peer have a reference instead (:mod:`.references`, a Peer whose
package is torch); :func:`.references.peers_of` lists both.
"""
import contextlib
import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..registry import MODELS

State = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Peer:
    """A public module computing the same function as one of ours.

    Args:
        module (str): Registry name of our module.
        name (str): Package and class of the peer (``'timm SEModule'``).
        package (str): Import name of the package the peer needs.
        build (Callable): ``build(ours) -> peer`` with the matching hyper-parameters:
            widths, kernel sizes, modes and fusions are carried over from ``ours``;
            activations and norms are ours by default (other choices are not mapped).
        state (Callable): ``state(ours) -> dict``: the peer's full state dict made of ours.
        ours_cfg (Callable): ``ours_cfg(in_channels) -> dict``: our hyper-parameters for
            the pair (besides ``in_channels``); empty when our defaults are the peer's math.
        differences (str): Where the two differ, and how the pair compares them.
        incomparable (Callable): ``incomparable(ours, shape) -> reason | None``: why the
            outputs differ at an input shape (N, C, H, W), or None if they are equal.
        equivalence (Callable): A context manager factory inside which the outputs are
            equal (a documented detail of the peer replaced); ``nullcontext`` by default.
    """

    module: str
    name: str
    package: str
    build: Callable[[nn.Module], nn.Module]
    state: Callable[[nn.Module], State]
    ours_cfg: Callable[[int], dict] = lambda in_channels: {}
    differences: str = ''
    incomparable: Callable[[nn.Module, Sequence[int]], Optional[str]] = lambda ours, shape: None
    equivalence: Callable[[], ContextManager] = contextlib.nullcontext

    @property
    def available(self) -> bool:
        """Whether the peer's package is installed."""
        return importlib.util.find_spec(self.package) is not None


def build_pair(peer: Peer, in_channels: int, **cfg) -> Tuple[nn.Module, nn.Module]:
    """Our module (``peer.ours_cfg`` updated by ``cfg``) and the peer holding its weights."""
    cfg = {**peer.ours_cfg(in_channels), **cfg}
    ours = MODELS.build(dict(type=peer.module, in_channels=in_channels, **cfg))
    theirs = peer.build(ours)
    copy_weights(peer, ours, theirs)
    return ours, theirs


def copy_weights(peer: Peer, ours: nn.Module, theirs: nn.Module) -> None:
    """Load our weights into ``theirs`` (strictly: every key of the peer is set)."""
    theirs.load_state_dict(peer.state(ours), strict=True)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every floating parameter and buffer random values, so that no zero-initialised
    layer hides a difference: weights with a fan-in ``f`` get a standard deviation of
    ``1 / sqrt(f)`` (activations keep their scale, so no softmax saturates), vectors 0.5,
    running variances ``0.5 + |N(0, 0.5)|``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            values = torch.randn(t.shape, generator=gen)
            if t.dim() > 1:
                t.copy_(values / (t[0].numel() ** 0.5))
            else:
                t.copy_(values.abs() * 0.5 + 0.5 if name.endswith('running_var')
                        else values * 0.5)
    return module


def _renamed(state: State, renames: Dict[str, str]) -> State:
    """``state`` with key prefixes renamed; every key must match a prefix (longest first)."""
    prefixes = sorted(renames, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        old = next((p for p in prefixes if key.startswith(p)), None)
        if old is None:
            raise KeyError(f'no peer key for {key!r} (renames: {renames})')
        out[renames[old] + key[len(old):]] = value
    return out


def _zeros(like: torch.Tensor, n: int) -> torch.Tensor:
    return like.new_zeros(n)


# --- timm ------------------------------------------------------------------------------


def _timm_se(ours):
    from timm.layers import SEModule
    return SEModule(ours.in_channels, rd_channels=ours.fc1.out_channels)


def _timm_eca(ours):
    from timm.layers import EcaModule
    # channels=None: timm's adaptive rule floors k at 3; ours is already resolved.
    return EcaModule(None, kernel_size=ours.kernel_size)


def _timm_cbam(ours):
    from timm.layers.cbam import CbamModule
    return CbamModule(ours.in_channels, rd_channels=ours.fc1.out_channels,
                      spatial_kernel_size=ours.kernel_size, mlp_bias=True)


def _timm_cbam_state(ours):
    state = _renamed(ours.state_dict(), {'fc1.': 'channel.fc1.', 'fc2.': 'channel.fc2.',
                                         'spatial_conv.': 'spatial.conv.conv.',
                                         'spatial_norm.': 'spatial.conv.bn.'})
    # ours pools [max; mean] (official code), timm [mean; max]: swap the conv's inputs.
    state['spatial.conv.conv.weight'] = state['spatial.conv.conv.weight'].flip(1)
    return state


def _timm_gc(ours):
    from timm.layers import GlobalContext
    hidden = _gc_hidden(ours)
    peer = GlobalContext(ours.in_channels, use_attn=ours.pooling == 'att',
                         fuse_add='add' in ours.fusions, fuse_scale='mul' in ours.fusions,
                         rd_channels=hidden)
    for fusion, mlp in (('add', peer.mlp_add), ('mul', peer.mlp_scale)):
        if mlp is not None:  # timm's LayerNorm2d has eps 1e-6
            mlp.norm.eps = getattr(ours, f'channel_{fusion}_conv')[1].eps
    return peer


def _gc_hidden(ours):
    transform = ours.channel_add_conv or ours.channel_mul_conv
    return transform[0].out_channels


def _timm_gc_state(ours):
    state = _renamed(ours.state_dict(), {'conv_mask.': 'conv_attn.',
                                         'channel_add_conv.0.': 'mlp_add.fc1.',
                                         'channel_add_conv.1.': 'mlp_add.norm.',
                                         'channel_add_conv.3.': 'mlp_add.fc2.',
                                         'channel_mul_conv.0.': 'mlp_scale.fc1.',
                                         'channel_mul_conv.1.': 'mlp_scale.norm.',
                                         'channel_mul_conv.3.': 'mlp_scale.fc2.'})
    for key in [k for k in state if '.norm.' in k]:
        state[key] = state[key].flatten()  # LayerNorm over (C/r, 1, 1) vs over C/r channels
    if ours.conv_mask is not None:  # a softmax cancels timm's score bias: zero
        state['conv_attn.bias'] = _zeros(ours.conv_mask.weight, 1)
    return state


def _timm_sk(ours):
    from timm.layers import SelectiveKernel
    sizes = [2 * d + 1 for d in range(1, ours.num_branches + 1)]  # 3x3 with dilation d
    return SelectiveKernel(ours.in_channels, kernel_size=sizes, groups=ours.groups,
                           rd_channels=ours.hidden, keep_3x3=True, split_input=False)


def _timm_sk_state(ours):
    renames = {'fc_reduce.': 'attn.fc_reduce.', 'fc_norm.': 'attn.bn.',
               'fc_select.': 'attn.fc_select.'}
    for i in range(ours.num_branches):
        renames[f'branches.{i}.0.'] = f'paths.{i}.conv.'
        renames[f'branches.{i}.1.'] = f'paths.{i}.bn.'
    return _renamed(ours.state_dict(), renames)


def _timm_sk_conv(ours):
    from timm.layers import SelectiveKernel
    if ours.with_bias or not isinstance(ours.branches[0].norm, nn.BatchNorm2d):
        raise ValueError("timm's SelectiveKernel has bias-free branch convs and BNs: the pair "
                         'needs bias=False and a BN norm_cfg')
    sizes = [2 * i + 1 for i in range(1, ours.num_branches + 1)]  # 3x3 with dilation i * d
    return SelectiveKernel(ours.in_channels, ours.out_channels, kernel_size=sizes,
                           stride=ours.stride, dilation=ours.dilation,
                           groups=ours.branch_groups, rd_channels=ours.hidden, keep_3x3=True,
                           split_input=False)


def _timm_sk_conv_state(ours):
    renames = {'fc_reduce.': 'attn.fc_reduce.', 'fc_norm.': 'attn.bn.',
               'fc_select.': 'attn.fc_select.'}
    for i in range(ours.num_branches):
        renames[f'branches.{i}.conv.'] = f'paths.{i}.conv.'
        renames[f'branches.{i}.norm.'] = f'paths.{i}.bn.'
    return _renamed(ours.state_dict(), renames)


def _timm_non_local(ours):
    from timm.layers import NonLocalAttn
    if (ours.mode != 'embedded_gaussian' or ours.sub_sample or ours.norm is None
            or ours.use_scale):
        raise ValueError("timm's NonLocalAttn only has the embedded-Gaussian mode with a BN, no "
                         'sub-sampling and a scale of 1/sqrt(C) or none (the pair: use_scale='
                         f'False), got mode={ours.mode!r}, sub_sample={ours.sub_sample}, '
                         f'use_scale={ours.use_scale}')
    return NonLocalAttn(ours.in_channels, use_scale=False, rd_channels=ours.inter_channels)


def _timm_non_local_state(ours):
    d = ours.inter_channels
    w, b = ours.theta_phi_g.weight, ours.theta_phi_g.bias
    state = {'z.weight': ours.conv_out.weight, 'z.bias': _zeros(w, ours.in_channels)}
    for i, name in enumerate('tpg'):
        state[f'{name}.weight'] = w[i * d:(i + 1) * d]
        state[f'{name}.bias'] = b[i * d:(i + 1) * d]
    state.update({f'norm.{k}': v for k, v in ours.norm.state_dict().items()})
    return state


def _timm_coord(ours):
    from timm.layers.coord_attn import CoordAttn
    return CoordAttn(ours.in_channels, rd_channels=ours.mip, bias=True,
                     act_layer=nn.Hardswish, norm_layer=nn.BatchNorm2d)


def _timm_gather_excite(ours):
    from timm.layers.gather_excite import GatherExcite
    if ours.variant != 'theta_minus' or ours.extent % 2:
        raise ValueError("timm's GatherExcite pairs with GE-theta-minus, global or with an even "
                         "extent (its parametric gathers and its excite MLP fail to build, and "
                         f"it asserts an even extent), got variant={ours.variant!r}, "
                         f'extent={ours.extent}')
    return GatherExcite(ours.in_channels, extent=ours.extent, use_mlp=False)


def _timm_ela(ours):
    from timm.layers.coord_attn import EfficientLocalAttn
    if ours.group_width != 1 or not isinstance(ours.gn, nn.GroupNorm):
        raise ValueError("timm's EfficientLocalAttn has depthwise convolutions and is paired "
                         'with a GroupNorm: the pair needs group_width=1 and a GN norm_cfg, '
                         f'got group_width={ours.group_width}, {type(ours.gn).__name__}')
    norm = functools.partial(nn.GroupNorm, ours.gn.num_groups, eps=ours.gn.eps)
    return EfficientLocalAttn(ours.in_channels, kernel_size=ours.kernel_size,
                              act_layer=type(ours.act), gate_layer=type(ours.gate),
                              norm_layer=norm)


def _timm_ela_state(ours):
    w = ours.conv.weight  # (C, 1, k): one shared conv and norm, copied into both branches
    state = {'conv_h.weight': w[:, :, :, None], 'conv_w.weight': w[:, :, None, :]}
    for axis in 'hw':
        state.update({f'norm_{axis}.{k}': v for k, v in ours.gn.state_dict().items()})
    return state


# --- mmcv ------------------------------------------------------------------------------


def _mmcv_gc(ours):
    from mmcv.cnn import ContextBlock
    hidden = _gc_hidden(ours)
    # ContextBlock takes a float ratio and floors C * ratio: aim at the middle of the bin.
    peer = ContextBlock(ours.in_channels, (hidden + 0.5) / ours.in_channels, ours.pooling,
                        tuple(f'channel_{f}' for f in ours.fusions))
    assert peer.planes == hidden, (peer.planes, hidden)
    return peer


def _mmcv_gc_state(ours):
    state = dict(ours.state_dict())
    if ours.conv_mask is not None:  # a softmax cancels mmcv's score bias: zero
        state['conv_mask.bias'] = _zeros(ours.conv_mask.weight, 1)
    return state


def _mmcv_non_local(ours):
    from mmcv.cnn import NonLocal2d
    norm = ours.norm
    norm_cfg = None if norm is None else dict(type='BN', eps=norm.eps, momentum=norm.momentum)
    if ours.sub_sample and ours.sub_sample_at != 'embedding':
        raise ValueError("mmcv's NonLocal2d sub-samples phi(x) and g(x): the pair needs "
                         f"sub_sample_at='embedding', got {ours.sub_sample_at!r}")
    peer = NonLocal2d(ours.in_channels, sub_sample=ours.sub_sample, reduction=ours.reduction,
                      use_scale=ours.use_scale, norm_cfg=norm_cfg, mode=ours.mode)
    assert peer.inter_channels == ours.inter_channels, (peer.inter_channels,
                                                       ours.inter_channels)
    return peer


def _mmcv_non_local_state(ours):
    d = ours.inter_channels
    w, b = ours.theta_phi_g.weight, ours.theta_phi_g.bias
    pooled = '0.' if ours.sub_sample else ''  # sub-sampled g, phi: Sequential(conv, pool)
    names = ['g'] if ours.mode == 'gaussian' else ['theta', 'phi', 'g']
    state = {}
    for i, name in enumerate(names):
        prefix = f'{name}.{pooled if name != "theta" else ""}conv.'
        state[prefix + 'weight'] = w[i * d:(i + 1) * d]
        state[prefix + 'bias'] = b[i * d:(i + 1) * d]
    state.update({f'conv_out.conv.{k}': v for k, v in ours.conv_out.state_dict().items()})
    if ours.norm is not None:  # ConvModule names a BN 'bn'
        state.update({f'conv_out.bn.{k}': v for k, v in ours.norm.state_dict().items()})
    if ours.mode == 'concatenation':
        state['concat_project.conv.weight'] = ours.concat_project.weight
    return state


def _mmcv_non_local_incomparable(ours, shape):
    h, w = shape[2:]
    if ours.sub_sample and (h % 2 or w % 2):
        return (f'sub-sampling pools an odd map ({h}x{w}) differently: mmcv floors (drops the '
                'last row/column), ours ceils')
    return None


def _mmcv_cca(ours):
    from mmcv.ops import CrissCrossAttention
    if ours.recurrence != 1:
        raise ValueError("mmcv's CrissCrossAttention is one criss-cross pass: the pair needs "
                         f'recurrence=1, got {ours.recurrence}')
    if ours.inter_channels != ours.in_channels // 8:
        raise ValueError("mmcv's CrissCrossAttention has query/key width C // 8 = "
                         f'{ours.in_channels // 8}, got {ours.inter_channels}')
    return CrissCrossAttention(ours.in_channels)


def _mmcv_cca_state(ours):
    state = dict(ours.state_dict())
    state['gamma.scale'] = state.pop('gamma').reshape(())
    return state


# --- mmseg ------------------------------------------------------------------------------


def _mmseg_pam(ours):
    from mmseg.models.decode_heads.da_head import PAM
    if ours.branches != ('pam', ):
        raise ValueError("mmseg's PAM is the position branch alone: the pair needs "
                         f"branches=('pam',), got {ours.branches}")
    return PAM(ours.in_channels, ours.inter_channels)


def _mmseg_pam_state(ours):
    state = _renamed(ours.state_dict(), {'query_conv.': 'query_project.',
                                         'key_conv.': 'key_project.',
                                         'value_conv.': 'value_project.',
                                         'pam_gamma': 'gamma.scale'})
    state['gamma.scale'] = state['gamma.scale'].reshape(())
    return state


def _mmseg_cam(ours):
    from mmseg.models.decode_heads.da_head import CAM
    if ours.branches != ('cam', ):
        raise ValueError("mmseg's CAM is the channel branch alone: the pair needs "
                         f"branches=('cam',), got {ours.branches}")
    return CAM()


# --- mmseg: EMANet ---------------------------------------------------------------------


class MmsegEMAUnit(nn.Module):
    """The unit inside mmseg's ``EMAHead`` (``ema_mid_conv``, ``EMAModule``, ReLU,
    ``ema_out_conv``, ``ReLU(identity + .)``), as its ``forward`` runs it after ``ema_in_conv``;
    ``ema_mid_conv`` frozen as in ``EMAHead``. mmseg has no stand-alone module for it."""

    def __init__(self, channels: int, num_bases: int, num_stages: int, momentum: float,
                 norm_cfg: Optional[dict]):
        super().__init__()
        from mmcv.cnn import ConvModule
        from mmseg.models.decode_heads.ema_head import EMAModule
        self.ema_mid_conv = ConvModule(channels, channels, 1, norm_cfg=None, act_cfg=None)
        for param in self.ema_mid_conv.parameters():
            param.requires_grad = False
        self.ema_module = EMAModule(channels, num_bases, num_stages, momentum)
        self.ema_out_conv = ConvModule(channels, channels, 1, norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recon = self.ema_module(self.ema_mid_conv(x)).relu()
        return torch.relu(x + self.ema_out_conv(recon))


def _mmseg_emau(ours):
    if ours.norm is not None and not isinstance(ours.norm, nn.BatchNorm2d):
        raise ValueError("mmseg's EMAHead unit is paired with a BN or no norm, got "
                         f'{type(ours.norm).__name__}')
    norm_cfg = None if ours.norm is None else dict(type='BN', eps=ours.norm.eps,
                                                   momentum=ours.norm.momentum)
    return MmsegEMAUnit(ours.in_channels, ours.num_bases, ours.num_stages, ours.momentum,
                        norm_cfg)


def _mmseg_emau_state(ours):
    state = _renamed(ours.state_dict(), {'conv1.': 'ema_mid_conv.conv.',
                                         'conv2.': 'ema_out_conv.conv.',
                                         'norm.': 'ema_out_conv.bn.',
                                         'bases': 'ema_module.bases'})
    return state


# --- mmpretrain: VAN ------------------------------------------------------------------


def _mmpretrain_lka(ours):
    from mmpretrain.models.backbones.van import LKA
    if ours.with_projection:
        raise ValueError("mmpretrain's LKA is the attention alone (no VAN Attention wrapper): "
                         'the pair needs with_projection=False')
    return LKA(ours.in_channels)


def _mmpretrain_lka_state(ours):
    return _renamed(ours.state_dict(), {'conv0.': 'DW_conv.', 'conv_spatial.': 'DW_D_conv.',
                                        'conv1.': 'conv1.'})


# --- deformable-attention (lucidrains) -------------------------------------------------


def _dat(ours):
    from deformable_attention import DeformableAttention2D
    return DeformableAttention2D(
        dim=ours.in_channels, dim_head=ours.dim_head, heads=ours.heads,
        dropout=ours.dropout, downsample_factor=ours.downsample_factor,
        offset_scale=ours.offset_scale, offset_groups=ours.offset_groups,
        offset_kernel_size=ours.offset_kernel_size,
        group_queries=ours.to_q.groups > 1, group_key_values=ours.to_k.groups > 1)


def _dat_state(ours):
    cpb = [m for m in ours.rel_pos_bias if isinstance(m, nn.Linear)]
    renames = {'to_q.': 'to_q.', 'to_k.': 'to_k.', 'to_v.': 'to_v.', 'to_out.': 'to_out.',
               'to_offsets.0.': 'to_offsets.0.', 'to_offsets.2.': 'to_offsets.2.'}
    for i in range(len(cpb) - 1):
        renames[f'rel_pos_bias.{2 * i}.'] = f'rel_pos_bias.mlp.{i}.0.'
    renames[f'rel_pos_bias.{2 * len(cpb) - 2}.'] = f'rel_pos_bias.mlp.{len(cpb) - 1}.'
    state = _renamed(ours.state_dict(), renames)
    # One bias per head on every logit of that head: the softmax cancels it. Zero.
    state[f'rel_pos_bias.mlp.{len(cpb) - 1}.bias'] = _zeros(cpb[-1].weight,
                                                                 cpb[-1].out_features)
    return state


def cell_centre_grid(grid: torch.Tensor, dim: int = 1, out_dim: int = -1) -> torch.Tensor:
    """Drop-in for lucidrains' ``normalize_grid``: grid indices ``(x, y)`` to cell centres,
    ``(2 i + 1) / n - 1`` (``grid_sample``'s ``align_corners=False`` coordinates), x by the
    width and y by the height: the geometry of our ``DeformableAttention2D``."""
    h, w = grid.shape[-2:]
    x, y = grid.unbind(dim=dim)
    return torch.stack(((2.0 * x + 1) / w - 1.0, (2.0 * y + 1) / h - 1.0), dim=out_dim)


def dat_cell_centre_geometry() -> ContextManager:
    """Within this context lucidrains' ``DeformableAttention2D`` uses :func:`cell_centre_grid`
    for its reference grid, query grid and offsets (see ``PEERS``' note on the pair)."""
    from unittest import mock
    module = importlib.import_module('deformable_attention.deformable_attention_2d')
    return mock.patch.object(module, 'normalize_grid', cell_centre_grid)


PEERS: List[Peer] = [
    Peer('SE', 'timm SEModule', 'timm', _timm_se, lambda ours: ours.state_dict(),
         differences="timm rounds the hidden width to a multiple of 8 (rd_divisor); the pair "
         'passes ours as rd_channels.'),
    Peer('ECA', 'timm EcaModule', 'timm', _timm_eca, lambda ours: ours.state_dict(),
         differences='timm floors the adaptive kernel size at 3 (ours: 1 for C < 8); the pair '
         'passes our kernel size.'),
    Peer('CBAM', 'timm CbamModule', 'timm', _timm_cbam, _timm_cbam_state,
         differences='timm pools [mean; max] for the spatial gate, ours [max; mean] (official '
         'code): the copy swaps the two input channels of the spatial conv. timm runs the '
         'channel MLP twice (avg and max), ours once on one batch of 2N vectors. timm has no '
         'MLP bias by default: the pair sets mlp_bias=True.'),
    Peer('GC', 'timm GlobalContext', 'timm', _timm_gc, _timm_gc_state,
         differences="timm's defaults are a 'mul' fusion with C/8; the pair takes ours "
         "('add', C/16). timm's LayerNorm2d has eps 1e-6 (set to ours) and normalises the "
         'C/r channels of the 1x1 map (the same as our LayerNorm over (C/r, 1, 1)); its score '
         'conv has a bias, which the softmax cancels (set to zero).'),
    Peer('GC', 'mmcv ContextBlock', 'mmcv', _mmcv_gc, _mmcv_gc_state,
         differences="mmcv's score conv has a bias, which the softmax cancels (set to zero); "
         'otherwise the same names and shapes.'),
    Peer('SK', 'timm SelectiveKernel', 'timm', _timm_sk, _timm_sk_state,
         differences='timm splits the input channels across the branches by default; the pair '
         'sets split_input=False (each branch sees all channels, as in the paper).'),
    Peer('SKConv', 'timm SelectiveKernel (conv)', 'timm', _timm_sk_conv, _timm_sk_conv_state,
         ours_cfg=lambda in_channels: dict(groups=32),
         differences="timm's defaults split the input channels across the branches, use dense "
         'branches and a fuse width make_divisible(C / 16, 8) without the floor 32; the pair '
         'sets split_input=False, groups=G (32, the replaced conv of ResNeXt-50 32x4d) and '
         'rd_channels=max(C // 16, 32), and takes stride, dilation and out_channels from ours.'),
    Peer('NonLocalBlock', 'timm NonLocalAttn', 'timm', _timm_non_local, _timm_non_local_state,
         ours_cfg=lambda in_channels: dict(use_scale=False),
         differences='timm scales the logits by 1/sqrt(C) where ours (and the official code) '
         'scale by 1/sqrt(d): the pair sets use_scale=False on both; timm only has the '
         'embedded-Gaussian mode without sub-sampling; its W_z conv has a bias before the BN '
         '(set to zero).'),
    Peer('NonLocalBlock', 'mmcv NonLocal2d', 'mmcv', _mmcv_non_local, _mmcv_non_local_state,
         ours_cfg=lambda in_channels: dict(sub_sample_at='embedding'),
         differences="mmcv sub-samples phi(x) and g(x) (the pair sets sub_sample_at='embedding'; "
         'the official code pools x first, our default); its sub-sampling floors odd maps '
         'where ours ceils.',
         incomparable=_mmcv_non_local_incomparable),
    Peer('RCCA', 'mmcv CrissCrossAttention', 'mmcv', _mmcv_cca, _mmcv_cca_state,
         ours_cfg=lambda in_channels: dict(recurrence=1),
         differences="mmcv's CrissCrossAttention is one pass (the pair sets recurrence=1; our "
         'default R = 2 applies the pass twice with the same weights); same math as the '
         "official CCNet pass (einsum, a -inf diagonal added to the column's logits; ours a "
         'masked fill, the logits and softmax in at least float32); gamma a scalar Scale '
         '(ours a 1-element parameter, as the official code).'),
    Peer('CoordAttention', 'timm CoordAttn', 'timm', _timm_coord, lambda ours: ours.state_dict(),
         differences="timm's defaults have no conv bias and width C/16 * 2/3 rounded to 8; the "
         'pair sets bias=True and our width (max(C // 32, 8)).'),
    Peer('GatherExcite', 'timm GatherExcite', 'timm', _timm_gather_excite, lambda ours: {},
         differences='The parameter-free GE-theta-minus (our default), global or with an even '
         "extent: the same math (nearest interpolation, padding not counted); timm's default "
         'excite MLP (use_mlp=True) and its parametric gathers (extra_params=True) raise a '
         'TypeError at construction in timm 1.0.31 (device and dtype passed as *dd for **dd), '
         'so the pair sets use_mlp=False; timm\'s theta-plus lacks the official ReLU after '
         "the gather's BN."),
    Peer('ELA', 'timm EfficientLocalAttn', 'timm', _timm_ela, _timm_ela_state,
         differences='timm has separate H and W convolutions and norms where the paper (and '
         'ours) share one of each: the copy puts our conv and GroupNorm into both branches. '
         "timm's defaults are a GroupNorm of one group and a SiLU before the sigmoid; the pair "
         "takes ours (GroupNorm of 16 groups, no activation). timm's convs are depthwise "
         '(the pair needs group_width=1: no S or L variant).'),
    Peer('DualAttention', 'mmseg PAM', 'mmseg', _mmseg_pam, _mmseg_pam_state,
         ours_cfg=lambda in_channels: dict(branches=('pam', )),
         differences="mmseg's PAM is the position branch alone (the pair sets "
         "branches=('pam',)); same math as the official PAM_Module: biased 1x1 convs, no "
         'scale, gamma a scalar Scale (ours a 1-element parameter).'),
    Peer('DualAttention', 'mmseg CAM', 'mmseg', _mmseg_cam,
         lambda ours: {'gamma.scale': ours.cam_gamma.reshape(())},
         ours_cfg=lambda in_channels: dict(branches=('cam', )),
         differences="mmseg's CAM is the channel branch alone (the pair sets "
         "branches=('cam',)); it computes softmax(rowmax(E) - E) and runs in the input's "
         'dtype, ours softmax(-E) (the same function) in at least float32.'),
    Peer('DeformableAttention2D', 'deformable-attention DeformableAttention2D',
         'deformable_attention', _dat, _dat_state,
         ours_cfg=lambda c: dict(to_q_bias=False, to_v_bias=False, cpb_dim=c // 4, cpb_depth=2,
                                 key_grid='floor'),
         differences='The pair builds ours like the peer: no q/v biases, a position-bias MLP '
         'of depth 2 and width C/4 (its last bias, which the softmax cancels, set to zero), '
         "key_grid='floor' (the peer's floor(H/r) keys per axis; ours defaults to ceil). "
         'Geometry differs: lucidrains normalises grid indices i to 2i/(n-1) - 1 (corners) '
         'while sampling with align_corners=False, divides x by H_k - 1 and y by W_k - 1 '
         '(swapped on non-square maps) and so scales offsets by 2/(n-1); ours uses cell '
         'centres (2i + 1)/n - 1 for keys and queries. Equal outputs are tested with its '
         'normalize_grid replaced by the cell-centre one (dat_cell_centre_geometry); the '
         'benchmark times the unmodified peer.',
         equivalence=dat_cell_centre_geometry),
    Peer('EMAU', 'mmseg EMAModule', 'mmseg', _mmseg_emau, _mmseg_emau_state,
         ours_cfg=lambda in_channels: dict(eps=1e-12, eps_mode='clamp', renormalize_bases=True,
                                           em_grad='none'),
         differences="mmseg's EMAModule is the EM core only; the pair wraps it with the "
         "layers of mmseg's EMAHead around it (ema_mid_conv frozen, ema_out_conv with BN). "
         'mmseg divides by max(norm, 1e-12) where ours (and the official code) add 1e-6, and '
         'l2-normalises the batch mean of the bases before the moving average: the pair sets '
         "eps=1e-12, eps_mode='clamp', renormalize_bases=True, and em_grad='none' (no gradient "
         'through the EM steps, as mmseg and the official code).'),
    Peer('LKA', 'mmpretrain LKA', 'mmpretrain', _mmpretrain_lka, _mmpretrain_lka_state,
         differences="None: mmpretrain's LKA (DW_conv 5x5, DW_D_conv 7x7 dilation 3, conv1 "
         "1x1, u * attn) is the official one with renamed keys; the pair needs "
         'with_projection=False (the wrapper is not in the peer).'),
]
