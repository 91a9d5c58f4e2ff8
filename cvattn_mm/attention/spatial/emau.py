"""Expectation-maximisation attention unit (EMANet)."""
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int, check_positive_float
from ..map_norm import build_map_norm
from ..maps import AttentionMap, weights_map
from ..pointwise import PointwiseConv2d

Tensor = torch.Tensor


@register_model()
class EMAU(AttentionModule):
    """Expectation-maximisation attention unit, EMAU (Li et al., Expectation-Maximization
    Attention Networks for Semantic Segmentation, ICCV 2019, arXiv:1907.13426).

    ``u = conv1(x)`` (1x1, C -> C, biased) as (N, C, S), S = H W; bases ``mu_0`` (1, C, K),
    a buffer, repeated over the batch. T times (E step, then M step):
    ``z = softmax_K(u^T mu)`` (N, S, K); ``z~ = z / (eps + sum_S z)``; ``mu = u z~``;
    ``mu = mu / (eps + ||mu||_2 over C)``. Reconstruction from the last ``z`` and ``mu``:
    ``r = ReLU(mu z^T)`` (N, C, H, W); ``out = ReLU(x + BN(conv2(r)))`` with ``conv2`` a 1x1
    conv C -> C without bias. The EM iterations and the reconstruction run in
    ``promote_types(dtype, float32)`` with autocast off.
    Parameters: ``2 C^2 + C`` (convs) ``+ 2C`` (BN) ``= 2 C^2 + 3 C``; the bases are a
    buffer of ``C K`` values (not parameters).
    Paper position: in the segmentation head (3x3 conv 2048 -> 512, BN, ReLU, EMAU, 3x3 conv);
    as a backbone plug-in ``late_stages``.

    Bases maintenance (the moving average): in training, after the forward,
    ``mu_0 <- (1 - momentum) mu_0 + momentum mean_N(mu_T)`` (official ``train.py``:
    ``EM_MOM = 0.9`` kept, i.e. ``momentum = 0.1``), the batch mean taken over all processes
    when ``torch.distributed`` is initialised (mmseg's all-reduce; the official
    ``DataParallel`` gathers ``mu_T`` of the whole batch on one device: the same mean for equal
    per-process batches). ``renormalize_bases=True`` l2-normalises the mean over C before the
    average (mmseg's ``EMAModule``); the official code does not. The bases never change in eval
    mode, nor while tracing (``torch.jit.trace``, ONNX export: a traced graph holds no state
    update, use the model in eval mode to export). Under ``torch.compile`` in training the
    update is part of the compiled graph (same values as eager); in eval there is none.

    Gradients: the official code runs all T EM steps under ``torch.no_grad()``, so ``r`` is a
    constant for autograd: no gradient reaches ``conv1`` or, through the attention, the input
    (``conv1`` is trainable but never changes; mmseg freezes its ``ema_mid_conv``). That is
    ``em_grad='none'``. The default ``em_grad='last'`` runs the first T - 1 steps without
    gradient and the last E and M steps with it (from the detached ``mu_{T-1}``; the
    one-step gradient of unrolled iterations), so ``conv1`` learns; forward values are the
    same in both modes.

    Initialisation at construction as the official code: 1x1 conv weights from
    ``N(0, 2 / C)``, ``conv1``'s bias PyTorch's default, BN weight 1 and bias 0, bases from
    ``N(0, 2 / K)`` then l2-normalised over C (with the module's ``eps``).

    Deviations: ``em_grad='last'`` by default (gradients through the last EM step; the official
    code has none: ``em_grad='none'``). The moving average happens inside ``forward`` (the
    official code does it in its train loop; a plug-in has no train loop) and uses a
    cross-process mean (see above). State-dict keys are ``conv1``, ``conv2``, ``norm``,
    ``bases`` (official: ``conv1``, ``conv2.0``, ``conv2.1``, ``mu``). eps: official adds
    ``1e-6`` to the norms (``eps_mode='add'``, the default); mmseg divides by
    ``max(norm, 1e-12)`` (``eps=1e-12, eps_mode='clamp'``). The final ReLU makes the unit a
    non-identity on signed inputs even when the BN output is 0 (as in the official code).

    Args:
        in_channels (int): Channels C.
        num_bases (int): Bases K (official 64).
        num_stages (int): EM iterations T (official 3).
        momentum (float): Weight of the new bases in the moving average, in (0, 1]
            (official 0.1).
        eps (float): Stabiliser of the l1 and l2 normalisations (official 1e-6).
        eps_mode (str): ``'add'`` (``t / (eps + ||t||)``, official) or ``'clamp'``
            (``t / max(||t||, eps)``, mmseg).
        renormalize_bases (bool): l2-normalise the batch mean of the bases before the moving
            average (mmseg); official False.
        em_grad (str): ``'last'`` (gradient through the last EM step) or ``'none'``
            (official: no gradient through the EM attention).
        norm_cfg (dict, optional): Norm after ``conv2`` (official BN); ``None`` for none
            (``conv2`` then gets a bias).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Li et al., Expectation-Maximization Attention Networks for Semantic '
             'Segmentation, ICCV 2019, arXiv:1907.13426')
    paper_position = 'late_stages'
    _abbr_ = 'emau'

    def __init__(self,
                 in_channels: int,
                 num_bases: int = 64,
                 num_stages: int = 3,
                 momentum: float = 0.1,
                 eps: float = 1e-6,
                 eps_mode: str = 'add',
                 renormalize_bases: bool = False,
                 em_grad: str = 'last',
                 norm_cfg: dict | None = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.num_bases = check_int(owner, 'num_bases', num_bases, 1)
        self.num_stages = check_int(owner, 'num_stages', num_stages, 1)
        self.momentum = check_positive_float(owner, 'momentum', momentum)
        if self.momentum > 1:
            raise ValueError(f'{owner}: momentum must be in (0, 1], got {momentum}')
        self.eps = check_positive_float(owner, 'eps', eps)
        self.eps_mode = check_choice(owner, 'eps_mode', eps_mode, ('add', 'clamp'))
        if not isinstance(renormalize_bases, bool):
            raise ValueError(f'{owner}: renormalize_bases must be a bool, got '
                             f'{renormalize_bases!r}')
        self.renormalize_bases = renormalize_bases
        self.em_grad = check_choice(owner, 'em_grad', em_grad, ('last', 'none'))
        self.conv1 = PointwiseConv2d(in_channels, in_channels)
        self.conv2 = PointwiseConv2d(in_channels, in_channels, bias=norm_cfg is None)
        self.norm = build_map_norm(norm_cfg, in_channels) if norm_cfg else None
        self.register_buffer('bases', torch.empty(1, in_channels, self.num_bases))
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: conv weights ``N(0, 2 / C)`` (fan-out), norm weight 1
        and bias 0, bases ``N(0, 2 / K)`` l2-normalised over C."""
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                nn.init.normal_(conv.weight, 0, (2.0 / conv.out_channels) ** 0.5)
            if self.norm is not None and getattr(self.norm, 'weight', None) is not None:
                nn.init.ones_(self.norm.weight)
                nn.init.zeros_(self.norm.bias)
            bases = torch.randn(self.bases.shape) * (2.0 / self.num_bases) ** 0.5
            self.bases.copy_(self.l2_normalize(bases, 1))

    def l2_normalize(self, t: Tensor, dim: int) -> Tensor:
        """``t`` divided by its l2 norm over ``dim``, stabilised by ``eps`` as ``eps_mode``
        says."""
        norm = t.norm(dim=dim, keepdim=True)
        return t / (norm + self.eps if self.eps_mode == 'add' else norm.clamp_min(self.eps))

    def l1_normalize(self, t: Tensor, dim: int) -> Tensor:
        """Non-negative ``t`` divided by its sum over ``dim`` (``eps`` as ``eps_mode``)."""
        total = t.sum(dim=dim, keepdim=True)
        return t / (total + self.eps if self.eps_mode == 'add' else total.clamp_min(self.eps))

    def embed(self, x: Tensor) -> Tensor:
        """``u = conv1(x)`` as (N, C, S) in ``promote_types(dtype, float32)``."""
        u = self.conv1(x).flatten(2)
        return u.to(torch.promote_types(u.dtype, torch.float32))

    def em_step(self, u: Tensor, mu: Tensor) -> Tuple[Tensor, Tensor]:
        """One E step and one M step: the responsibilities ``z`` (N, S, K) of the bases ``mu``
        (N, C, K) for the features ``u`` (N, C, S), and the new bases."""
        z = torch.bmm(u.transpose(1, 2), mu).softmax(dim=2)
        mu = self.l2_normalize(torch.bmm(u, self.l1_normalize(z, 1)), 1)
        return z, mu

    def em(self, u: Tensor) -> Tuple[Tensor, Tensor]:
        """The T EM iterations from the bases buffer: the last bases ``mu_T`` (N, C, K) and the
        last responsibilities ``z_T`` (N, S, K) (computed from ``mu_{T-1}``)."""
        # a copy: autograd may save it, and the training update changes the buffer in place
        mu = self.bases.to(u.dtype, copy=True).expand(u.shape[0], -1, -1)
        with_grad = self.em_grad == 'last' and torch.is_grad_enabled()
        with torch.autocast(u.device.type, enabled=False):
            with torch.no_grad():
                for _ in range(self.num_stages - with_grad):
                    z, mu = self.em_step(u, mu)
            if with_grad:
                z, mu = self.em_step(u, mu)
        return mu, z

    def reconstruct(self, mu: Tensor, z: Tensor, shape: Tuple[int, ...]) -> Tensor:
        """``r = ReLU(mu z^T)`` as (N, C, H, W) (autocast off); ``shape`` is the input's."""
        with torch.autocast(mu.device.type, enabled=False):
            return torch.bmm(mu, z.transpose(1, 2)).reshape(shape).relu()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        mu, z = self.em(self.embed(x))
        y = self.conv2(self.reconstruct(mu, z, x.shape).to(x.dtype))
        if self.norm is not None:
            y = self.norm(y)
        if self.training and not torch.jit.is_tracing():
            self.update_bases(mu)
        return torch.add(x, y).relu_()

    def update_bases(self, mu: Tensor) -> None:
        """The moving average of the bases buffer with the batch's last bases ``mu`` (N, C, K),
        averaged over the batch and over the processes."""
        with torch.no_grad():
            mean = mu.detach().mean(0, keepdim=True)
            if dist.is_available() and dist.is_initialized():
                mean = mean / dist.get_world_size()
                dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            if self.renormalize_bases:
                mean = self.l2_normalize(mean, 1)
            self.bases.mul_(1 - self.momentum).add_(mean.to(self.bases.dtype),
                                                    alpha=self.momentum)

    def attention_maps(self, x: Tensor) -> Dict[str, AttentionMap]:
        """'main_basis_weights' (N, H, W): the M-step weights over the positions
        ``z_k / sum_S z_k`` of the basis ``k`` with the largest total responsibility
        ``sum_S z_k`` in each sample (what the most used basis averages; sums to 1)."""
        _, z = self.em(self.embed(x))
        mass = z.sum(1)  # (N, K)
        main = mass.argmax(1)  # (N,)
        weights = z.gather(2, main[:, None, None].expand(-1, z.shape[1], 1))[:, :, 0]
        weights = weights / mass.gather(1, main[:, None])
        return {'main_basis_weights': weights_map(weights, x.shape[2:],
                                                  'M-step weights of the most used basis')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_bases={self.num_bases}, '
                f'num_stages={self.num_stages}, momentum={self.momentum}, eps={self.eps}, '
                f'eps_mode={self.eps_mode!r}, renormalize_bases={self.renormalize_bases}, '
                f'em_grad={self.em_grad!r}')
