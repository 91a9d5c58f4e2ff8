"""Non-local block."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, reduced_channels

MODES = ('embedded_gaussian', 'dot_product', 'gaussian', 'concatenation')



@register_model()
class NonLocalBlock(AttentionModule):
    """Non-local block (Wang et al., CVPR 2018, arXiv:1711.07971), the paper's residual block.

    ``z_i = x_i + BN(W_z y_i)``, ``y_i = sum_j f(x_i, x_j) g(x_j) / C(x)`` with
    ``theta, phi, g`` biased 1x1 convs ``C -> C/r`` and, per ``mode``:

    * ``'embedded_gaussian'``: ``softmax_j(theta_i^T phi_j)`` (no ``1/sqrt(d)`` scale);
    * ``'dot_product'``: ``theta_i^T phi_j / N_k``;
    * ``'gaussian'``: ``softmax_j(x_i^T x_j)`` (no theta, phi);
    * ``'concatenation'``: ``ReLU(w_f^T [theta_i; phi_j]) / N_k``.

    ``N_k`` counts the key positions (after sub-sampling). ``W_z`` is a 1x1 conv ``C/r -> C``
    whose norm is zero-initialised (its weight and bias), so the block starts as the identity.
    Parameters (d = C/r, norm = 2C for BN): embedded Gaussian and dot product
    ``3 (C d + d) + d C + norm``; Gaussian ``(C d + d) + d C + norm``; concatenation adds
    ``2 d``. Without a norm, ``W_z`` has a bias (``+ C``) and is zero-initialised instead.

    Deviations: ``sub_sample`` max-pools phi and g by 2x2 with ``ceil_mode=True``, so odd
    and 1x1 maps work (the last row/column is pooled alone instead of dropped; the paper uses
    even maps). Dot product uses ``(theta^T phi) g = theta^T (phi g^T)`` whichever order is
    cheaper for the input size (same math). theta, phi and g are one conv ``theta_phi_g``
    (same parameters as three; state-dict keys differ from mmcv's ``NonLocal2d``).
    ``init_weights`` redoes the zero-initialisation after ``init_cfg`` unless it loads a
    checkpoint.

    Args:
        in_channels (int): Channels C.
        reduction (int): Divisor r of the embedding width ``d = max(C // r, min_channels)``.
        min_channels (int): Floor of d.
        mode (str): Pairwise function, one of ``MODES``.
        sub_sample (bool): Max-pool phi and g by 2x2 (fewer key positions).
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
                 norm_cfg: dict | None = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.mode = check_choice('NonLocalBlock', 'mode', mode, MODES)
        self.sub_sample = bool(sub_sample)
        self.reduction = reduction
        d = reduced_channels('NonLocalBlock', in_channels, reduction, min_channels)
        self.inter_channels = d
        # theta, phi and g in one conv (channels [theta | phi | g]); g only for Gaussian.
        self.theta_phi_g = nn.Conv2d(in_channels, d if mode == 'gaussian' else 3 * d, 1)
        if mode == 'concatenation':
            # w_f of the paper: a 1x1 conv 2d -> 1 (no bias) on [theta_i; phi_j].
            self.concat_project = nn.Conv2d(2 * d, 1, 1, bias=False)
        self.conv_out = nn.Conv2d(d, in_channels, 1, bias=norm_cfg is None)
        self.norm = build_norm_layer(norm_cfg, in_channels)[1] if norm_cfg else None
        self.init_special()

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
        d = self.inter_channels
        # Everything runs on (N, L, ch) tokens: the 1x1 convs are batched GEMMs on the
        # transposed view of x (no copy), and SDPA gets row-contiguous q, k, v.
        tokens = x.flatten(2).transpose(1, 2)
        weight = self.theta_phi_g.weight.flatten(1)
        emb = torch.baddbmm(self.theta_phi_g.bias, tokens, weight.t().expand(n, -1, -1))
        if self.mode == 'gaussian':
            x_emb = tokens.to(emb.dtype)  # autocast: match g's dtype for the attention
            theta, phi, g = x_emb, self._pool(x_emb, h, w), self._pool(emb, h, w)
        else:
            theta, phi_g = emb[..., :d], self._pool(emb[..., d:], h, w)
            phi, g = phi_g[..., :d], phi_g[..., d:]
        num_keys = phi.shape[1]
        if self.mode in ('embedded_gaussian', 'gaussian'):
            # One head; 4-D inputs, as the ONNX exporter's SDPA requires.
            q, k, v = (t.unsqueeze(1) for t in (theta, phi, g))
            y = F.scaled_dot_product_attention(q, k, v, scale=1.0).squeeze(1)
        elif self.mode == 'dot_product':
            # Same math either way; jit.trace freezes the order chosen for its example.
            if 2 * num_keys * h * w <= d * (num_keys + h * w):
                y = torch.bmm(torch.bmm(theta, phi.transpose(1, 2)), g) / num_keys
            else:
                y = torch.bmm(theta, torch.bmm(phi.transpose(1, 2), g) / num_keys)
        else:  # concatenation: w_f^T [theta_i; phi_j] = w_theta^T theta_i + w_phi^T phi_j
            w_theta, w_phi = self.concat_project.weight.view(2, d, 1).unbind(0)
            score_q = torch.matmul(theta, w_theta)  # (N, Lq, 1)
            score_k = torch.matmul(phi, w_phi).transpose(1, 2)  # (N, 1, Lk)
            y = torch.bmm(F.relu(score_q + score_k) / num_keys, g)
        # W_z back to NCHW: (C, d) @ (N, d, L) -> contiguous (N, C, L).
        w_z = self.conv_out.weight.flatten(1).expand(n, -1, -1)
        if self.conv_out.bias is None:
            z = torch.bmm(w_z, y.transpose(1, 2))
        else:
            z = torch.baddbmm(self.conv_out.bias[:, None], w_z, y.transpose(1, 2))
        z = z.view(n, c, h, w)
        if self.norm is not None:
            z = self.norm(z)
        return x + z

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'mode={self.mode!r}, sub_sample={self.sub_sample}')
