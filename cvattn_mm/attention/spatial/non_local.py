"""Non-local block."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, reduced_channels
from ..map_norm import build_map_norm
from ..maps import AttentionMap, query_weight_maps
from ..pointwise import PointwiseConv2d

MODES = ('embedded_gaussian', 'dot_product', 'gaussian', 'concatenation')
#: What ``sub_sample`` max-pools: ``x`` before phi and g (the official code), or phi(x) and g(x).
SUB_SAMPLE_AT = ('input', 'embedding')


class TokenPointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution that writes its output token by token (channels_last memory).

    An ``nn.Conv2d`` (kernel 1; same state-dict keys, hooks, FLOP counting) that takes and
    returns (N, C, H, W) tensors with the same values; its output's memory is (N, H, W,
    C_out), so that ``out.flatten(2).transpose(1, 2)`` is a row-contiguous (N, H W, C_out)
    view: the layout attention kernels read queries, keys and values in. It computes the
    tokens ``x^T W^T + b`` as one batched product on the transposed view of ``x`` (no copy
    for contiguous and channels_last inputs).

    Args:
        in_channels (int): Input channels C.
        out_channels (int): Output channels C_out.
        bias (bool): Whether to add a learnable bias.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
        weight = self.weight.flatten(1).t().expand(n, -1, -1)
        if self.bias is None:
            out = torch.bmm(tokens, weight)
        else:
            out = torch.baddbmm(self.bias, tokens, weight)  # (N, L, C_out), contiguous
        return out.transpose(1, 2).unflatten(2, (h, w))


@register_model()
class NonLocalBlock(AttentionModule):
    """Non-local block (Wang et al., CVPR 2018, arXiv:1711.07971), the paper's residual block.

    ``z_i = x_i + BN(W_z y_i)``, ``y_i = sum_j f(x_i, x_j) g(x_j) / C(x)`` with
    ``theta, phi, g`` biased 1x1 convs ``C -> d = C/r`` and, per ``mode``:

    * ``'embedded_gaussian'``: ``softmax_j(theta_i^T phi_j / sqrt(d))`` (``use_scale``; the
      paper's equation has no scale, the official code and mmcv's ``NonLocal2d`` use it);
    * ``'dot_product'``: ``theta_i^T phi_j / N_k``;
    * ``'gaussian'``: ``softmax_j(x_i^T x_j)`` (no theta, phi; no scale);
    * ``'concatenation'``: ``ReLU(w_f^T [theta_i; phi_j]) / N_k``.

    ``N_k`` counts the key positions. With ``sub_sample`` the keys are a 2x2 max pooling:
    ``sub_sample_at='input'`` pools x, ``phi_j = phi(x^_j)``, ``g_j = g(x^_j)`` with
    ``x^ = MaxPool(x)`` (the official code, and the paper's equation with a sub-sampled
    x^); ``'embedding'`` pools ``phi(x)`` and ``g(x)`` (mmcv's ``NonLocal2d``, and the
    paper's "max pooling layer after phi and g"). The queries ``theta_i`` (Gaussian:
    ``x_i``) keep every position. ``W_z`` is a 1x1 conv ``d -> C`` whose norm is
    zero-initialised (weight and bias), so the block starts as the identity.
    Parameters (norm = 2C for BN): embedded Gaussian and dot product
    ``3 (C d + d) + d C + norm``; Gaussian ``(C d + d) + d C + norm``; concatenation adds
    ``2 d``. Without a norm, ``W_z`` has a bias (``+ C``) and is zero-initialised instead.

    With the defaults (embedded Gaussian, ``use_scale``, ``reduction=2``, BN) and
    ``sub_sample=True`` it computes the official ``spacetime_nonlocal`` (``USE_SOFTMAX``,
    ``USE_SCALE`` and ``USE_MAXPOOL`` on, as in its defaults and released configs) on 2-D
    maps of even size. Initialisation as the official code: theta, phi, g and ``W_z`` from
    ``N(0, 0.01^2)``, biases 0, the BN's weight 0 (its ``BN_INIT_GAMMA``); without a norm
    ``W_z`` is zero (its ``USE_ZERO_INIT_CONV``). ``init_weights`` redoes the
    zero-initialisation after ``init_cfg`` unless it loads a checkpoint.

    Deviations from the official code:

    * ``sub_sample`` is off by default (as mmcv's ``NonLocal2d``): every position is a key,
      at about 4x the attention cost of the official default;
    * sub-sampling max-pools with ``ceil_mode=True``, so odd and 1x1 maps work (the last
      row/column is pooled alone; the official pooling drops it);
    * ``W_z`` has no bias before its norm (the official conv has one: a constant shift that
      the BN removes in training and folds into its running mean);
    * the Gaussian, dot-product and concatenation modes come from the paper (the official
      code has the embedded Gaussian and, without softmax, the dot product).

    Implementation: theta, phi and g are one conv ``theta_phi_g`` (same parameters as three;
    state-dict keys differ from mmcv's ``NonLocal2d``), a :class:`TokenPointwiseConv2d`
    whose output is read as row-contiguous tokens; with ``sub_sample_at='input'`` it runs
    on x (theta) and on the pooled x (phi, g), discarding the other outputs of each call.
    ``W_z`` and ``w_f`` are :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`
    (matrix products). The dot product computes ``(theta^T phi) g = theta^T (phi g^T)``
    in whichever order is cheaper for the input size (same math).

    Args:
        in_channels (int): Channels C.
        reduction (int): Divisor r of the embedding width ``d = max(C // r, min_channels)``.
        min_channels (int): Floor of d.
        mode (str): Pairwise function, one of ``MODES``.
        sub_sample (bool): Keys and values on a 2x2 max pooling (fewer key positions).
        sub_sample_at (str): What is pooled, one of ``SUB_SAMPLE_AT``: ``'input'`` (x,
            official) or ``'embedding'`` (phi(x) and g(x), mmcv).
        use_scale (bool): Scale the embedded Gaussian's logits by ``1 / sqrt(d)`` (official
            and mmcv default); the other modes have no scale and ignore it.
        norm_cfg (dict, optional): Norm after ``W_z``; ``None`` for none.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = 'Wang et al., Non-local Neural Networks, CVPR 2018, arXiv:1711.07971'
    paper_position = 'late_stages'
    _abbr_ = 'non_local'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 2,
                 min_channels: int = 1,
                 mode: str = 'embedded_gaussian',
                 sub_sample: bool = False,
                 sub_sample_at: str = 'input',
                 use_scale: bool = True,
                 norm_cfg: dict | None = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.mode = check_choice(owner, 'mode', mode, MODES)
        self.sub_sample = bool(sub_sample)
        self.sub_sample_at = check_choice(owner, 'sub_sample_at', sub_sample_at, SUB_SAMPLE_AT)
        self.use_scale = bool(use_scale)
        self.reduction = reduction
        d = reduced_channels(owner, in_channels, reduction, min_channels)
        self.inter_channels = d
        # theta, phi and g in one conv (channels [theta | phi | g]); g only for Gaussian.
        self.theta_phi_g = TokenPointwiseConv2d(in_channels, d if mode == 'gaussian' else 3 * d)
        if mode == 'concatenation':
            # w_f of the paper: a 1x1 conv 2d -> 1 (no bias) on [theta_i; phi_j].
            self.concat_project = PointwiseConv2d(2 * d, 1, bias=False)
        self.conv_out = PointwiseConv2d(d, in_channels, bias=norm_cfg is None)
        self.norm = build_map_norm(norm_cfg, in_channels) if norm_cfg else None
        for conv in (self.theta_phi_g, self.conv_out):  # the official N(0, 0.01^2), bias 0
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.init_special()

    @property
    def scale(self) -> float:
        """The factor of the logits in the softmax modes."""
        use = self.use_scale and self.mode == 'embedded_gaussian'
        return self.inter_channels**-0.5 if use else 1.0

    def init_special(self):
        last = self.norm if self.norm is not None else self.conv_out
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def _pool(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """2x2 max pooling (ceil mode) of (N, L, ch) tokens laid out on an h x w grid."""
        if not self.sub_sample:
            return t
        grid = t.transpose(1, 2).unflatten(2, (h, w))  # (N, ch, h, w) view, channels last
        return F.max_pool2d(grid, 2, 2, ceil_mode=True).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        theta, phi, g = self.embed(x)
        num_keys = phi.shape[1]
        if self.mode in ('embedded_gaussian', 'gaussian'):
            # One head; 4-D inputs, as the ONNX exporter's SDPA requires.
            q, k, v = (t.unsqueeze(1) for t in (theta, phi, g))
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale).squeeze(1)
        elif self.mode == 'dot_product' and 2 * num_keys * h * w > self.inter_channels * (
                num_keys + h * w):
            # theta^T (phi g^T) is cheaper here; jit.trace freezes the order of its example.
            y = torch.bmm(theta, torch.bmm(phi.transpose(1, 2), g) / num_keys)
        else:
            y = torch.bmm(self.pairwise_weights(theta, phi), g)
        # W_z on the (N, d, H, W) view of the tokens: a contiguous (N, C, H, W) result.
        z = self.conv_out(y.transpose(1, 2).unflatten(2, (h, w)))
        if self.norm is not None:
            z = self.norm(z)
        return x + z

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta (N, L, d), phi and g (N, L_k, d) of ``x`` (N, C, H, W) as tokens (L = H W;
        L_k = L, or the pooled positions with ``sub_sample``); in the Gaussian mode theta and
        phi are ``x`` itself (C wide)."""
        _, _, h, w = x.shape
        d = self.inter_channels
        if self.sub_sample and self.sub_sample_at == 'input':
            pooled = F.max_pool2d(x, 2, 2, ceil_mode=True)
            keys = _tokens(self.theta_phi_g(pooled))  # (N, L_k, 3d or d)
            if self.mode == 'gaussian':  # autocast: x in g's dtype
                return _tokens(x).to(keys.dtype), _tokens(pooled).to(keys.dtype), keys
            return _tokens(self.theta_phi_g(x))[..., :d], keys[..., d:2 * d], keys[..., 2 * d:]
        emb = _tokens(self.theta_phi_g(x))  # (N, L, 3d or d)
        if self.mode == 'gaussian':
            x_emb = _tokens(x).to(emb.dtype)  # autocast: g's dtype
            return x_emb, self._pool(x_emb, h, w), self._pool(emb, h, w)
        phi_g = self._pool(emb[..., d:], h, w)
        return emb[..., :d], phi_g[..., :d], phi_g[..., d:]

    def pairwise_weights(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """The weights ``f(x_i, x_j) / C(x)`` (N, L, L_k) of the mode; ``y = weights @ g``."""
        num_keys = phi.shape[1]
        if self.mode in ('embedded_gaussian', 'gaussian'):
            return torch.bmm(theta, phi.transpose(1, 2)).mul(self.scale).softmax(-1)
        if self.mode == 'dot_product':
            return torch.bmm(theta, phi.transpose(1, 2)) / num_keys
        # concatenation: w_f^T [theta_i; phi_j] = w_f^T [theta_i; 0] + w_f^T [0; phi_j] (w_f
        # has no bias): one call of w_f on the L + L_k columns [theta_i; 0] and [0; phi_j].
        length, d = theta.shape[1], theta.shape[2]
        columns = torch.cat([F.pad(theta, (0, d)), F.pad(phi, (d, 0))], 1)  # (N, L + L_k, 2d)
        scores = self.concat_project(columns.transpose(1, 2)[..., None]).flatten(1)
        score_q, score_k = scores.split([length, num_keys], 1)
        return F.relu(score_q[:, :, None] + score_k[:, None]) / num_keys

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'centre_query' and 'mean_over_queries' (N, H_k, W_k): the pairwise weights of the
        centre query and their mean over the queries (a softmax in the (embedded) Gaussian
        modes; the forward computes it inside ``scaled_dot_product_attention``)."""
        h, w = x.shape[2:]
        theta, phi, _ = self.embed(x)
        keys = ((h + 1) // 2, (w + 1) // 2) if self.sub_sample else (h, w)
        what = 'softmax' if self.mode in ('embedded_gaussian', 'gaussian') else 'pairwise weight'
        return query_weight_maps(self.pairwise_weights(theta, phi), (h, w), keys, what)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'mode={self.mode!r}, sub_sample={self.sub_sample}, '
                f'sub_sample_at={self.sub_sample_at!r}, use_scale={self.use_scale}')


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """The (N, H W, ch) token view of an (N, ch, H, W) map."""
    return t.flatten(2).transpose(1, 2)
