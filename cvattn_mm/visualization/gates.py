"""The gates and attention weights of the attention modules, recomputed from their input.

Each function takes a module and its input ``x`` (N, C, H, W) and returns what the module's
forward multiplies ``x`` by (gates, broadcastable to ``x``) or averages over (softmax
weights), computed with the module's own sub-modules, parameters and helpers. Where a module
has no helper that returns its gate, the function repeats the lines of its forward that
compute it; ``tests/visualization/test_maps.py`` checks that the gates reproduce every
module's output. Call them in eval mode under ``torch.no_grad()``
(:func:`cvattn_mm.visualization.maps.extract_maps` does).
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from ..attention.channel.context_pooling import attention_pool, attention_weights
from ..attention.channel.gc import _transform


def se_gate(module, x: torch.Tensor) -> torch.Tensor:
    """SE's gate ``(N, C, 1, 1)``: ``y = x * gate``."""
    return module.channel_gate(x.mean((2, 3), keepdim=True))


def eca_gate(module, x: torch.Tensor) -> torch.Tensor:
    """ECA's gate ``(N, C, 1, 1)``: ``y = x * gate``."""
    return module.channel_gate(x.mean((2, 3), keepdim=True))


def gc_parts(module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """GC's parts: ``y = x * mul_gate + add`` (each present when its fusion is).

    Returns:
        dict: ``weights`` (N, 1, H * W), the attention pooling's softmax ('att' pooling
        only); ``mul_gate`` (N, C, 1, 1); ``add`` (N, C, 1, 1).
    """
    parts = {}
    if module.conv_mask is not None:
        parts['weights'] = attention_weights(x, module.conv_mask)
        context = attention_pool(x, module.conv_mask)
    else:
        context = x.mean((2, 3))
    if module.channel_mul_conv is not None:
        parts['mul_gate'] = torch.sigmoid(_transform(module.channel_mul_conv, context))
    if module.channel_add_conv is not None:
        parts['add'] = _transform(module.channel_add_conv, context)
    return parts


def simplified_non_local_weights(module, x: torch.Tensor) -> torch.Tensor:
    """SimplifiedNonLocal's pooling weights ``(N, 1, H * W)`` (softmax over positions)."""
    return attention_weights(x, module.conv_mask)


def cbam_gates(module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """CBAM's gates: ``y = x * channel * spatial`` (each present when it is used).

    Returns:
        dict: ``channel`` (N, C, 1, 1); ``spatial`` (N, 1, H, W), computed on ``x * channel``.
    """
    gates = {}
    if module.use_channel:
        gates['channel'] = module.channel_gate(x.mean((2, 3), keepdim=True),
                                               x.amax((2, 3), keepdim=True))
        x = x * gates['channel']
    if module.use_spatial:
        gates['spatial'] = module.spatial_gate(x.amax(1, keepdim=True), x.mean(1, keepdim=True))
    return gates


def bam_logits(module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """BAM's branch logits ``Mc`` (N, C, 1, 1) and ``Ms`` (N, 1, H, W).

    ``y = x * (1 + sigmoid(Mc + Ms))`` (fusion 'add') or ``x * (1 + sigmoid(Mc * Ms))``
    ('mul').
    """
    return module.branch_logits(x)


def scse_gates(module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SCSE's cSE gate ``g_c`` (N, C, 1, 1) and sSE gate ``g_s`` (N, 1, H, W).

    ``y = max(x * g_c, x * g_s)``, ``x * (g_c + g_s)`` or ``x * g_c * g_s`` by combination.
    """
    return module.gates(x)


def coord_attention_gates(module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """CoordAttention's gates ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W): ``y = x a_h a_w``."""
    return module.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))


def triplet_gates(module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """TripletAttention's branch gates; ``y = x * mean of the gates``.

    Returns:
        dict: ``cw`` (N, C, 1, W), pooled over H; ``hc`` (N, C, H, 1), pooled over W;
        ``hw`` (N, 1, H, W), pooled over C (absent with ``no_spatial``).
    """
    descriptors = [pool(x, d) for d in module.pooled_axes for pool in (_amax, _mean)]
    return dict(zip(('cw', 'hc', 'hw'), module.gates(*descriptors)))


def _amax(x: torch.Tensor, dims) -> torch.Tensor:
    return x.amax(dims, keepdim=True)


def _mean(x: torch.Tensor, dims) -> torch.Tensor:
    return x.mean(dims, keepdim=True)


def simam_gate(module, x: torch.Tensor) -> torch.Tensor:
    """SimAM's gate ``(N, C, H, W)`` from the inverse minimal energy: ``y = x * gate``."""
    hw = x.shape[2] * x.shape[3]
    d = (x - x.mean((2, 3), keepdim=True)).square()
    scale = 4 * hw / (hw - 1 + 1 // hw)
    inv = 1 / (d.mean((2, 3), keepdim=True) * scale + 4 * module.e_lambda)
    return torch.sigmoid(d * inv + 0.5)


def scsa_gates(module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCSA's gates: SMSA's ``a_h`` (N, C, H, 1), ``a_w`` (N, C, 1, W) and PCSA's channel
    gate ``a_c`` (N, C, 1, 1), computed on ``x * a_h * a_w``: ``y = x * a_h * a_w * a_c``."""
    a_h, a_w = module.smsa_gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
    return a_h, a_w, module.channel_gate(x * a_h * a_w)


def non_local_attention(module, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """NonLocalBlock's pairwise weights ``f(x_i, x_j) / C(x)`` and the key grid.

    Returns:
        tuple: weights ``(N, H * W, H_k * W_k)`` (rows sum to 1 in the softmax modes
        'embedded_gaussian' and 'gaussian') and ``(H_k, W_k)``; ``y = weights @ g``.
    """
    _, _, h, w = x.shape
    d = module.inter_channels
    tokens = x.flatten(2).transpose(1, 2)
    emb = module.theta_phi_g(x).flatten(2).transpose(1, 2)
    if module.mode == 'gaussian':
        theta, phi = tokens, module._pool(tokens, h, w)
    else:
        theta, phi = emb[..., :d], module._pool(emb[..., d:2 * d], h, w)
    keys = ((h + 1) // 2, (w + 1) // 2) if module.sub_sample else (h, w)
    if module.mode in ('embedded_gaussian', 'gaussian'):
        return torch.bmm(theta, phi.transpose(1, 2)).softmax(-1), keys
    if module.mode == 'dot_product':
        return torch.bmm(theta, phi.transpose(1, 2)) / phi.shape[1], keys
    w_theta, w_phi = module.concat_project.weight.view(2, d, 1).unbind(0)
    scores = torch.matmul(theta, w_theta) + torch.matmul(phi, w_phi).transpose(1, 2)
    return F.relu(scores) / phi.shape[1], keys


def pooled_self_attention(module, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """PooledSelfAttention's softmax weights ``(N, L, L)`` over the ``L = H_p * W_p`` pooled
    positions, and ``(H_p, W_p)``; ``o = weights @ v``."""
    d = module.key_channels
    p = x if module.ds == 1 else F.avg_pool2d(x, module.ds, module.ds, ceil_mode=True,
                                              count_include_pad=False)
    qkv = module.qkv(p).flatten(2).transpose(1, 2)
    q, k = qkv[..., :d], qkv[..., d:2 * d]
    return torch.bmm(q, k.transpose(1, 2)).mul(d**-0.5).softmax(-1), tuple(p.shape[2:])


def external_attention_softmax(module, x: torch.Tensor) -> torch.Tensor:
    """ExternalAttention's softmax over positions ``(N, S, H * W)``, before the forward
    divides it by its sum over the S memory slots."""
    n, c, h, w = x.shape
    return module.memory_key(module.conv1(x).reshape(n, c, h * w)).float().softmax(-1)


def multi_head_external_attention_softmax(module, x: torch.Tensor) -> torch.Tensor:
    """MultiHeadExternalAttention's softmax over positions ``(N, H', S, H * W)`` (H' heads),
    before the forward divides it by its sum over the S memory slots."""
    n, _, h, w = x.shape
    e = F.conv2d(x, module.trans_dims.weight[:, :, None, None], module.trans_dims.bias)
    e = e.reshape(n * module.total_heads, module.head_dim, h * w)
    attn = F.conv1d(e, module.memory_key.weight[:, :, None], module.memory_key.bias)
    return attn.float().softmax(-1).reshape(n, module.total_heads, -1, h * w)


def sk_weights(module, x: torch.Tensor) -> torch.Tensor:
    """SK's branch selection weights ``(N, M, C)`` (softmax over the M branches):
    ``y = sum_i weights[:, i] * branch_i(x)``."""
    s = sum(branch(x).mean((2, 3), keepdim=True) for branch in module.branches)
    return module.selection(s).flatten(2)
