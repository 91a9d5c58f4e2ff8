"""References: the paper's equations in plain autograd ops, for modules without a package peer.

A reference is a :class:`~cvattn_mm.analysis.peers.Peer` whose package is torch: a small
``nn.Module`` written for the benchmark from the paper's equations, its ops laid out as the
official code computes them (the file is named in each class's docstring; no code is taken
from it), and a ``state`` function that maps our module's state dict onto it, so that the two
compute the same function (``tests/analysis/test_references.py``). The benchmark times each
module side by side with its reference, so that every module has a ratio.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.spatial.lska import LSKA_KERNELS
from .peers import PEERS, Peer, State


def reference(module: str, official: str, build, state, **options) -> Peer:
    """A reference: a :class:`Peer` named ``'reference <official>'`` whose package is torch.

    Args:
        module (str): Registry name of our module.
        official (str): The official repository and file the reference follows.
        build, state: As :class:`Peer`'s.
        options: The other fields of :class:`Peer` (``ours_cfg``, ``differences``, ...).
    """
    return Peer(module, f'reference {official}', 'torch', build, state, **options)


def _require(condition: bool, ours: nn.Module, what: str) -> None:
    if not condition:
        raise ValueError(f'the reference of {type(ours).__name__} follows the official code: '
                         f'it needs {what}')


def _batch_norm(cls, norm: nn.Module, channels: int) -> nn.Module:
    """A ``cls`` batch norm with the eps and momentum of our ``norm``."""
    return cls(channels, eps=norm.eps, momentum=norm.momentum)


def _is_bn(norm: nn.Module) -> bool:
    return type(norm) is nn.BatchNorm2d


def _prefixed(state: State, old: str, new: str) -> State:
    """The entries of ``state`` under ``old`` renamed to ``new``."""
    return {new + k[len(old):]: v for k, v in state.items() if k.startswith(old)}


def _flat(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (out, in, 1, 1) as a linear weight (out, in)."""
    return weight.flatten(1)


# --- BAM -------------------------------------------------------------------------------


class BAMReference(nn.Module):
    """BAM as in the official ``Jongchan/attention-module``, ``MODELS/bam.py``.

    Channel gate: the pooled vector through Linear (biased) -> BatchNorm1d -> ReLU -> Linear,
    expanded to the input's size; spatial gate: 1x1 conv -> BN -> ReLU, ``n`` dilated 3x3
    convs -> BN -> ReLU, a final 1x1 conv to one channel, expanded likewise;
    ``y = (1 + sigmoid(channel * spatial)) * x``.

    Args:
        channels (int): C.
        hidden (int): The bottleneck width C/r.
        num_dilated (int): Dilated 3x3 convs.
        dilation (int): Their dilation and padding.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, hidden: int, num_dilated: int, dilation: int,
                 norm: nn.Module):
        super().__init__()
        self.channel_gate = nn.Sequential(
            nn.Linear(channels, hidden), _batch_norm(nn.BatchNorm1d, norm, hidden), nn.ReLU(),
            nn.Linear(hidden, channels))
        layers = [nn.Conv2d(channels, hidden, 1), _batch_norm(nn.BatchNorm2d, norm, hidden),
                  nn.ReLU()]
        for _ in range(num_dilated):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                       _batch_norm(nn.BatchNorm2d, norm, hidden), nn.ReLU()]
        self.spatial_gate = nn.Sequential(*layers, nn.Conv2d(hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official pools with an H x H window (square maps); a full (H, W) window here.
        pooled = F.avg_pool2d(x, x.shape[2:]).flatten(1)
        channel = self.channel_gate(pooled)[:, :, None, None].expand_as(x)
        spatial = self.spatial_gate(x).expand_as(x)
        return (1 + torch.sigmoid(channel * spatial)) * x


def _bam(ours):
    _require(ours.fusion == 'mul', ours, "fusion='mul'")
    _require(_is_bn(ours.channel_norm) and type(ours.channel_act) is nn.ReLU, ours,
             'BN and ReLU')
    hidden = ours.state_dict()['channel_fc1.weight'].shape[0]
    return BAMReference(ours.in_channels, hidden, ours.num_dilated, ours.dilation,
                        ours.channel_norm)


def _bam_state(ours):
    ours_state = ours.state_dict()
    hidden = ours_state['channel_fc1.weight'].shape[0]
    state = {'channel_gate.0.weight': _flat(ours_state['channel_fc1.weight']),
             'channel_gate.0.bias': ours_state['channel_fc1.weight'].new_zeros(hidden),
             'channel_gate.3.weight': _flat(ours_state['channel_fc2.weight']),
             'channel_gate.3.bias': ours_state['channel_fc2.bias']}
    state.update(_prefixed(ours_state, 'channel_norm.', 'channel_gate.1.'))
    for i in range(ours.num_dilated + 1):  # conv, BN, ReLU per layer; no bias in ours
        weight = ours_state[f'spatial_convs.{i}.weight']
        state[f'spatial_gate.{3 * i}.weight'] = weight
        state[f'spatial_gate.{3 * i}.bias'] = weight.new_zeros(hidden)
        state.update(_prefixed(ours_state, f'spatial_norms.{i}.', f'spatial_gate.{3 * i + 1}.'))
    last = 3 * (ours.num_dilated + 1)
    state.update(_prefixed(ours_state, 'spatial_out.', f'spatial_gate.{last}.'))
    return state


# --- SCSE ------------------------------------------------------------------------------


class SCSEReference(nn.Module):
    """scSE as in the official ``ai-med/squeeze_and_excitation``,
    ``squeeze_and_excitation/squeeze_and_excitation.py`` (``ChannelSpatialSELayer``).

    cSE: the mean over positions through Linear -> ReLU -> Linear -> sigmoid, times x; sSE: a
    biased 1x1 conv C -> 1, sigmoid, times x; ``y = max(cSE, sSE)``.

    Args:
        channels (int): C.
        hidden (int): The cSE bottleneck width C/r.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial_conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        squeezed = x.reshape(n, c, -1).mean(2)
        channel = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed)))).view(n, c, 1, 1)
        spatial = x * torch.sigmoid(self.spatial_conv(x))
        return torch.max(channel, spatial)


def _scse(ours):
    _require(ours.combination == 'max' and type(ours.act) is nn.ReLU, ours,
             "combination='max' and ReLU")
    return SCSEReference(ours.in_channels, ours.state_dict()['fc1.weight'].shape[0])


def _scse_state(ours):
    state = ours.state_dict()
    return {'fc1.weight': _flat(state['fc1.weight']), 'fc1.bias': state['fc1.bias'],
            'fc2.weight': _flat(state['fc2.weight']), 'fc2.bias': state['fc2.bias'],
            'spatial_conv.weight': state['spatial_conv.weight'],
            'spatial_conv.bias': state['spatial_conv.bias']}


# --- SimAM -----------------------------------------------------------------------------


class SimAMReference(nn.Module):
    """SimAM as in the official ``ZjjConan/SimAM``,
    ``mmdetection/mmdet/models/backbones/attentions/simam_module.py``.

    With ``n = H W - 1`` and ``d = (x - mean)^2`` per channel,
    ``y = x * sigmoid(d / (4 (sum(d) / n + lambda)) + 0.5)``.

    Args:
        e_lambda (float): The regulariser lambda.
    """

    def __init__(self, e_lambda: float):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        energy = d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * torch.sigmoid(energy)


def _one_position(ours, shape):
    if shape[2] * shape[3] == 1:
        return 'a 1x1 map: the official code divides 0 by H W - 1 = 0 (NaN)'
    return None


# --- TripletAttention ------------------------------------------------------------------


class _ZPoolGate(nn.Module):
    """One branch of the official Triplet Attention: ``x * sigmoid(BN(conv([max; mean])))``
    with the pools over dim 1 of ``x``."""

    def __init__(self, kernel_size: int, norm: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = _batch_norm(nn.BatchNorm2d, norm, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), 1)
        return x * torch.sigmoid_(self.bn(self.conv(pooled)))


class TripletAttentionReference(nn.Module):
    """Triplet Attention as in the official ``landskape-ai/triplet-attention``,
    ``triplet_attention.py``.

    The (C, W) branch gates x permuted to (N, H, C, W) (pooled over H), the (H, C) branch x
    permuted to (N, W, H, C) (pooled over W), each permuted back to contiguous (N, C, H, W);
    the (H, W) branch gates x itself; ``y`` is their mean.

    Args:
        kernel_size (int): k of the three convs.
        no_spatial (bool): Without the (H, W) branch.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, kernel_size: int, no_spatial: bool, norm: nn.Module):
        super().__init__()
        self.cw = _ZPoolGate(kernel_size, norm)
        self.hc = _ZPoolGate(kernel_size, norm)
        self.hw = None if no_spatial else _ZPoolGate(kernel_size, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_cw = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        out_hc = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        if self.hw is None:
            return (out_cw + out_hc) / 2
        return (self.hw(x) + out_cw + out_hc) / 3


def _triplet(ours):
    _require(_is_bn(ours.bn_cw), ours, 'BN')
    return TripletAttentionReference(ours.kernel_size, ours.no_spatial, ours.bn_cw)


def _triplet_state(ours):
    state = {}
    for branch in ('cw', 'hc', 'hw'):
        state.update(_prefixed(ours.state_dict(), f'conv_{branch}.', f'{branch}.conv.'))
        state.update(_prefixed(ours.state_dict(), f'bn_{branch}.', f'{branch}.bn.'))
    return state


# --- SimplifiedNonLocal ----------------------------------------------------------------


class SimplifiedNonLocalReference(nn.Module):
    """The simplified non-local block as GCNet's official ``xvjiarui/GCNet``,
    ``mmdet/ops/ct/context_block.py`` computes its attention pooling (``spatial_pool``,
    ``pool='att'``), followed by one biased 1x1 conv ``W_v`` (the paper's eq. 2) and added.

    The pooling: a biased 1x1 conv C -> 1, a softmax over the H W positions, and the matmul
    of x as (N, 1, C, HW) with the weights as (N, 1, HW, 1).

    Args:
        channels (int): C.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        self.value_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weights = self.softmax(self.conv_mask(x).view(n, 1, h * w)).unsqueeze(3)
        context = torch.matmul(x.view(n, 1, c, h * w), weights).view(n, c, 1, 1)
        return x + self.value_conv(context)


def _snl_state(ours):
    state = dict(ours.state_dict())
    state['conv_mask.bias'] = state['conv_mask.weight'].new_zeros(1)  # a softmax cancels it
    return state


# --- SCSA ------------------------------------------------------------------------------


class SCSAReference(nn.Module):
    """SCSA as in the official ``HZAI-ZJNU/SCSA``, ``mmpretrain/models/attentions/SCSA.py``.

    SMSA: the row and column means, split into 4 channel groups, each through its own
    depthwise Conv1d (biased, kernel ``k_g``), concatenated, GroupNorm(4), gate; ``x' = x *
    a_h * a_w``. PCSA: AvgPool2d/MaxPool2d(ws, stride ws) (AdaptiveAvgPool2d(1) for
    ``ws = -1``), GroupNorm(1), depthwise 1x1 Conv2d q, k, v, per head ``softmax(q k^T /
    sqrt(d))`` over the channels, dropout, ``@ v``, the mean over positions, gate, times x'.

    Args:
        channels (int): C.
        head_num (int): Heads.
        window_size (int): Pooling window and stride; -1 for global average pooling.
        group_kernel_sizes (tuple): The 4 kernel sizes.
        qkv_bias (bool): Biased q, k, v.
        max_pool (bool): Max instead of average pooling.
        attn_drop_ratio (float): Dropout on the attention matrix.
        softmax_gate (bool): Softmax gates instead of sigmoids.
    """

    def __init__(self, channels: int, head_num: int, window_size: int, group_kernel_sizes,
                 qkv_bias: bool, max_pool: bool, attn_drop_ratio: float, softmax_gate: bool):
        super().__init__()
        self.group = channels // 4
        self.head_num = head_num
        self.scale = (channels // head_num)**-0.5
        self.softmax_gate = softmax_gate
        self.dwcs = nn.ModuleList(
            nn.Conv1d(self.group, self.group, k, padding=k // 2, groups=self.group)
            for k in group_kernel_sizes)
        self.norm_h = nn.GroupNorm(4, channels)
        self.norm_w = nn.GroupNorm(4, channels)
        if window_size == -1:
            self.down = nn.AdaptiveAvgPool2d((1, 1))
        else:
            self.down = (nn.MaxPool2d if max_pool else nn.AvgPool2d)(window_size, window_size)
        self.norm = nn.GroupNorm(1, channels)
        self.q, self.k, self.v = (
            nn.Conv2d(channels, channels, 1, bias=qkv_bias, groups=channels) for _ in range(3))
        self.attn_drop = nn.Dropout(attn_drop_ratio)

    def _gate(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.softmax(dim) if self.softmax_gate else torch.sigmoid(x)

    def _axis_gate(self, means: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        groups = torch.split(means, self.group, dim=1)
        return self._gate(norm(torch.cat([dwc(g) for dwc, g in zip(self.dwcs, groups)], 1)), 2)

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        n, c = y.shape[:2]
        return y.reshape(n, self.head_num, c // self.head_num, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        a_h = self._axis_gate(x.mean(dim=3), self.norm_h).view(n, c, h, 1)
        a_w = self._axis_gate(x.mean(dim=2), self.norm_w).view(n, c, 1, w)
        x = x * a_h * a_w
        y = self.norm(self.down(x))
        q, k, v = (self._heads(proj(y)) for proj in (self.q, self.k, self.v))
        attn = self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
        out = (attn @ v).reshape(n, c, *y.shape[2:]).mean((2, 3), keepdim=True)
        return self._gate(out, 1) * x


def _scsa(ours):
    mode = ours.down_sample_mode
    _require(mode != 'recombination' and not (ours.window_size == -1 and mode == 'max_pool'),
             ours, "'avg_pool' or 'max_pool' down-sampling ('max_pool' with a finite window; "
             "the official 'recombination' calls an undefined method)")
    return SCSAReference(ours.in_channels, ours.head_num, ours.window_size,
                         ours.group_kernel_sizes, ours.qkv_bias is not None, mode == 'max_pool',
                         ours.attn_drop_ratio, ours.gate_layer == 'softmax')


def _scsa_state(ours):
    ours_state = ours.state_dict()
    group = ours.in_channels // 4
    weight, bias = ours_state['smsa_weight'], ours_state['smsa_bias']
    state, offset = {}, 0
    for i, k in enumerate(ours.group_kernel_sizes):  # flat in the official conv order
        state[f'dwcs.{i}.weight'] = weight[offset:offset + group * k].view(group, 1, k)
        state[f'dwcs.{i}.bias'] = bias[i * group:(i + 1) * group]
        offset += group * k
    for norm in ('norm_h.', 'norm_w.', 'norm.'):
        state.update(_prefixed(ours_state, norm, norm))
    for i, name in enumerate('qkv'):
        state[f'{name}.weight'] = ours_state['qkv_weight'][i].view(-1, 1, 1, 1)
        if 'qkv_bias' in ours_state:
            state[f'{name}.bias'] = ours_state['qkv_bias'][i]
    return state


def _scsa_incomparable(ours, shape):
    ws = ours.window_size
    if ws != -1 and min(shape[2:]) < ws:
        return (f'a {shape[2]}x{shape[3]} map is smaller than the {ws}x{ws} window: the '
                'official pooling fails (ours clips the window)')
    return None


# --- ExternalAttention -----------------------------------------------------------------


class ExternalAttentionReference(nn.Module):
    """External attention as the official ``MenghaoGuo/EANet``, ``model_torch.py``
    (``External_attention``).

    A biased 1x1 conv, the map as (N, C, HW), ``linear_0`` (Conv1d C -> S), softmax over the
    positions, division by the sum over the S slots (``+ 1e-9``), ``linear_1`` (Conv1d
    S -> C), a 1x1 conv and BN, the input added, ReLU.

    Args:
        channels (int): C.
        memory_size (int): S.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, memory_size: int, norm: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.linear_0 = nn.Conv1d(channels, memory_size, 1, bias=False)
        self.linear_1 = nn.Conv1d(memory_size, channels, 1, bias=False)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                   _batch_norm(nn.BatchNorm2d, norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.conv1(x)
        n, c, h, w = x.shape
        attn = F.softmax(self.linear_0(x.view(n, c, h * w)), dim=-1)
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
        x = self.conv2(self.linear_1(attn).view(n, c, h, w))
        return F.relu(x + identity)


def _external_attention(ours):
    _require(ours.norm is not None and _is_bn(ours.norm), ours, 'a BN after conv2')
    return ExternalAttentionReference(ours.in_channels, ours.memory_size, ours.norm)


def _external_attention_state(ours):
    ours_state = ours.state_dict()
    state = _prefixed(ours_state, 'conv1.', 'conv1.')
    state['linear_0.weight'] = ours_state['memory_key.weight']
    state['linear_1.weight'] = ours_state['memory_value.weight']
    state['conv2.0.weight'] = ours_state['conv2.weight']
    state.update(_prefixed(ours_state, 'norm.', 'conv2.1.'))
    return state


# --- MultiHeadExternalAttention --------------------------------------------------------


class MultiHeadExternalAttentionReference(nn.Module):
    """Multi-head external attention as the official ``MenghaoGuo/EANet``,
    ``multi_head_attention_torch.py`` (``Attention``), on the (N, HW, C) tokens of the map.

    Tokens through ``trans_dims`` (C -> a C), viewed as (N, a heads, L, d); ``linear_0``
    (d -> S), softmax over the L tokens, division by the sum over S (``+ 1e-9``), dropout,
    ``linear_1`` (S -> d), heads concatenated, ``proj`` (a C -> C), dropout; back to NCHW.

    Args:
        channels (int): C.
        total_heads (int): ``coef * num_heads``.
        coef (int): The width expansion a.
        memory_size (int): S.
        attn_drop (float): Dropout on the attention map.
        proj_drop (float): Dropout after the projection.
    """

    def __init__(self, channels: int, total_heads: int, coef: int, memory_size: int,
                 attn_drop: float, proj_drop: float):
        super().__init__()
        self.total_heads = total_heads
        head_dim = channels * coef // total_heads
        self.trans_dims = nn.Linear(channels, channels * coef)
        self.linear_0 = nn.Linear(head_dim, memory_size)
        self.linear_1 = nn.Linear(memory_size, head_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(channels * coef, channels)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
        e = self.trans_dims(tokens).view(n, h * w, self.total_heads, -1).permute(0, 2, 1, 3)
        attn = self.linear_0(e).softmax(dim=-2)
        attn = self.attn_drop(attn / (1e-9 + attn.sum(dim=-1, keepdim=True)))
        y = self.linear_1(attn).permute(0, 2, 1, 3).reshape(n, h * w, -1)
        y = self.proj_drop(self.proj(y))
        return y.transpose(1, 2).reshape(n, c, h, w)


def _mhea(ours):
    return MultiHeadExternalAttentionReference(ours.in_channels, ours.total_heads, ours.coef,
                                               ours.memory_size, ours.attn_drop.p,
                                               ours.proj_drop.p)


def _mhea_state(ours):
    return {key.replace('memory_key.', 'linear_0.').replace('memory_value.', 'linear_1.'): value
            for key, value in ours.state_dict().items()}


# --- PooledSelfAttention ---------------------------------------------------------------


class PooledSelfAttentionReference(nn.Module):
    """Pooled self-attention as STANet's official ``justchenhao/STANet``, ``models/BAM.py``.

    ``AvgPool2d(ds)``; query, key (C -> d) and value (C -> C) biased 1x1 convs; energy
    ``q^T k / sqrt(d)`` by ``bmm``, softmax over the keys, ``v @ attention^T`` by ``bmm``;
    nearest ``F.interpolate`` by ds; the input added. The pooling uses ``ceil_mode`` and the
    upsampled map is cropped to H x W: no-ops where ds divides H and W, the only sizes the
    official code runs, so other sizes are compared too.

    Args:
        channels (int): C.
        key_channels (int): d.
        ds (int): The pooling factor.
    """

    def __init__(self, channels: int, key_channels: int, ds: int):
        super().__init__()
        self.ds = ds
        self.scale = key_channels**-0.5
        self.pool = nn.AvgPool2d(ds, ceil_mode=True)
        self.query_conv = nn.Conv2d(channels, key_channels, 1)
        self.key_conv = nn.Conv2d(channels, key_channels, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool(x)
        n, c, ph, pw = p.shape
        query = self.query_conv(p).view(n, -1, ph * pw).permute(0, 2, 1)
        key = self.key_conv(p).view(n, -1, ph * pw)
        attention = self.softmax(self.scale * torch.bmm(query, key))
        value = self.value_conv(p).view(n, -1, ph * pw)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(n, c, ph, pw)
        out = F.interpolate(out, [ph * self.ds, pw * self.ds])
        return out[:, :, :x.shape[2], :x.shape[3]] + x


def _pooled_self_attention(ours):
    return PooledSelfAttentionReference(ours.in_channels, ours.key_channels, ours.ds)


def _pooled_self_attention_state(ours):
    ours_state = ours.state_dict()
    d = ours.key_channels
    weight, bias, gamma = ours_state['qkv.weight'], ours_state['qkv.bias'], ours_state['gamma']
    state = {}
    for name, rows in (('query_conv', slice(0, d)), ('key_conv', slice(d, 2 * d))):
        state[f'{name}.weight'], state[f'{name}.bias'] = weight[rows], bias[rows]
    # Ours scales the attention output by gamma: the same as a value conv scaled by gamma
    # (the softmax weights sum to 1).
    state['value_conv.weight'] = weight[2 * d:] * gamma
    state['value_conv.bias'] = bias[2 * d:] * gamma
    return state


# --- SRM -------------------------------------------------------------------------------


class SRMReference(nn.Module):
    """SRM as in the official ``hyunjaelee410/style-based-recalibration-module``,
    ``models/recalibration_modules.py`` (``SRMLayer``, at its last commit f6221c7 "FIX : style
    pooling"; the first commit used ``std()`` without eps).

    Style pooling: the channel means and ``sqrt(var + eps)`` with the unbiased variance,
    concatenated to (N, C, 2); integration: times ``cfc`` (C, 2), summed, BatchNorm2d,
    sigmoid; times x.

    Args:
        channels (int): C.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, norm: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = _batch_norm(nn.BatchNorm2d, norm, channels)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        flat = x.view(n, c, -1)
        std = (flat.var(dim=2, keepdim=True) + self.eps).sqrt()
        style = torch.cat((flat.mean(dim=2, keepdim=True), std), 2)
        z = torch.sum(style * self.cfc[None], dim=2)[:, :, None, None]
        return x * torch.sigmoid(self.bn(z))


def _srm(ours):
    _require(ours.variance == 'unbiased' and _is_bn(ours.bn), ours, "variance='unbiased' and BN")
    return SRMReference(ours.in_channels, ours.bn, ours.eps)


# --- MLCA ------------------------------------------------------------------------------


class MLCAReference(nn.Module):
    """MLCA as in the official ``wandahangFY/MLCA``, ``MLCA.py`` (``MLCA`` at afbeb47): an
    adaptive average pool to the local grid, the grid's mean for the global branch, the
    grid read position-major as one sequence for the local Conv1d (across cell
    boundaries), both gates mixed on the grid and adaptive-average-pooled back to (H, W).

    Args:
        kernel_size (int): k of both Conv1d.
        local_size (int): The square local grid.
        local_weight (float): The local gate's weight.
    """

    def __init__(self, kernel_size: int, local_size: int = 5, local_weight: float = 0.5):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=pad, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size, padding=pad, bias=False)
        self.local_size = local_size
        self.local_weight = local_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.local_size
        local = F.adaptive_avg_pool2d(x, g)
        glob = F.adaptive_avg_pool2d(local, 1)
        y_local = self.conv_local(local.view(b, c, -1).transpose(-1, -2).reshape(b, 1, -1))
        y_global = self.conv(glob.view(b, c, -1).transpose(-1, -2))
        att_local = y_local.reshape(b, g * g, c).transpose(-1, -2).reshape(b, c, g, g).sigmoid()
        att_global = F.adaptive_avg_pool2d(y_global.view(b, c, 1, 1).sigmoid(), [g, g])
        att = F.adaptive_avg_pool2d(att_global * (1 - self.local_weight)
                                    + att_local * self.local_weight, [h, w])
        return x * att


def _mlca(ours):
    _require(ours.local_conv == 'sequence' and ours.local_size[0] == ours.local_size[1], ours,
             "local_conv='sequence' and a square local_size")
    return MLCAReference(ours.kernel_size, ours.local_size[0], ours.local_weight)


# --- FCA -------------------------------------------------------------------------------


class FCAReference(nn.Module):
    """FcaNet's attention as in the official ``cfzd/FcaNet``, ``model/layer.py``
    (``MultiSpectralAttentionLayer`` at aa5fb63): a map of another size than the DCT grid is
    adaptive-average-pooled to it (``F.adaptive_avg_pool2d``), multiplied by the fixed
    filters (C, g_h, g_w) and summed over H, W; bias-free Linear, ReLU, Linear, sigmoid;
    times x. The filters are a persistent buffer (loaded from ours).

    Args:
        channels (int): C.
        hidden (int): The bottleneck width.
        grid_size ((int, int)): The DCT grid.
    """

    def __init__(self, channels: int, hidden: int, grid_size):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.register_buffer('weight', torch.zeros(channels, *self.grid_size))
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pooled = x
        if (h, w) != self.grid_size:
            pooled = F.adaptive_avg_pool2d(x, self.grid_size)
        y = torch.sum(pooled * self.weight, dim=[2, 3])
        return x * self.fc(y).view(n, c, 1, 1).expand_as(x)


def _fca(ours):
    return FCAReference(ours.in_channels, ours.fc[0].out_features, ours.grid_size)


def _fca_state(ours):
    return {'weight': ours.dct_layer.weight, 'fc.0.weight': ours.fc[0].weight,
            'fc.2.weight': ours.fc[2].weight}



# --- GCT -------------------------------------------------------------------------------


class GCTReference(nn.Module):
    """GCT as in the official ``z-x-yang/GCT``, ``PyTorch/GCT.py`` (``GCT``, @68983ed).

    'l2': the embedding ``(sum_{H,W} x^2 + eps)^0.5 * alpha``, the norm
    ``gamma / (mean_C(embedding^2) + eps)^0.5``; 'l1': ``sum_{H,W} |x|`` (or ``x`` after a
    ReLU) times alpha, ``gamma / (mean_C |embedding| + eps)``; ``x * (1 + tanh(embedding *
    norm + beta))``, all in the input's dtype. Parameters (1, C, 1, 1).
    """

    def __init__(self, channels: int, eps: float, mode: str, after_relu: bool):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps, self.mode, self.after_relu = eps, mode, after_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == 'l2':
            embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.eps).pow(0.5) * self.alpha
            norm = self.gamma / (embedding.pow(2).mean(1, keepdim=True) + self.eps).pow(0.5)
        else:
            embedding = (x if self.after_relu else x.abs()).sum((2, 3), keepdim=True)
            embedding = embedding * self.alpha
            norm = self.gamma / (embedding.abs().mean(1, keepdim=True) + self.eps)
        return x * (1. + torch.tanh(embedding * norm + self.beta))


def _gct(ours):
    return GCTReference(ours.in_channels, ours.eps, ours.mode, ours.after_relu)

# --- GSoP ------------------------------------------------------------------------------


class GSoPReference(nn.Module):
    """GSoP (channel mode) as in the official
    ``ZilinGao/Global-Second-order-Pooling-Convolutional-Networks``,
    ``torchvision/models/resnet.py`` (``Bottleneck.chan_att``) and ``MPNCOV.py``
    (``CovpoolLayer``) @662a699.

    ReLU (not in place), a biased 1x1 conv C -> d with stride s, BN, ReLU; the covariance
    ``z I_hat z^T`` with the M x M centring matrix ``I_hat = (1/M) I - (1/M^2) 1 1^T``
    repeated per sample; viewed as (N, d, d, 1): BN over the rows, a (d, 1) conv with d
    groups d -> 4d, a biased 1x1 conv 4d -> C, sigmoid; times x.

    Args:
        channels (int): C.
        dim (int): d.
        stride (int): The reduction conv's stride.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, dim: int, stride: int, norm: nn.Module):
        super().__init__()
        self.relu_normal = nn.ReLU(inplace=False)
        self.conv_for_DR = nn.Conv2d(channels, dim, 1, stride=stride, bias=True)
        self.bn_for_DR = _batch_norm(nn.BatchNorm2d, norm, dim)
        self.relu = nn.ReLU(inplace=True)
        self.row_bn = _batch_norm(nn.BatchNorm2d, norm, dim)
        self.row_conv_group = nn.Conv2d(dim, 4 * dim, (dim, 1), groups=dim, bias=True)
        self.fc_adapt_channels = nn.Conv2d(4 * dim, channels, 1, bias=True)

    @staticmethod
    def covpool(z: torch.Tensor) -> torch.Tensor:
        n, d, h, w = z.shape
        m = h * w
        flat = z.reshape(n, d, m)
        i_hat = (-1. / m / m) * torch.ones(m, m, dtype=z.dtype, device=z.device) \
            + (1. / m) * torch.eye(m, m, dtype=z.dtype, device=z.device)
        i_hat = i_hat.view(1, m, m).repeat(n, 1, 1)
        return flat.bmm(i_hat).bmm(flat.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn_for_DR(self.conv_for_DR(self.relu_normal(x))))
        cov = self.covpool(out)
        out = self.row_bn(cov.view(cov.size(0), cov.size(1), cov.size(2), 1).contiguous())
        att = torch.sigmoid(self.fc_adapt_channels(self.row_conv_group(out)))
        return x * att


def _gsop(ours):
    _require(ours.mode == 'channel' and _is_bn(ours.bn_for_DR) and _is_bn(ours.row_bn), ours,
             "mode='channel' and BN norms")
    return GSoPReference(ours.in_channels, ours.att_dim, ours.reduce_stride, ours.bn_for_DR)


# --- GAM -------------------------------------------------------------------------------


class GAMReference(nn.Module):
    """GAM as in the public copy z1069614715/objectdetection_script ``cv-attention/GAM.py``
    (``GAM_Attention``; there is no official code).

    Channel: x permuted to (N, H W, C), Linear C -> C/r, ReLU, Linear C/r -> C, viewed back
    to (N, C, H, W), sigmoid; ``x1 = x * that``. Spatial: biased 7x7 conv C -> C/r, BN,
    ReLU, biased 7x7 conv C/r -> C, BN, sigmoid; ``x1 * that``.

    Args:
        channels (int): C.
        hidden (int): C/r.
        kernel_size (int): The spatial convs' kernel.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, hidden: int, kernel_size: int, norm: nn.Module):
        super().__init__()
        self.channel_attention = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        pad = kernel_size // 2
        self.spatial_attention = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size, padding=pad),
            _batch_norm(nn.BatchNorm2d, norm, hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size, padding=pad),
            _batch_norm(nn.BatchNorm2d, norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(n, -1, c)
        gate = self.channel_attention(tokens).view(n, h, w, c).permute(0, 3, 1, 2).sigmoid()
        x = x * gate
        return x * self.spatial_attention(x).sigmoid()


def _gam(ours):
    _require(_is_bn(ours.spatial_norm1) and _is_bn(ours.spatial_norm2)
             and isinstance(ours.channel_act, nn.ReLU) and isinstance(ours.spatial_act, nn.ReLU),
             ours, 'BN norms and ReLU activations')
    return GAMReference(ours.in_channels, ours.hidden_channels, ours.kernel_size,
                        ours.spatial_norm1)


def _gam_state(ours):
    state = dict(ours.state_dict())
    out = {}
    for ours_name, name in (('channel_fc1', 'channel_attention.0'),
                            ('channel_fc2', 'channel_attention.2')):
        out[f'{name}.weight'] = _flat(state[f'{ours_name}.weight'])
        out[f'{name}.bias'] = state[f'{ours_name}.bias']
    for ours_name, name in (('spatial_conv1', '0'), ('spatial_norm1', '1'),
                            ('spatial_conv2', '3'), ('spatial_norm2', '4')):
        out.update(_prefixed(state, ours_name + '.', f'spatial_attention.{name}.'))
    return out


# --- DoubleAttention -------------------------------------------------------------------


class DoubleAttentionReference(nn.Module):
    """The A^2-Nets double attention block as the most used public copy lays it out
    (``xmu-xiaoma666/External-Attention-pytorch``, ``model/attention/A2Atttention.py``; no
    official code is known), with the paper's softmax axes and residual.

    ``convA``, ``convB``, ``convV``: three biased 1x1 ``nn.Conv2d``; ``B`` softmaxed over the
    positions (last axis) and ``V`` over the c_n channels (axis 1) of each sample (the copy
    calls ``F.softmax`` without ``dim``: over the batch axis); ``G = bmm(A, b^T)``,
    ``Z = G @ v``; ``conv_reconstruct`` (biased 1x1); ``x`` added (the copy returns the
    reconstruction alone).

    Args:
        channels (int): C.
        c_m (int): Width of A.
        c_n (int): Width of B and V.
    """

    def __init__(self, channels: int, c_m: int, c_n: int):
        super().__init__()
        self.c_m, self.c_n = c_m, c_n
        self.convA = nn.Conv2d(channels, c_m, 1)
        self.convB = nn.Conv2d(channels, c_n, 1)
        self.convV = nn.Conv2d(channels, c_n, 1)
        self.conv_reconstruct = nn.Conv2d(c_m, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        feats = self.convA(x).flatten(2)  # (N, c_m, S)
        maps = self.convB(x).flatten(2).softmax(dim=2)  # per map, over positions
        vectors = self.convV(x).flatten(2).softmax(dim=1)  # per position, over c_n
        descriptors = torch.bmm(feats, maps.transpose(1, 2))  # (N, c_m, c_n)
        z = torch.matmul(descriptors, vectors).reshape(n, self.c_m, h, w)
        return x + self.conv_reconstruct(z)


def _double_attention(ours):
    return DoubleAttentionReference(ours.in_channels, ours.mid_channels, ours.num_descriptors)


def _double_attention_state(ours):
    state = ours.state_dict()
    parts = [ours.mid_channels, ours.num_descriptors, ours.num_descriptors]
    out = {}
    for name, weight, bias in zip(('convA', 'convB', 'convV'),
                                  state['embed.weight'].split(parts),
                                  state['embed.bias'].split(parts)):
        out[f'{name}.weight'], out[f'{name}.bias'] = weight, bias
    return {**out, **_prefixed(state, 'reconstruct.', 'conv_reconstruct.')}


# --- NAM -------------------------------------------------------------------------------


class NAMReference(nn.Module):
    """NAM's channel attention as in the official ``Christian-lyc/NAM``,
    ``MODELS/attention.py`` (``Channel_Att`` @6e8d3e3).

    ``BatchNorm2d(x)``; ``|weight.data| / sum |weight.data|`` multiplied in on the
    channels-last permutation (two contiguous copies); ``sigmoid(that) * x``.

    Args:
        channels (int): C.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, norm: nn.Module):
        super().__init__()
        self.bn2 = _batch_norm(nn.BatchNorm2d, norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.bn2(x)
        weight_bn = self.bn2.weight.data.abs() / torch.sum(self.bn2.weight.data.abs())
        x = torch.mul(weight_bn, x.permute(0, 2, 3, 1).contiguous())
        return torch.sigmoid(x.permute(0, 3, 1, 2).contiguous()) * residual


def _nam(ours):
    _require(not ours.spatial and _is_bn(ours.bn), ours, 'the channel form with BN')
    return NAMReference(ours.in_channels, ours.bn)


# --- RGA -------------------------------------------------------------------------------


def _rga_embedding(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())


def _rga_weight_net(n: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, 1, 1, bias=False), nn.BatchNorm2d(1))


class RGAReference(nn.Module):
    """RGA as in the official ``microsoft/Relation-Aware-Global-Attention-Networks``,
    ``reid/models/models_utils/rga_modules.py`` (``RGA_Module`` at cdc9965), which runs at
    its construction size only; on other sizes the reference pools x to the grid with
    ``F.adaptive_avg_pool2d`` (for each branch) and resizes the spatial gate back
    (bilinear), as our size policy.

    Spatial: theta, phi embeddings viewed (N, c', S), ``G = theta^T phi``, ``G^T`` and ``G``
    viewed (N, S, h, w) and concatenated, embedded, the channel mean of a third embedding
    in front, W-net, ``sigmoid(...).expand_as(x) * x``. Channel: the same on x viewed
    (N, S, C, 1) (permuted), the gate transposed to (N, C, 1, 1).

    Args:
        channels (int): C.
        grid_size ((int, int)): The grid (h, w).
        widths ((int, int, int, int)): c', s' and the two W-net hidden widths (spatial,
            channel).
        spatial, channel (bool): The branches.
    """

    def __init__(self, channels: int, grid_size, widths, spatial: bool, channel: bool):
        super().__init__()
        self.grid_size = tuple(grid_size)
        s = self.grid_size[0] * self.grid_size[1]
        c_, s_, down_s, down_c = widths
        self.use_spatial, self.use_channel = spatial, channel
        if spatial:
            self.gx_spatial = _rga_embedding(channels, c_)
            self.gg_spatial = _rga_embedding(2 * s, s_)
            self.W_spatial = _rga_weight_net(1 + s_, down_s)
            self.theta_spatial = _rga_embedding(channels, c_)
            self.phi_spatial = _rga_embedding(channels, c_)
        if channel:
            self.gx_channel = _rga_embedding(s, s_)
            self.gg_channel = _rga_embedding(2 * channels, c_)
            self.W_channel = _rga_weight_net(1 + c_, down_c)
            self.theta_channel = _rga_embedding(s, s_)
            self.phi_channel = _rga_embedding(s, s_)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.grid_size:
            return x
        return F.adaptive_avg_pool2d(x, self.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_spatial:
            g = self._grid(x)
            b, c, h, w = g.shape
            theta = self.theta_spatial(g).view(b, -1, h * w).permute(0, 2, 1)
            phi = self.phi_spatial(g).view(b, -1, h * w)
            gs = torch.matmul(theta, phi)
            joint = torch.cat((gs.permute(0, 2, 1).reshape(b, h * w, h, w),
                               gs.view(b, h * w, h, w)), 1)
            ys = torch.cat((self.gx_spatial(g).mean(1, keepdim=True), self.gg_spatial(joint)),
                           1)
            gate = torch.sigmoid(self.W_spatial(ys))
            if gate.shape[2:] != x.shape[2:]:
                gate = F.interpolate(gate, size=x.shape[2:], mode='bilinear',
                                     align_corners=False)
            x = gate.expand_as(x) * x
        if self.use_channel:
            g = self._grid(x)
            b, c, h, w = g.shape
            xc = g.reshape(b, c, -1).permute(0, 2, 1).unsqueeze(-1)
            theta = self.theta_channel(xc).squeeze(-1).permute(0, 2, 1)
            phi = self.phi_channel(xc).squeeze(-1)
            gc = torch.matmul(theta, phi)
            joint = torch.cat((gc.permute(0, 2, 1).unsqueeze(-1), gc.unsqueeze(-1)), 1)
            yc = torch.cat((self.gx_channel(xc).mean(1, keepdim=True), self.gg_channel(joint)),
                           1)
            x = torch.sigmoid(self.W_channel(yc).transpose(1, 2)) * x
        return x


def _rga(ours):
    widths = (ours.inter_channel, ours.inter_spatial,
              ours.W_spatial[0].out_channels if ours.use_spatial else 1,
              ours.W_channel[0].out_channels if ours.use_channel else 1)
    return RGAReference(ours.in_channels, ours.grid_size, widths, ours.use_spatial,
                        ours.use_channel)


# --- PolarizedSelfAttention -----------------------------------------------------------


class PolarizedSelfAttentionReference(nn.Module):
    """Polarized self-attention as in the official ``DeLightCMU/PSA``,
    ``semantic-segmentation/network/PSA.py`` (``PSA_s`` and ``PSA_p`` at 20e307a).

    Channel-only: bias-free 1x1 convs on the full map, ``conv_v_right(x)`` (d) times
    ``softmax_S(conv_q_right(x))``, ``conv_up`` (``PSA_s``: d -> d / 4 with bias,
    ``LayerNorm([d / 4, 1, 1])``, ReLU, -> C with bias; ``PSA_p``: d -> C bias-free),
    sigmoid, times x. Spatial-only: ``conv_q_left(x)`` average-pooled (d), times
    ``conv_v_left(x)`` (``PSA_s``: softmaxed over S per channel), (``PSA_p``: softmax over
    S), sigmoid, times x. ``PSA_s`` runs the channel then the spatial branch; ``PSA_p`` adds
    the two branches.

    Args:
        channels (int): C.
        inter (int): d.
        bottleneck (int): d / 4 (``PSA_s``).
        parallel (bool): ``PSA_p`` rather than ``PSA_s``.
    """

    def __init__(self, channels: int, inter: int, bottleneck: int, parallel: bool):
        super().__init__()
        self.inter, self.parallel = inter, parallel
        self.conv_q_right = nn.Conv2d(channels, 1, 1, bias=False)
        self.conv_v_right = nn.Conv2d(channels, inter, 1, bias=False)
        if parallel:
            self.conv_up = nn.Conv2d(inter, channels, 1, bias=False)
        else:
            self.conv_up = nn.Sequential(nn.Conv2d(inter, bottleneck, 1),
                                         nn.LayerNorm([bottleneck, 1, 1]), nn.ReLU(inplace=True),
                                         nn.Conv2d(bottleneck, channels, 1))
        self.conv_q_left = nn.Conv2d(channels, inter, 1, bias=False)
        self.conv_v_left = nn.Conv2d(channels, inter, 1, bias=False)

    def channel_only(self, x: torch.Tensor) -> torch.Tensor:
        v = self.conv_v_right(x)
        n, d, h, w = v.shape
        q = torch.softmax(self.conv_q_right(x).view(n, 1, h * w), 2)
        context = torch.matmul(v.view(n, d, h * w), q.transpose(1, 2)).unsqueeze(-1)
        return x * torch.sigmoid(self.conv_up(context))

    def spatial_only(self, x: torch.Tensor) -> torch.Tensor:
        g = self.conv_q_left(x)
        n, d, h, w = g.shape
        q = F.adaptive_avg_pool2d(g, 1).view(n, d, 1).permute(0, 2, 1)
        v = self.conv_v_left(x).view(n, d, h * w)
        if self.parallel:
            context = torch.softmax(torch.matmul(q, v), 2)
        else:
            context = torch.matmul(q, torch.softmax(v, 2))
        return x * torch.sigmoid(context.view(n, 1, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            return self.channel_only(x) + self.spatial_only(x)
        return self.spatial_only(self.channel_only(x))


def _psa(ours):
    _require(ours.form == 'official', ours, "form='official'")
    parallel = ours.mode == 'parallel'
    bottleneck = 1 if parallel else ours.conv_up[0].out_channels
    return PolarizedSelfAttentionReference(ours.in_channels, ours.channels, bottleneck, parallel)


def _psa_state(ours):
    state = dict(ours.state_dict())
    for name in ('weight', 'bias'):
        if f'conv_up.1.norm.{name}' in state:
            state[f'conv_up.1.{name}'] = state.pop(f'conv_up.1.norm.{name}')[:, None, None]
    return state


# --- SpatialTransformer ----------------------------------------------------------------


class SpatialTransformerReference(nn.Module):
    """A spatial transformer laid out as the popular PyTorch tutorial
    (``pytorch/tutorials``, ``intermediate_source/spatial_transformer_tutorial.py``; no
    official code is known): a ``localization`` Sequential, an ``fc_loc`` Sequential whose
    output is viewed as theta (N, 2, 3), then ``F.affine_grid`` and ``F.grid_sample``, here
    with ``align_corners=False`` passed explicitly (the tutorial relies on the default). The
    localisation layers are the library's default net (conv k7 s2, BN, max-pool 2 (ceil
    mode), ReLU, conv k5 s2, BN, ReLU, global average pool, FC, ReLU, FC); the tutorial's
    flattens a fixed 10x3x3 MNIST map.
    """

    def __init__(self, channels: int, c1: int, c2: int, hidden: int, norm1: nn.Module,
                 norm2: nn.Module, padding_mode: str):
        super().__init__()
        self.padding_mode = padding_mode
        self.localization = nn.Sequential(
            nn.Conv2d(channels, c1, 7, stride=2, padding=3, bias=False),
            _batch_norm(nn.BatchNorm2d, norm1, c1), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.ReLU(True), nn.Conv2d(c1, c2, 5, stride=2, padding=2, bias=False),
            _batch_norm(nn.BatchNorm2d, norm2, c2), nn.ReLU(True), nn.AdaptiveAvgPool2d(1))
        self.fc_loc = nn.Sequential(nn.Linear(c2, hidden), nn.ReLU(True), nn.Linear(hidden, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.localization(x).flatten(1)
        theta = self.fc_loc(xs).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size(), align_corners=False)
        return F.grid_sample(x, grid, padding_mode=self.padding_mode, align_corners=False)


def _spatial_transformer(ours):
    _require(ours.transform == 'affine' and _is_bn(ours.norm1) and _is_bn(ours.norm2), ours,
             "transform='affine' (the tutorial's) and BN norms")
    return SpatialTransformerReference(ours.in_channels, *ours.loc_channels, ours.fc_channels,
                                       ours.norm1, ours.norm2, ours.padding_mode)


def _spatial_transformer_state(ours):
    state = dict(ours.state_dict())
    out = {}
    for ours_name, name in (('conv1', 'localization.0'), ('norm1', 'localization.1'),
                            ('conv2', 'localization.4'), ('norm2', 'localization.5'),
                            ('fc1', 'fc_loc.0'), ('fc2', 'fc_loc.2')):
        out.update(_prefixed(state, ours_name + '.', name + '.'))
    return out


# --- ShuffleAttention -----------------------------------------------------------------


class ShuffleAttentionReference(nn.Module):
    """Shuffle attention as in the official ``wofmanaf/SA-Net``, ``models/sa_resnet.py``
    (``sa_layer`` at 00a6760): x reshaped to (N G, C/G, H, W) and chunked into two halves;
    the first times ``sigmoid(cweight * avg_pool(x0) + cbias)``, the second times
    ``sigmoid(sweight * GroupNorm(x1) + sbias)`` (C/2G groups of one channel); concatenated,
    reshaped to (N, C, H, W) and channel-shuffled with 2 groups (reshape (N, 2, C/2, H, W),
    permute, reshape).

    Args:
        channels (int): C.
        groups (int): G.
        eps (float): The group norm's epsilon.
    """

    def __init__(self, channels: int, groups: int, eps: float = 1e-5):
        super().__init__()
        k = channels // (2 * groups)
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cweight = nn.Parameter(torch.zeros(1, k, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, k, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, k, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, k, 1, 1))
        self.gn = nn.GroupNorm(k, k, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x0, x1 = x.reshape(b * self.groups, -1, h, w).chunk(2, dim=1)
        xn = x0 * torch.sigmoid(self.cweight * self.avg_pool(x0) + self.cbias)
        xs = x1 * torch.sigmoid(self.sweight * self.gn(x1) + self.sbias)
        out = torch.cat([xn, xs], dim=1).reshape(b, -1, h, w)
        out = out.reshape(b, 2, -1, h, w).permute(0, 2, 1, 3, 4)
        return out.reshape(b, -1, h, w)


def _shuffle_attention(ours):
    return ShuffleAttentionReference(ours.in_channels, ours.num_groups, ours.gn.eps)


# --- SGE -------------------------------------------------------------------------------


class SGEReference(nn.Module):
    """SGE as in the official ``implus/PytorchInsight``,
    ``classification/models/imagenet/resnet_sge.py`` (``SpatialGroupEnhance`` at 2864528).

    x viewed as (N G, C / G, H, W); times its adaptive average pool, summed over the channels;
    flattened to (N G, H W), centred, divided by the unbiased ``std`` plus eps; viewed as
    (N, G, H, W), times ``weight`` plus ``bias`` (1, G, 1, 1); sigmoid; times the view of x.

    Args:
        groups (int): G.
        eps (float): Added to the standard deviation.
    """

    def __init__(self, groups: int, eps: float = 1e-5):
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        xg = x.view(n * self.groups, -1, h, w)
        sim = (xg * F.adaptive_avg_pool2d(xg, 1)).sum(dim=1, keepdim=True)
        t = sim.view(n * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True) + self.eps)
        t = t.view(n, self.groups, h, w) * self.weight + self.bias
        return (xg * torch.sigmoid(t.view(n * self.groups, 1, h, w))).view(n, c, h, w)


def _sge(ours):
    _require(ours.std in ('unbiased', 'unbiased_nan'), ours, "an unbiased std")
    return SGEReference(ours.groups, ours.eps)


# --- ResidualAttentionMask --------------------------------------------------------------


class _RANUnit(nn.Module):
    """A pre-activation bottleneck unit of the prototxt: BN-ReLU-conv 1x1 (C -> C/4), BN-ReLU-
    conv 3x3, BN-ReLU-conv 1x1 (-> C), plus the unit's input."""

    def __init__(self, channels: int, norm: nn.Module):
        super().__init__()
        width = max(channels // 4, 1)
        self.norm1 = _batch_norm(nn.BatchNorm2d, norm, channels)
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.norm2 = _batch_norm(nn.BatchNorm2d, norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm3 = _batch_norm(nn.BatchNorm2d, norm, width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return x + self.conv3(F.relu(self.norm3(y)))


class ResidualAttentionMaskReference(nn.Module):
    """The soft mask branch of ``fwang91/residual-attention-network``'s deploy prototxts
    (``Attention-56-deploy.prototxt`` @bc207a8; Caffe only, no Python code): with L levels,
    max pooling 3x3 stride 2 in ceil mode then a unit at every level (two at the deepest),
    skip units, bilinear ``Interp`` (corners aligned) to each level's size plus the skip then
    a unit, ``Interp`` to the trunk's size, BN-ReLU-1x1, BN-ReLU-1x1, sigmoid;
    ``(1 + M) * T`` with the mask input T (as ours without a separate mask input).

    Args:
        channels (int): C.
        levels (int): L.
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, levels: int, norm: nn.Module):
        super().__init__()
        self.down = nn.ModuleList(_RANUnit(channels, norm) for _ in range(levels))
        self.bottom = _RANUnit(channels, norm)
        if levels > 1:
            self.skip = nn.ModuleList(_RANUnit(channels, norm) for _ in range(levels - 1))
            self.up = nn.ModuleList(_RANUnit(channels, norm) for _ in range(levels - 1))
        self.norm1 = _batch_norm(nn.BatchNorm2d, norm, channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm2 = _batch_norm(nn.BatchNorm2d, norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, skips = x, []
        for level in range(self.levels):
            y = self.down[level](F.max_pool2d(y, 3, 2, 0, ceil_mode=True))
            if level < self.levels - 1:
                skips.append(self.skip[level](y))
        y = self.bottom(y)
        for level in reversed(range(self.levels - 1)):
            y = F.interpolate(y, size=skips[level].shape[-2:], mode='bilinear',
                              align_corners=True)
            y = self.up[level](y + skips[level])
        y = F.interpolate(y, size=x.shape[-2:], mode='bilinear', align_corners=True)
        y = self.conv1(F.relu(self.norm1(y)))
        mask = torch.sigmoid(self.conv2(F.relu(self.norm2(y))))
        return x * mask + x


def _residual_attention_mask(ours):
    _require(ours.align_corners and _is_bn(ours.norm1), ours, 'align_corners=True and BN')
    return ResidualAttentionMaskReference(ours.in_channels, ours.num_levels, ours.norm1)


def _ran_unpooled(ours, shape):
    if not all(ours.pooled_levels(shape[2:])):
        return (f'a {shape[2]}x{shape[3]} map: ours does not pool every level there '
                f'(pooled levels {ours.pooled_levels(shape[2:])}); the official graph does')
    return None


# --- EfficientMultiScaleAttention ------------------------------------------------------


class EMAMSReference(nn.Module):
    """EMA as in the official ``YOLOonMe/EMA-attention-module``, ``EMA_attention_module``
    (class ``EMA`` at afc37ec).

    x viewed as (N G, C / G, H, W); adaptive average pools to (H, 1) and (1, W) (the second
    permuted to (W, 1)), concatenated along H, one 1x1 conv, split by [H, W]; GroupNorm of
    the view times both sigmoids; a 3x3 conv of the view; each branch's adaptive average pool
    through a softmax over the channels (``nn.Softmax(-1)`` on the permuted vector), matrix
    product with the other branch flattened, summed, viewed as (N G, 1, H, W); sigmoid; times
    the view.

    Args:
        channels (int): C.
        factor (int): G.
    """

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.groups = factor
        width = channels // factor
        self.softmax = nn.Softmax(-1)
        self.agp = nn.AdaptiveAvgPool2d((1, 1))
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.gn = nn.GroupNorm(width, width)
        self.conv1x1 = nn.Conv2d(width, width, 1)
        self.conv3x3 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        bg = b * self.groups
        gx = x.reshape(bg, -1, h, w)
        hw = self.conv1x1(torch.cat([self.pool_h(gx), self.pool_w(gx).permute(0, 1, 3, 2)], 2))
        a_h, a_w = torch.split(hw, [h, w], dim=2)
        x1 = self.gn(gx * a_h.sigmoid() * a_w.permute(0, 1, 3, 2).sigmoid())
        x2 = self.conv3x3(gx)
        s1 = self.softmax(self.agp(x1).reshape(bg, -1, 1).permute(0, 2, 1))
        s2 = self.softmax(self.agp(x2).reshape(bg, -1, 1).permute(0, 2, 1))
        m = torch.matmul(s1, x2.reshape(bg, c // self.groups, -1)) + torch.matmul(
            s2, x1.reshape(bg, c // self.groups, -1))
        return (gx * m.reshape(bg, 1, h, w).sigmoid()).reshape(b, c, h, w)


# --- CAA -------------------------------------------------------------------------------


class CAAReference(nn.Module):
    """CAA as in the official ``NUST-Machine-Intelligence-Laboratory/PKINet``,
    ``mmrotate/models/backbones/pkinet.py`` (``CAA`` at c1e72da, as PKINet builds it: no norm,
    no activation): ``nn.AvgPool2d(7, 1, 3)``, a 1x1 conv, a 1 x k_h and a k_v x 1 depthwise
    conv, a 1x1 conv, a sigmoid; the block multiplies x by the factor.

    Args:
        channels (int): C.
        k_h, k_v (int): The strip kernels.
    """

    def __init__(self, channels: int, k_h: int = 11, k_v: int = 11):
        super().__init__()
        self.avg_pool = nn.AvgPool2d(7, 1, 3)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.h_conv = nn.Conv2d(channels, channels, (1, k_h), 1, (0, k_h // 2), groups=channels)
        self.v_conv = nn.Conv2d(channels, channels, (k_v, 1), 1, (k_v // 2, 0), groups=channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.conv2(self.v_conv(self.h_conv(self.conv1(self.avg_pool(x))))))


def _caa(ours):
    _require(ours.conv1.norm_name is None and ours.conv1.activate is None
             and ours.pool_size == 7, ours, 'norm_cfg=None, act_cfg=None and pool_size=7')
    return CAAReference(ours.in_channels, ours.h_kernel_size, ours.v_kernel_size)


# --- LSKBlock --------------------------------------------------------------------------


class LSKBlockReference(nn.Module):
    """LSKBlock as in the official ``zcablii/LSKNet``,
    ``mmrotate/models/backbones/lsknet.py`` (``LSKblock``, ``Attention`` at cbe06ca): a 5x5
    depthwise conv, a 7x7 depthwise conv with dilation 3 on its output, a 1x1 conv C -> C/2 on
    each, their concatenation's channel mean and max, a 7x7 conv 2 -> 2 and sigmoid, the
    selected sum, a 1x1 conv C/2 -> C, times x; with ``projection``, the ``Attention``
    wrapper ``x + proj_2(LSK(GELU(proj_1(x))))``.

    Args:
        dim (int): Channels C.
        projection (bool): Wrap the block in the official ``Attention``.
    """

    def __init__(self, dim: int, projection: bool):
        super().__init__()
        self.projection = projection
        if projection:
            self.proj_1 = nn.Conv2d(dim, dim, 1)
            self.proj_2 = nn.Conv2d(dim, dim, 1)
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, stride=1, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim // 2, 1)
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(dim // 2, dim, 1)

    def lsk(self, x: torch.Tensor) -> torch.Tensor:
        attn1 = self.conv0(x)
        attn2 = self.conv_spatial(attn1)
        attn1 = self.conv1(attn1)
        attn2 = self.conv2(attn2)
        attn = torch.cat([attn1, attn2], dim=1)
        avg_attn = torch.mean(attn, dim=1, keepdim=True)
        max_attn, _ = torch.max(attn, dim=1, keepdim=True)
        sig = self.conv_squeeze(torch.cat([avg_attn, max_attn], dim=1)).sigmoid()
        attn = attn1 * sig[:, 0, :, :].unsqueeze(1) + attn2 * sig[:, 1, :, :].unsqueeze(1)
        return x * self.conv(attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.projection:
            return self.lsk(x)
        return x + self.proj_2(self.lsk(F.gelu(self.proj_1(x))))


def _lsk_block(ours):
    return LSKBlockReference(ours.in_channels, ours.with_projection)


# --- CPCA ------------------------------------------------------------------------------


class CPCAReference(nn.Module):
    """CPCA as in the official ``Cuthbert-Huang/CPCANet``,
    ``CPCANet/nnunet/network_architecture/CPCANet.py`` (``ChannelAttention``, ``RepBlock`` at
    550b49a): one 1x1 conv ``conv`` applied three times (input projection + GELU, spatial
    attention, output), the channel prior as two separate pool -> fc1 -> relu -> fc2 ->
    sigmoid passes, summed, and the 5x5 + (1x7, 7x1) + (1x11, 11x1) + (1x21, 21x1) depthwise
    convs.

    Args:
        in_channels (int): Channels C.
        hidden (int): The channel prior's hidden width (official C // 4).
    """

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        c = in_channels
        self.ca = nn.Module()
        self.ca.fc1 = nn.Conv2d(c, hidden, 1)
        self.ca.fc2 = nn.Conv2d(hidden, c, 1)
        self.dconv5_5 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        for k in (7, 11, 21):
            setattr(self, f'dconv1_{k}', nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c))
            setattr(self, f'dconv{k}_1', nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c))
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv(x))
        avg = torch.sigmoid(self.ca.fc2(F.relu(self.ca.fc1(F.adaptive_avg_pool2d(x, 1)))))
        mx = torch.sigmoid(self.ca.fc2(F.relu(self.ca.fc1(F.adaptive_max_pool2d(x, 1)))))
        x = (avg + mx) * x
        d0 = self.dconv5_5(x)
        d = d0
        for k in (7, 11, 21):
            d = d + getattr(self, f'dconv{k}_1')(getattr(self, f'dconv1_{k}')(d0))
        return self.conv(self.conv(d) * x)


def _cpca(ours):
    _require(ours.projection == 'shared' and ours.square_kernel == 5
             and ours.strip_kernels == (7, 11, 21), ours,
             "projection='shared', square_kernel=5 and strip_kernels=(7, 11, 21)")
    return CPCAReference(ours.in_channels, ours.ca.fc1.out_channels)


# --- BiLevelRoutingAttention -------------------------------------------------------------


class BiLevelRoutingAttentionReference(nn.Module):
    """Bi-level routing attention as in the official ``rayleizhu/BiFormer``
    ``ops/bra_legacy.py`` (``BiLevelRoutingAttention``, ``TopkRouting``, ``KVGather``,
    ``QKVLinear`` at 1697bbb) with ``kv_downsample_mode='identity'``: NHWC, x zero-padded to
    multiples of ``n_win`` (``auto_pad=True``) or asserted divisible, the map cut into
    ``(n, n_win^2, h, w, C)`` regions, one linear giving q and kv, the region means of q and
    k, ``lepe`` on the v map, the top-k of ``(q̄ s) k̄ᵀ``, a ``torch.gather`` on the kv
    regions expanded over the query regions, the per-head softmax, ``wo(out + lepe)`` and
    the crop.

    Args:
        dim, num_heads, n_win, topk, qk_dim (int): As ours.
        scale (float): The logit scale.
        side_dwconv (int): The lepe kernel (0: none).
        with_wo, diff_routing, soft_routing, param_routing, auto_pad (bool): As the
            official ``param_attention='qkvo'``, ``diff_routing``, ``soft_routing``,
            ``param_routing`` and ``auto_pad``.
    """

    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int, qk_dim: int,
                 scale: float, side_dwconv: int, with_wo: bool, diff_routing: bool,
                 soft_routing: bool, param_routing: bool, auto_pad: bool):
        super().__init__()
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.qk_dim, self.scale, self.auto_pad = qk_dim, scale, auto_pad
        self.diff_routing, self.soft_routing = diff_routing, soft_routing
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim)
        self.wo = nn.Linear(dim, dim) if with_wo else nn.Identity()
        self.lepe = (nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if side_dwconv > 0 else None)
        self.router_emb = nn.Linear(qk_dim, qk_dim) if param_routing else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        b, h_in, w_in, c = x.shape
        nw, cq, m, k = self.n_win, self.qk_dim, self.num_heads, self.topk
        if self.auto_pad:
            x = F.pad(x, (0, 0, 0, (nw - w_in % nw) % nw, 0, (nw - h_in % nw) % nw))
        else:
            assert h_in % nw == 0 and w_in % nw == 0
        _, H, W, _ = x.shape
        h, w, p2 = H // nw, W // nw, nw * nw
        x = x.reshape(b, nw, h, nw, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, p2, h, w, c)
        q, kv = self.qkv(x).split([cq, cq + c], dim=-1)
        q_pix = q.reshape(b, p2, h * w, cq)
        kv_pix = kv.reshape(b, p2, h * w, cq + c)
        q_win, k_win = q.mean([2, 3]), kv[..., :cq].mean([2, 3])
        v_map = kv[..., cq:].reshape(b, nw, nw, h, w, c).permute(0, 5, 1, 3, 2, 4)
        v_map = v_map.reshape(b, c, H, W).contiguous()
        lepe = (self.lepe(v_map).permute(0, 2, 3, 1) if self.lepe is not None
                else torch.zeros_like(v_map.permute(0, 2, 3, 1)))
        if not self.diff_routing:
            q_win, k_win = q_win.detach(), k_win.detach()
        q_hat, k_hat = self.router_emb(q_win), self.router_emb(k_win)
        logit = (q_hat * self.scale) @ k_hat.transpose(-2, -1)
        top_logit, index = torch.topk(logit, k=k, dim=-1)
        r_weight = torch.softmax(top_logit, dim=-1)
        ckv = cq + c
        selected = torch.gather(kv_pix.view(b, 1, p2, h * w, ckv).expand(-1, p2, -1, -1, -1), 2,
                                index.view(b, p2, k, 1, 1).expand(-1, -1, -1, h * w, ckv))
        if self.soft_routing:
            selected = r_weight.view(b, p2, k, 1, 1) * selected
        k_sel, v_sel = selected.split([cq, c], dim=-1)
        k_sel = k_sel.reshape(b * p2, k * h * w, m, cq // m).permute(0, 2, 3, 1)
        v_sel = v_sel.reshape(b * p2, k * h * w, m, c // m).permute(0, 2, 1, 3)
        q_pix = q_pix.reshape(b * p2, h * w, m, cq // m).permute(0, 2, 1, 3)
        attn = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1)
        out = (attn @ v_sel).reshape(b, nw, nw, m, h, w, c // m)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, H, W, c)
        out = self.wo(out + lepe)[:, :h_in, :w_in]
        return out.permute(0, 3, 1, 2)


def _bra(ours):
    _require(ours.size_policy in ('zero_pad', 'strict'), ours,
             "size_policy='zero_pad' (the official auto_pad=True) or 'strict'")
    return BiLevelRoutingAttentionReference(
        ours.in_channels, ours.num_heads, ours.n_win, ours.topk, ours.qk_dim, ours.scale,
        ours.side_dwconv, ours.wo is not None, ours.diff_routing, ours.soft_routing,
        ours.param_routing, ours.size_policy == 'zero_pad')


def _bra_incomparable(ours, shape):
    h, w = shape[-2:]
    if ours.size_policy == 'strict' and (h % ours.n_win or w % ours.n_win):
        return (f"size_policy='strict' needs H and W divisible by n_win={ours.n_win} (the "
                'official code asserts it)')
    return None


# --- LSKA ------------------------------------------------------------------------------


class LSKAReference(nn.Module):
    """LSKA as in the official ``StevenLauHKHK/Large-Separable-Kernel-Attention``
    ``models/van.py`` (``LSKA`` at bb2a8d2): depthwise 1 x k0, k0 x 1, then the dilated
    1 x k1, k1 x 1 (padding keeping the size), a 1x1 conv, all with bias; ``x * attn``.

    Args:
        dim (int): C.
        k0, k1, dilation (int): The local kernel, the dilated kernel and its dilation.
    """

    def __init__(self, dim: int, k0: int, k1: int, dilation: int):
        super().__init__()
        p0, p1 = (k0 - 1) // 2, dilation * (k1 - 1) // 2
        self.conv0h = nn.Conv2d(dim, dim, (1, k0), padding=(0, p0), groups=dim)
        self.conv0v = nn.Conv2d(dim, dim, (k0, 1), padding=(p0, 0), groups=dim)
        self.conv_spatial_h = nn.Conv2d(dim, dim, (1, k1), padding=(0, p1), groups=dim,
                                        dilation=dilation)
        self.conv_spatial_v = nn.Conv2d(dim, dim, (k1, 1), padding=(p1, 0), groups=dim,
                                        dilation=dilation)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv_spatial_v(self.conv_spatial_h(self.conv0v(self.conv0h(x))))
        return x * self.conv1(attn)


def _lska(ours):
    _require(not ours.with_projection, ours, 'with_projection=False (LSKA alone)')
    return LSKAReference(ours.in_channels, *LSKA_KERNELS[ours.k_size])


# --- ACmix ---------------------------------------------------------------------------------

class ACmixReference(nn.Module):
    """ACmix as in the official ``LeapLabTHU/ACmix`` ``ResNet/test_bottleneck.py``
    (``ACmix`` at 81dddb6): q, k, v 1x1 convs, the position encoding of a ``linspace`` grid,
    ``nn.ReflectionPad2d`` and ``nn.Unfold`` windows viewed as ``(H // stride, W // stride)``
    (odd sizes at stride 2 fail, as there), the softmax over the window, the ``fc`` over the
    stacked heads and the grouped ``dep_conv``. The grid is built in the input's dtype (the
    official one is float32, which fails for float64 inputs).

    Args:
        in_planes, out_planes (int): C_in and C_out.
        kernel_att, head, kernel_conv, stride (int): As the official arguments.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_att: int, head: int,
                 kernel_conv: int, stride: int):
        super().__init__()
        self.out_planes, self.head, self.stride = out_planes, head, stride
        self.kernel_att, self.kernel_conv = kernel_att, kernel_conv
        self.head_dim = out_planes // head
        self.rate1 = nn.Parameter(torch.full((1, ), 0.5))
        self.rate2 = nn.Parameter(torch.full((1, ), 0.5))
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.pad_att = nn.ReflectionPad2d((kernel_att - 1 + 1) // 2)
        self.unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=stride)
        self.softmax = nn.Softmax(dim=1)
        self.fc = nn.Conv2d(3 * head, kernel_conv ** 2, 1, bias=False)
        self.dep_conv = nn.Conv2d(kernel_conv ** 2 * self.head_dim, out_planes, kernel_conv,
                                  stride, 1, groups=self.head_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        b, c, h, w = q.shape
        heads, d, s, k2 = self.head, self.head_dim, self.stride, self.kernel_att ** 2
        h_out, w_out = h // s, w // s
        loc_w = torch.linspace(-1., 1., w, dtype=x.dtype, device=x.device)
        loc_h = torch.linspace(-1., 1., h, dtype=x.dtype, device=x.device)
        loc = torch.cat([loc_w.unsqueeze(0).repeat(h, 1).unsqueeze(0),
                         loc_h.unsqueeze(1).repeat(1, w).unsqueeze(0)], 0).unsqueeze(0)
        pe = self.conv_p(loc)
        q_att = q.view(b * heads, d, h, w) * d ** -0.5
        k_att = k.view(b * heads, d, h, w)
        v_att = v.view(b * heads, d, h, w)
        q_att, q_pe = q_att[:, :, ::s, ::s], pe[:, :, ::s, ::s]
        unfold_k = self.unfold(self.pad_att(k_att)).view(b * heads, d, k2, h_out, w_out)
        unfold_rpe = self.unfold(self.pad_att(pe)).view(1, d, k2, h_out, w_out)
        att = self.softmax((q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2)
                                                  - unfold_rpe)).sum(1))
        out_att = self.unfold(self.pad_att(v_att)).view(b * heads, d, k2, h_out, w_out)
        out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, self.out_planes, h_out, w_out)
        f_all = self.fc(torch.cat([t.view(b, heads, d, h * w) for t in (q, k, v)], 1))
        out_conv = self.dep_conv(f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w))
        return self.rate1 * out_att + self.rate2 * out_conv


def _acmix(ours):
    return ACmixReference(ours.in_channels, ours.out_channels, ours.kernel_att, ours.head,
                          ours.kernel_conv, ours.stride)


def _acmix_incomparable(ours, shape):
    h, w = shape[2:]
    if min(h, w) <= ours.kernel_att // 2:
        return ('the official reflection padding needs H, W > kernel_att // 2 (ours pads '
                'a shorter axis by replication)')
    if ours.stride > 1 and (h % ours.stride or w % ours.stride):
        return 'the official code fails on sizes that the stride does not divide'
    return None


# --- AgentAttention --------------------------------------------------------------------


class AgentAttentionReference(nn.Module):
    """Agent attention as in the official ``LeapLabTHU/Agent-Attention``
    ``agent_transformer/models/agent_pvt.py`` (``AgentAttention`` at 207ce3e): tokens, q and
    kv linears (kv from a strided conv + LN with ``sr_ratio`` > 1), agents = q pooled to
    sqrt(n) x sqrt(n), the two biased softmaxes, the depthwise 3x3 on v, the output linear.
    The official code runs at its construction size only (its per-row / per-column tables
    have the window's size); on other sizes the reference resizes them to the map as our
    size policy does (linearly, written as a bilinear resize of a map with a unit axis), and
    zero-pads a map side smaller than ``sr_ratio`` to it.

    Args:
        dim (int): C.
        heads, agents, sr_ratio (int): h, n and r.
        qkv_bias (bool): Biases of q and kv.
        size (int): The side s of the window the tables are built for.
    """

    def __init__(self, dim: int, heads: int, agents: int, sr_ratio: int, qkv_bias: bool,
                 size: int):
        super().__init__()
        self.heads, self.agents, self.sr_ratio = heads, agents, sr_ratio
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        sk = size // sr_ratio
        self.an_bias = nn.Parameter(torch.zeros(heads, agents, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(heads, agents, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, heads, agents, sk, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, heads, agents, 1, sk))
        self.ha_bias = nn.Parameter(torch.zeros(1, heads, size, 1, agents))
        self.wa_bias = nn.Parameter(torch.zeros(1, heads, 1, size, agents))
        self.pool = nn.AdaptiveAvgPool2d(int(agents ** 0.5))

    @staticmethod
    def _resized(table: torch.Tensor, size) -> torch.Tensor:
        """A (1, h, a, b, c) table with b, c resized to ``size`` (one of them is 1)."""
        if tuple(table.shape[3:]) == tuple(size):
            return table
        _, h, a, b, c = table.shape
        out = F.interpolate(table.reshape(1, h * a, b, c), size=size, mode='bilinear',
                            align_corners=False)
        return out.reshape(1, h, a, *size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, H, W = x.shape
        h, a, r = self.heads, self.agents, self.sr_ratio
        n = H * W
        tokens = x.flatten(2).transpose(1, 2)
        q = self.q(tokens)
        if r > 1:
            x_ = F.pad(x, (0, max(r - W, 0), 0, max(r - H, 0)))
            x_ = self.sr(x_)
            hk, wk = x_.shape[2:]
            kv = self.kv(self.norm(x_.reshape(b, c, -1).permute(0, 2, 1)))
        else:
            hk, wk = H, W
            kv = self.kv(tokens)
        kv = kv.reshape(b, -1, 2, c).permute(2, 0, 1, 3)
        k, v = kv[0], kv[1]
        agent = self.pool(q.reshape(b, H, W, c).permute(0, 3, 1, 2)).reshape(b, c, -1)
        agent = agent.permute(0, 2, 1).reshape(b, a, h, c // h).permute(0, 2, 1, 3)
        q = q.reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        k = k.reshape(b, -1, h, c // h).permute(0, 2, 1, 3)
        v = v.reshape(b, -1, h, c // h).permute(0, 2, 1, 3)
        # the tables (1, h, a, hk, 1) and (1, h, a, 1, wk) move their spatial axis into b, c
        ah = self._resized(self.ah_bias, (hk, 1))
        aw = self._resized(self.aw_bias, (1, wk))
        ha = self._resized(self.ha_bias.permute(0, 1, 4, 2, 3), (H, 1)).permute(0, 1, 3, 4, 2)
        wa = self._resized(self.wa_bias.permute(0, 1, 4, 2, 3), (1, W)).permute(0, 1, 3, 4, 2)
        bias1 = F.interpolate(self.an_bias, size=(hk, wk), mode='bilinear')
        bias1 = bias1.reshape(1, h, a, -1) + (ah + aw).reshape(1, h, a, -1)
        agent_attn = ((agent * self.scale) @ k.transpose(-2, -1) + bias1).softmax(-1)
        agent_v = agent_attn @ v
        bias2 = F.interpolate(self.na_bias, size=(H, W), mode='bilinear')
        bias2 = bias2.reshape(1, h, a, -1).permute(0, 1, 3, 2) + (ha + wa).reshape(1, h, -1, a)
        q_attn = ((q * self.scale) @ agent.transpose(-2, -1) + bias2).softmax(-1)
        out = (q_attn @ agent_v).transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, hk, wk, c).permute(0, 3, 1, 2)
        if r > 1:
            v = F.interpolate(v, size=(H, W), mode='bilinear')
        out = self.proj(out + self.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c))
        return out.transpose(1, 2).reshape(b, c, H, W)


def _agent(ours):
    return AgentAttentionReference(ours.in_channels, ours.num_heads, ours.agent_num,
                                   ours.sr_ratio, ours.qkv_bias, ours.bias_size)


def _agent_state(ours):
    state = dict(ours.state_dict())
    h, a = ours.num_heads, ours.agent_num
    state['ah_bias'] = state['ah_bias'].reshape(1, h, a, -1, 1)
    state['aw_bias'] = state['aw_bias'].reshape(1, h, a, 1, -1)
    state['ha_bias'] = state['ha_bias'].reshape(1, h, -1, 1, a)
    state['wa_bias'] = state['wa_bias'].reshape(1, h, 1, -1, a)
    return state


# --- PyramidSplitAttention -------------------------------------------------------------


class _SEWeightReference(nn.Module):
    """The official ``SEWeightModule``'s layout: average pool, 1x1 conv, ReLU, 1x1 conv,
    sigmoid (the weights, not their product with the input)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class PyramidSplitAttentionReference(nn.Module):
    """PSA as in the official ``murufeng/EPSANet``, ``models/epsanet.py`` (``PSAModule``) and
    ``models/SE_weight_module.py`` at 9955041: four convs ``conv_1`` .. ``conv_4`` (C_in ->
    C / 4, padding k // 2, no bias) run one by one and concatenated; the shared SE module
    called once per branch; the four weight vectors concatenated, viewed as (N, 4, C / 4)
    and soft-maxed over the branches; the weighted branches concatenated by prepending each
    to the previous ones (branch 4 first).

    Args:
        in_channels, out_channels (int): C_in and C.
        stride (int): The stride of every branch.
        conv_kernels, conv_groups (sequence of int): The official arguments.
        reduction (int): The SE reduction (16 in the official ``PSAModule``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv_kernels,
                 conv_groups, reduction: int = 16):
        super().__init__()
        self.split_channel = out_channels // 4
        for i, (k, g) in enumerate(zip(conv_kernels, conv_groups)):
            self.add_module(f'conv_{i + 1}', nn.Conv2d(in_channels, self.split_channel, k,
                                                       stride, k // 2, groups=g, bias=False))
        self.se = _SEWeightReference(self.split_channel, reduction)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xs = [self.conv_1(x), self.conv_2(x), self.conv_3(x), self.conv_4(x)]
        feats = torch.cat(xs, 1)
        feats = feats.view(n, 4, self.split_channel, *feats.shape[2:])
        weights = torch.cat([self.se(f) for f in xs], 1).view(n, 4, self.split_channel, 1, 1)
        weighted = feats * self.softmax(weights)
        out = weighted[:, 0]
        for i in range(1, 4):
            out = torch.cat((weighted[:, i], out), 1)
        return out


def _pyramid_split_attention(ours):
    _require(ours.num_branches == 4 and ours.concat_order == 'official', ours,
             "4 branches and concat_order='official'")
    return PyramidSplitAttentionReference(ours.in_channels, ours.out_channels, ours.stride,
                                          ours.conv_kernels, ours.conv_groups, ours.reduction)


def _pyramid_split_attention_state(ours):
    state = {f'conv_{i + 1}.weight': b.weight for i, b in enumerate(ours.branches)}
    state.update({'se.fc1.weight': ours.se_reduce.weight, 'se.fc1.bias': ours.se_reduce.bias,
                  'se.fc2.weight': ours.se_expand.weight, 'se.fc2.bias': ours.se_expand.bias})
    return state


def _pyramid_split_attention_cfg(in_channels):
    """The official order; below C = 64 (C / 4 < 16: test widths) groups and an SE reduction
    that fit, as the official groups (1, 4, 8, 16) and reduction 16 need C / 4 >= 16."""
    if in_channels >= 64:
        return dict(concat_order='official')
    return dict(concat_order='official', conv_groups=(1, 2, 4, 8), reduction=4)


# --- CoT -------------------------------------------------------------------------------


class CoTReference(nn.Module):
    """CoT as in the official ``JDAI-CV/CoTNet``, ``models/cotnet.py`` (``CotLayer`` at
    895e024, and the ``Bottleneck``'s ``nn.AvgPool2d(3, 2, padding=1)`` before it at stride
    2): the same layers (``key_embed``, ``embed``, ``conv1x1``, ``bn``, ``act``, ``se``), the
    CuPy ``aggregation_zeropad`` written as the repository's own unfold check of it
    (``cupy_layers/aggregation_zeropad.py``, ``test_aggregation_zeropad``): ``nn.Unfold`` of
    the values viewed as (N, C / G, G, k^2, H, W) times the weights, summed over k^2.

    Args:
        dim (int): C.
        kernel_size (int): k.
        stride (int): 1, or 2 for the pool first.
    """

    def __init__(self, dim: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        k, share, hidden = kernel_size, 8, max(dim * 2 // 4, 32)
        self.kernel_size = k
        self.avd = nn.AvgPool2d(3, 2, padding=1) if stride == 2 else nn.Identity()
        self.key_embed = nn.Sequential(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=4, bias=False), nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True))
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, dim // 2, 1, bias=False), nn.BatchNorm2d(dim // 2),
            nn.ReLU(inplace=True), nn.Conv2d(dim // 2, k * k * dim // share, 1),
            nn.GroupNorm(dim // share, k * k * dim // share))
        self.conv1x1 = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.unfold = nn.Unfold(k, padding=(k - 1) // 2)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.SiLU(inplace=True)
        self.se = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden),
                                nn.ReLU(inplace=True), nn.Conv2d(hidden, 2 * dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avd(x)
        k = self.key_embed(x)
        b, c, h, w = x.shape
        kk = self.kernel_size**2
        weight = self.embed(torch.cat([x, k], dim=1)).view(b, 1, -1, kk, h, w)
        value = self.conv1x1(x)
        cols = self.unfold(value).view(b, c // weight.shape[2], weight.shape[2], kk, h, w)
        x = (weight.unsqueeze(2) * cols.unsqueeze(1)).sum(-3).view(b, c, h, w)
        x = self.act(self.bn(x))
        both = torch.stack([x, k], dim=2)
        attn = self.se(both.sum(dim=2).mean((2, 3), keepdim=True)).view(b, c, 2)
        attn = F.softmax(attn, dim=2)
        return (both * attn.reshape(b, c, 2, 1, 1)).sum(dim=2)


def _cot(ours):
    _require(ours.out_channels == ours.in_channels and ours.key_groups == 4
             and ours.share_planes == 8 and ours.embed_reduction == 2 and ours.reduction == 4
             and ours.min_channels == 32, ours,
             'out_channels = in_channels and the official key_groups=4, share_planes=8, '
             'embed_reduction=2, reduction=4, min_channels=32')
    return CoTReference(ours.in_channels, ours.kernel_size, ours.stride)


# --- ODConv ----------------------------------------------------------------------------


class ODConvReference(nn.Module):
    """ODConv as in the official ``OSVAI/ODConv`` ``modules/odconv.py`` (``Attention`` and
    ``ODConv2d`` at 0901cc1): an ``attention`` holder (average pool, 1x1 conv, BN, ReLU and
    the heads present, logits divided by the temperature); the kernel bank (n, C_out,
    C_in / g, k, k); the (N, n, C_out, C_in / g, k, k) product of the position gate, the
    kernel softmax and the bank summed over n; x times the input gate as one (1, N C_in,
    H, W) map, one conv with groups g N, times the output gate; with k = 1 and n = 1 a plain
    conv of the bank.

    Args:
        ours (ODConv): Our module, whose hyper-parameters and BN eps and momentum are used.
    """

    def __init__(self, ours: nn.Module):
        super().__init__()
        c_in, c_out, k, n = ours.in_channels, ours.out_channels, ours.kernel_size, ours.kernel_num
        hidden = ours.hidden
        self.geometry = (ours.stride, ours.padding, ours.dilation, ours.groups)
        self.temperature = float(ours.temperature)
        self.attention = nn.Module()
        att = self.attention
        att.avgpool = nn.AdaptiveAvgPool2d(1)
        att.fc = nn.Conv2d(c_in, hidden, 1, bias=False)
        att.bn = _batch_norm(nn.BatchNorm2d, ours.attention.bn, hidden)
        att.relu = nn.ReLU(inplace=True)
        att.channel_fc = nn.Conv2d(hidden, c_in, 1)
        self.depthwise = c_in == ours.groups == c_out
        if not self.depthwise:
            att.filter_fc = nn.Conv2d(hidden, c_out, 1)
        if k > 1:
            att.spatial_fc = nn.Conv2d(hidden, k * k, 1)
        if n > 1:
            att.kernel_fc = nn.Conv2d(hidden, n, 1)
        self.weight = nn.Parameter(torch.zeros(n, c_out, c_in // ours.groups, k, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att, t = self.attention, self.temperature
        n, c, h, w = x.shape
        k = self.weight.shape[-1]
        z = att.relu(att.bn(att.fc(att.avgpool(x))))
        channel = torch.sigmoid(att.channel_fc(z).view(n, -1, 1, 1) / t)
        filt = 1.0 if self.depthwise else torch.sigmoid(att.filter_fc(z).view(n, -1, 1, 1) / t)
        stride, padding, dilation, groups = self.geometry
        if k == 1 and self.weight.shape[0] == 1:
            out = F.conv2d(x * channel, self.weight.squeeze(0), None, stride, padding,
                           dilation, groups)
            return out * filt
        spatial = 1.0 if k == 1 else torch.sigmoid(
            att.spatial_fc(z).view(n, 1, 1, 1, k, k) / t)
        kernel = 1.0 if self.weight.shape[0] == 1 else F.softmax(
            att.kernel_fc(z).view(n, -1, 1, 1, 1, 1) / t, dim=1)
        weight = torch.sum(spatial * kernel * self.weight.unsqueeze(0), dim=1)
        weight = weight.view(-1, c // groups, k, k)
        out = F.conv2d((x * channel).reshape(1, -1, h, w), weight, None, stride, padding,
                       dilation, groups * n)
        return out.view(n, -1, out.shape[-2], out.shape[-1]) * filt


def _odconv(ours):
    _require(_is_bn(ours.attention.bn), ours, 'BN')
    return ODConvReference(ours)


def _odconv_state(ours):
    state = dict(ours.state_dict())
    bank = state.pop('weight_bank')
    state['weight'] = bank.reshape(ours.kernel_num, ours.out_channels, *bank.shape[1:])
    return state


# --- SCConv ----------------------------------------------------------------------------


class SCConvReference(nn.Module):
    """SCConv as in the official ``MCG-NKU/SCNet`` ``scnet.py`` (``SCConv`` and
    ``SCBottleneck.k1`` at c0b5bd6), without the BNs that end K1 and K4 there (the host's
    norm after the replaced conv plays their role): ``k2`` = AvgPool(r, r) + 3x3 conv + BN
    as a Sequential, ``k3`` = 3x3 conv + BN, ``k4`` and ``k1`` 3x3 convs with the stride;
    the gate ``sigmoid(identity + F.interpolate(k2(identity), size))`` (nearest) times
    ``k3(identity)``, then ``k4``; the halves concatenated, the plain one first.

    Args:
        channels (int): C (both halves keep C / 2, as in the official block).
        stride, dilation, groups, pooling_r (int): As ours.
        ceil_mode (bool): The pool's mode (official: floor; ours ceil by default).
        norm (nn.Module): Our batch norm, whose eps and momentum are used.
    """

    def __init__(self, channels: int, stride: int, dilation: int, groups: int, pooling_r: int,
                 ceil_mode: bool, norm: nn.Module):
        super().__init__()
        half = channels // 2

        def conv(stride):
            return nn.Conv2d(half, half, 3, stride, dilation, dilation, groups, bias=False)

        self.k1 = conv(stride)
        self.k2 = nn.Sequential(nn.AvgPool2d(pooling_r, pooling_r, ceil_mode=ceil_mode),
                                conv(1), _batch_norm(nn.BatchNorm2d, norm, half))
        self.k3 = nn.Sequential(conv(1), _batch_norm(nn.BatchNorm2d, norm, half))
        self.k4 = conv(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        identity = x[:, half:]
        gate = torch.sigmoid(identity + F.interpolate(self.k2(identity), identity.shape[2:]))
        return torch.cat([self.k1(x[:, :half]), self.k4(self.k3(identity) * gate)], 1)


def _scconv(ours):
    _require(ours.out_channels == ours.in_channels and ours.upsample_mode == 'nearest'
             and _is_bn(ours.k2_norm) and _is_bn(ours.k3_norm), ours,
             "out_channels == in_channels, upsample_mode='nearest' and BN")
    return SCConvReference(ours.in_channels, ours.stride, ours.dilation, ours.groups,
                           ours.pooling_r, ours.ceil_mode, ours.k2_norm)


def _scconv_state(ours):
    state = dict(ours.state_dict())
    renames = {'k2.': 'k2.1.', 'k2_norm.': 'k2.2.', 'k3.': 'k3.0.', 'k3_norm.': 'k3.1.'}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        out[renames[prefix] + key[len(prefix):] if prefix else key] = value
    return out


# --- SASA ------------------------------------------------------------------------------


class SASAReference(nn.Module):
    """SASA from the paper's eq. 2-3 (arXiv:1906.05909; no official code: google-research
    ``standalone_self_attention_in_vision_models`` holds a README only), laid out as the
    common unfold implementations (e.g. the popular port leaderj1001/Stand-Alone-Self-
    Attention ``attention.py``, whose math is not the paper's and is not followed): the
    zero-padded keys and values unfolded to (N, h, d, H, W, k^2) copies, the logits
    ``q . (k + [r_row; r_col])`` summed over each head's d channels, neighbours outside the
    image masked with an unfolded map of ones (``boundary='mask'``), a softmax over k^2, the
    weighted sum of the unfolded values, then the ceil-mode s x s average pool at stride s.

    Args:
        ours (SASA): Our module, whose hyper-parameters are used.
    """

    def __init__(self, ours: nn.Module):
        super().__init__()
        c_in, c_out = ours.in_channels, ours.out_channels
        self.query = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.key = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.value = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.rel_rows = nn.Parameter(torch.zeros(ours.heads, c_out // ours.heads // 2,
                                                 ours.spatial_extent))
        self.rel_cols = nn.Parameter(torch.zeros_like(self.rel_rows))
        self.heads, self.size, self.stride = ours.heads, ours.spatial_extent, ours.stride
        self.mask, self.scale = ours.boundary == 'mask', ours.scale

    def _unfold(self, t: torch.Tensor) -> torch.Tensor:
        r = self.size // 2
        return F.pad(t, (r, r, r, r)).unfold(2, self.size, 1).unfold(3, self.size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        n, c, h, w = q.shape
        heads, size = self.heads, self.size
        d = c // heads
        k = self._unfold(k).reshape(n, heads, d, h, w, size, size)
        v = self._unfold(v).reshape(n, heads, d, h, w, size * size)
        rel = torch.cat([self.rel_rows[:, :, :, None].expand(-1, -1, -1, size),
                         self.rel_cols[:, :, None, :].expand(-1, -1, size, -1)], 1)
        keys = k + rel[None, :, :, None, None]  # (n, heads, d, h, w, k, k)
        logits = (q.view(n, heads, d, h, w, 1, 1) * keys).sum(2).flatten(-2)
        if self.scale:
            logits = logits / d**0.5
        if self.mask:
            inside = self._unfold(torch.ones_like(x[:1, :1])).reshape(1, 1, h, w, -1)
            logits = logits.masked_fill(inside == 0, float('-inf'))
        attn = logits.softmax(-1)
        y = (attn[:, :, None] * v).sum(-1).reshape(n, c, h, w)
        if self.stride > 1:
            y = F.avg_pool2d(y, self.stride, self.stride, ceil_mode=True)
        return y


def _sasa(ours):
    _require(ours.projection == 'full' and ours.embedding == 'per_head'
             and ours.downsample == 'pool', ours,
             "projection='full', embedding='per_head' and downsample='pool'")
    return SASAReference(ours)


# --- SAN -------------------------------------------------------------------------------


class SANReference(nn.Module):
    """SAN's self-attention operation as in the official ``hszhao/SAN`` ``model/san.py``
    (``SAM``, ``position`` at d88b022), its CuPy ``subtraction_refpad``,
    ``subtraction2_refpad`` and ``aggregation_refpad`` ops written as what their kernels
    compute, in the unfold form: the reflection-padded maps unfolded to (N, C, k^2, L)
    copies (x2, the coordinate map after ``conv_p`` and, for the aggregation, x3), the
    centre minus each neighbour, ``conv_w`` on the (N, c, k^2, L) pairs, a softmax over
    k^2 (pairwise); patchwise as the official ``unfold_i``/``unfold_j`` path; the
    aggregation weights shared by the channels ``c mod C_w``.

    Args:
        ours (SAN): Our module, whose hyper-parameters and BN eps and momentum are used.
    """

    def __init__(self, ours: nn.Module):
        super().__init__()
        c_in, c_out = ours.in_channels, ours.out_channels
        rel, shared, k = ours.rel_channels, ours.weight_channels, ours.spatial_extent
        self.pairwise = ours.relation == 'pairwise'
        self.k, self.stride, self.dilation = k, ours.stride, ours.dilation
        self.shared = shared
        self.conv1 = nn.Conv2d(c_in, rel, 1)
        self.conv2 = nn.Conv2d(c_in, rel, 1)
        self.conv3 = nn.Conv2d(c_in, c_out, 1)
        widths = ((rel + 2, rel, shared) if self.pairwise else
                  (rel * (k * k + 1), shared, k * k * shared))
        norms = (ours.conv_w[0], ours.conv_w[3])
        self.conv_w = nn.Sequential(
            _batch_norm(nn.BatchNorm2d, norms[0], widths[0]), nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], widths[1], 1, bias=False),
            _batch_norm(nn.BatchNorm2d, norms[1], widths[1]), nn.ReLU(inplace=True),
            nn.Conv2d(widths[1], widths[2], 1))
        if self.pairwise:
            self.conv_p = nn.Conv2d(2, 2, 1)

    def _unfold(self, t: torch.Tensor, kernel: int) -> torch.Tensor:
        """(N, C, kernel^2, L): the kernels' reflection-padded neighbourhoods."""
        pad = self.dilation * (kernel - 1) // 2
        if pad:
            t = F.pad(t, (pad, pad, pad, pad), mode='reflect')
        out = F.unfold(t, kernel, dilation=self.dilation, stride=self.stride)
        return out.view(t.shape[0], -1, kernel * kernel, out.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        k = self.k
        x1, x2, x3 = self.conv1(x), self.conv2(x), self.conv3(x)
        if self.pairwise:
            loc_w = torch.linspace(-1.0, 1.0, w, dtype=x.dtype).unsqueeze(0).repeat(h, 1)
            loc_h = torch.linspace(-1.0, 1.0, h, dtype=x.dtype).unsqueeze(1).repeat(1, w)
            p = self.conv_p(torch.cat([loc_w[None], loc_h[None]], 0)[None].to(x.device))
            rel = torch.cat([self._unfold(x1, 1) - self._unfold(x2, k),
                             (self._unfold(p, 1) - self._unfold(p, k)).repeat(n, 1, 1, 1)], 1)
            weight = self.conv_w(rel).softmax(dim=-2)
        else:
            x1 = self._unfold(x1, 1).reshape(n, -1, 1, h * w)
            x2 = self._unfold(x2, k).reshape(n, -1, 1, h * w)
            weight = self.conv_w(torch.cat([x1, x2], 1)).view(n, -1, k * k, h * w)
        values = self._unfold(x3, k)  # (N, C, k^2, L)
        c, length = values.shape[1], values.shape[-1]
        values = values.view(n, c // self.shared, self.shared, k * k, length)
        y = (weight.unsqueeze(1) * values).sum(3)
        ho, wo = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        return y.reshape(n, c, ho, wo)


def _san(ours):
    _require(ours.relation == 'pairwise' or (ours.stride == 1 and ours.dilation == 1), ours,
             'stride 1 and dilation 1 for the patchwise relation (the official path fails '
             'otherwise)')
    return SANReference(ours)


def _san_incomparable(ours, shape):
    pad = ours.neighbourhood_padding()
    if min(shape[-2:]) <= pad:
        return (f'a side <= {pad}: the official kernels reflect once and read outside the '
                'map; ours pads by replication there')
    return None


REFERENCES: List[Peer] = [
    reference('BAM', 'Jongchan/attention-module MODELS/bam.py', _bam, _bam_state,
              ours_cfg=lambda c: dict(fusion='mul'),
              differences="The pair builds ours with fusion='mul' (the official code; ours "
              "defaults to the paper's 'add'). The official Linear/convs before a BN have "
              'biases, ours none (set to zero). The official code pools with an H x H window '
              '(wrong on non-square maps); the reference with the full H x W window.'),
    reference('SCSE', 'ai-med/squeeze_and_excitation squeeze_and_excitation.py', _scse,
              _scse_state,
              differences='The same math as our defaults (max, r = 2); the official cSE '
              'layers are nn.Linear on the pooled vector, ours 1x1 convs (weights reshaped).'),
    reference('SimAM', 'ZjjConan/SimAM simam_module.py',
              lambda ours: SimAMReference(ours.e_lambda), lambda ours: {},
              differences='The same math (lambda = 1e-4 in both by default); on a 1x1 map the '
              'official code gives NaN, ours x * sigmoid(0.5).',
              incomparable=_one_position),
    reference('TripletAttention', 'landskape-ai/triplet-attention triplet_attention.py',
              _triplet, _triplet_state,
              differences='The same math; the official code permutes x into contiguous copies '
              'for two branches and permutes their outputs back, ours pools x in place.'),
    reference('SimplifiedNonLocal', 'xvjiarui/GCNet context_block.py',
              lambda ours: SimplifiedNonLocalReference(ours.in_channels), _snl_state,
              differences="GCNet's attention pooling (its score conv's bias, which the softmax "
              'cancels, set to zero), then one biased 1x1 conv C -> C, added (eq. 2).'),
    reference('SCSA', 'HZAI-ZJNU/SCSA SCSA.py', _scsa, _scsa_state,
              differences='The official code has four depthwise Conv1d and three depthwise 1x1 '
              'Conv2d (q, k, v); ours one zero-padded depthwise conv and per-channel scales '
              '(weights reshaped). A map smaller than the window fails in the official code.',
              incomparable=_scsa_incomparable),
    reference('ExternalAttention', 'MenghaoGuo/EANet model_torch.py', _external_attention,
              _external_attention_state,
              differences='The same math and layers (the official BN is synchronised, here '
              "nn.BatchNorm2d with ours' eps and momentum); the official M_v shares storage "
              'with M_k (tied), ours is a separate parameter (copied as it is).'),
    reference('MultiHeadExternalAttention', 'MenghaoGuo/EANet multi_head_attention_torch.py',
              _mhea, _mhea_state,
              differences='The official module takes (B, L, C) tokens: the reference converts '
              'the NCHW map to tokens and back (two transposed copies it times too).'),
    reference('PooledSelfAttention', 'justchenhao/STANet models/BAM.py',
              _pooled_self_attention, _pooled_self_attention_state,
              differences='The official code defines gamma but adds the attention output '
              'unscaled; the copy folds our gamma into the value conv (the same function). It '
              'pools with floor and upsamples by ds (H, W multiples of ds only); the '
              'reference pools with ceil_mode and crops, as ours, which changes nothing there.'),
    reference('GCT', 'z-x-yang/GCT PyTorch/GCT.py', _gct, lambda ours: dict(ours.state_dict()),
              differences='None with our defaults (the same parameters and ops; bit-identical '
              'outputs in float32 and float64). The official code sums in the input dtype, '
              'ours in float32 for fp16/bf16 inputs.'),
    reference('SRM', 'hyunjaelee410/style-based-recalibration-module recalibration_modules.py',
              _srm, lambda ours: dict(ours.state_dict()),
              differences='None with our defaults. On a 1x1 map the official code gives NaN.',
              incomparable=_one_position),
    reference('MLCA', 'wandahangFY/MLCA MLCA.py', _mlca, lambda ours: dict(ours.state_dict()),
              differences='None (the same layers and ops; under jit.trace ours writes the two '
              'adaptive pools as averaging matrices, the same values).'),
    reference('FCA', 'cfzd/FcaNet model/layer.py', _fca, _fca_state,
              differences='The same math with our defaults (a 7x7 grid); the official code '
              'pools other sizes with adaptive_avg_pool2d and multiplies by the filters, ours '
              'folds the pooling into the filters (the same values up to rounding).'),
    reference('GSoP', 'ZilinGao/Global-Second-order-Pooling-Convolutional-Networks '
              'resnet.py, MPNCOV.py', _gsop, lambda ours: dict(ours.state_dict()),
              ours_cfg=lambda c: dict(reduce_stride=2 if c == 256 else 1),
              differences='The same function; the official code centres with an M x M matrix '
              'per sample (built in float32 there, in the input dtype here), ours subtracts '
              'the mean. The pair uses the official stride rule at ResNet-50 widths: 2 for '
              'C = 256 (the planes-64 stage), else 1; our default is 1.'),
    reference('GAM', 'z1069614715/objectdetection_script cv-attention/GAM.py', _gam,
              _gam_state,
              differences='No official code: the most used public copy. The same math as our '
              'defaults; its per-pixel MLP is nn.Linear on the permuted map, ours 1x1 convs on '
              'the NCHW map (weights reshaped).'),
    reference('NAM', 'Christian-lyc/NAM MODELS/attention.py', _nam,
              lambda ours: _prefixed(dict(ours.state_dict()), 'bn.', 'bn2.'),
              differences='None with our defaults (the channel form; bit-identical in float64). '
              'The official code multiplies on a channels-last copy and permutes back.'),
    reference('DoubleAttention', 'xmu-xiaoma666/External-Attention-pytorch '
              'model/attention/A2Atttention.py', _double_attention, _double_attention_state,
              differences='No official code: the most used public copy, with its softmaxes '
              'over the batch axis replaced by the paper\'s (B over positions, V over the c_n '
              'channels, per sample) and x added. The copy has three convs A, B, V, ours one '
              'conv of c_m + 2 c_n outputs (weights split).'),
    reference('RGA', 'microsoft/Relation-Aware-Global-Attention-Networks rga_modules.py', _rga,
              lambda ours: dict(ours.state_dict()),
              differences='None on the grid size (the same layers and ops; the official code '
              'runs at its construction size only). On other sizes the reference pools with '
              'adaptive_avg_pool2d, ours with two averaging matrices (the same values up to '
              'rounding), and both resize the spatial gate bilinearly.'),
    reference('PolarizedSelfAttention', 'DeLightCMU/PSA semantic-segmentation/network/PSA.py',
              _psa, _psa_state, ours_cfg=lambda c: dict(form='official'),
              differences="The pair builds ours with form='official' (PSA_s; mode='parallel' "
              "gives PSA_p); ours defaults to the paper form. The official code runs "
              'conv_q_left and conv_v_right on the full map and pools after, ours pools first '
              '(the same function for bias-free 1x1 convs). The LayerNorm weights are reshaped '
              '((e, 1, 1) official, (e,) ours).'),
    reference('SpatialTransformer', 'pytorch/tutorials '
              'intermediate_source/spatial_transformer_tutorial.py', _spatial_transformer,
              _spatial_transformer_state,
              differences="No official code: the popular tutorial's layout (Sequentials, "
              "theta viewed as (N, 2, 3), affine_grid and grid_sample) with our localisation "
              "net; the same ops as our default ('affine'). Ours also has the 'attention' "
              "and 'translation' families (refused here)."),
    reference('ShuffleAttention', 'wofmanaf/SA-Net models/sa_resnet.py', _shuffle_attention,
              lambda ours: dict(ours.state_dict()),
              differences='None for C >= 2G (the same parameters, keys and ops; ours pools '
              'with mean and shuffles with a transpose). For C < 2G the official code fails; '
              'the reference is built with our reduced group count C // 2.'),
    reference('SGE', 'implus/PytorchInsight classification/models/imagenet/resnet_sge.py',
              _sge, lambda ours: dict(ours.state_dict()),
              differences='None with our defaults (groups dividing C). On a 1x1 map the '
              'official code gives NaN, ours x * sigmoid(bias).',
              incomparable=_one_position),
    reference('ResidualAttentionMask', 'fwang91/residual-attention-network '
              'imagenet_model/Attention-56-deploy.prototxt', _residual_attention_mask,
              lambda ours: dict(ours.state_dict()),
              ours_cfg=lambda c: dict(levels=2, min_size=1),
              differences='The official code is a Caffe deploy prototxt: the reference is a '
              'direct implementation of its mask layers (the same parameters and keys as '
              'ours). Ours skips the resizes between equal sizes and leaves a level unpooled '
              "whose map would fall below min_size (7 by default; the pair uses min_size=1 "
              'and 2 levels, so that small maps pool every level as the official graph does; '
              'shapes where ours does not pool every level are incomparable).',
              incomparable=_ran_unpooled),
    reference('EfficientMultiScaleAttention', 'YOLOonMe/EMA-attention-module '
              'EMA_attention_module', lambda ours: EMAMSReference(ours.in_channels, ours.factor),
              lambda ours: dict(ours.state_dict()),
              differences='None (the same layers and ops; ours averages with mean instead of '
              'adaptive pooling layers and slices instead of torch.split).'),
    reference('CAA', 'NUST-Machine-Intelligence-Laboratory/PKINet '
              'mmrotate/models/backbones/pkinet.py', _caa,
              lambda ours: {k.replace('.conv.', '.'): v for k, v in ours.state_dict().items()},
              differences='None (the same layers and ops; the official module returns the '
              'factor, which its block multiplies with x, ours returns x times it).'),
    reference('LSKBlock', 'zcablii/LSKNet mmrotate/models/backbones/lsknet.py', _lsk_block,
              lambda ours: dict(ours.state_dict()),
              differences='None (the same convolutions, keys and ops; the wrapper\'s block '
              'is not nested under spatial_gating_unit).'),
    reference('CPCA', 'Cuthbert-Huang/CPCANet CPCANet/nnunet/network_architecture/CPCANet.py',
              _cpca, lambda ours: dict(ours.state_dict()),
              differences='None (the same layers, keys and ops; the official block applies '
              'its one 1x1 conv three times, as our default projection=\'shared\').'),
    reference('LSKA', 'StevenLauHKHK/Large-Separable-Kernel-Attention models/van.py', _lska,
              lambda ours: dict(ours.state_dict()),
              differences='None (the same convolutions, keys and ops).'),
    reference('ACmix', 'LeapLabTHU/ACmix ResNet/test_bottleneck.py', _acmix,
              lambda ours: dict(ours.state_dict()),
              differences='None where the official code runs (the same layers and keys; ours '
              'sums over the k_att^2 shifted views of the padded maps, the official code '
              'unfolds them: the same values to rounding). The official grid is float32 '
              '(the reference builds it in the input dtype, as ours); on maps with a side <= '
              'kernel_att // 2, or at stride 2 on sizes it does not divide, the official code '
              'fails.', incomparable=_acmix_incomparable),
    reference('AgentAttention', 'LeapLabTHU/Agent-Attention agent_transformer/models/'
              'agent_pvt.py', _agent, _agent_state,
              differences='None at H = W = bias_size (the same layers and ops; the official '
              'code runs at that size only, its row / column tables stored with unit axes, '
              'ours without). On other sizes the reference resizes those tables as a '
              'bilinear resize with a unit axis, ours as a linear one (the same values), and '
              'both zero-pad a side smaller than sr_ratio.'),
    reference('PyramidSplitAttention', 'murufeng/EPSANet models/epsanet.py, '
              'models/SE_weight_module.py', _pyramid_split_attention,
              _pyramid_split_attention_state, ours_cfg=_pyramid_split_attention_cfg,
              differences="The pair builds ours with concat_order='official' (branch 4 first; "
              "ours defaults to the paper's order, branch 1 first). The official code runs "
              'the shared SE once per branch and concatenates twice (the branch outputs, '
              'then the weighted branches one by one); ours stacks the branch outputs once, '
              'runs the SE once on the four pooled vectors and multiplies once. Below C = 64 '
              'the pair uses groups (1, 2, 4, 8) and SE reduction 4 (the official ones need '
              'C / 4 >= 16).'),
    reference('CoT', 'JDAI-CV/CoTNet models/cotnet.py', _cot, lambda ours: dict(ours.state_dict()),
              differences='The same layers and keys (the official CotLayer, and the official '
              "Bottleneck's 3x3/2 average pool before it at stride 2); the official CuPy "
              'aggregation is the unfold form of its own test in the reference (values '
              'unfolded to k^2 copies), ours a sum over the k^2 shifted views of the padded '
              'values. The batch norm on the pooled fusion vector is a BatchNorm2d in both.'),
    reference('BiLevelRoutingAttention', 'rayleizhu/BiFormer ops/bra_legacy.py', _bra,
              lambda ours: dict(ours.state_dict()),
              ours_cfg=lambda c: dict(size_policy='zero_pad'),
              differences="The pair builds ours with size_policy='zero_pad' (the official "
              "auto_pad=True); ours defaults to 'mask' (padded keys masked out, the same "
              'function on sizes divisible by n_win). The official code computes the region '
              'means from the projected q and k and gathers from the kv regions expanded over '
              'the query regions; ours projects the region means of x (the same values) and '
              'gathers with index_select. Keys: the official qkv.qkv.* and router.emb.* are '
              'qkv.* and router_emb.* (here as ours).', incomparable=_bra_incomparable),
    reference('SCConv', 'MCG-NKU/SCNet scnet.py', _scconv, _scconv_state,
              differences='None with ceil_mode=False on any map of at least r = 4 per side '
              '(the same convs, pool, nearest resize and ops; bit-identical in float64). The '
              'reference takes the pool mode of ours, so our default ceil mode is compared '
              'with the official layout pooling in ceil mode; the BNs that end K1 and K4 in '
              'the official block are the host norm in both.'),
    reference('ODConv', 'OSVAI/ODConv modules/odconv.py', _odconv, _odconv_state,
              differences='None (the same layers, keys and ops up to the order of the kernel '
              'mixture: the official code sums the (N, n, C_out, C_in / g, k, k) product of '
              'the gates and the bank, ours multiplies the kernel softmax with the bank as '
              'one matrix product, then by the position gate; the bank is weight_bank '
              '(n C_out, ...) in ours, weight (n, C_out, ...) officially, reshaped).'),
    reference('SASA', 'paper arXiv:1906.05909 eq. 2-3 (no official code)', _sasa,
              lambda ours: dict(ours.state_dict()),
              differences='The same math and keys (no official code exists: the paper\'s '
              'equations); the reference unfolds the padded keys and values to k^2 copies '
              '(2 k^2 x the activation), ours sums over the k^2 shifted views of the padded '
              'keys and values.'),
    reference('SAN', 'hszhao/SAN model/san.py', _san, lambda ours: dict(ours.state_dict()),
              differences='The same layers and keys (the official SAM). The official CuPy '
              'refpad ops are written in the reference as what their kernels compute, in '
              'unfold form (x2, the coordinate map and x3 unfolded to k^2 copies); ours '
              'stacks k^2 strided views for the relations and sums the k^2 products of the '
              'aggregation without copying x3. Sides <= d (k - 1) / 2 are incomparable '
              '(the official kernels are undefined there).', incomparable=_san_incomparable),
]


def all_peers() -> List[Peer]:
    """The package peers (:data:`~cvattn_mm.analysis.peers.PEERS`), then the references of
    the modules without one (:data:`REFERENCES`)."""
    return PEERS + REFERENCES


def peers_of(module: str) -> List[Peer]:
    """The peers of our module ``module`` (a registry name), references included."""
    return [p for p in all_peers() if p.module == module]
