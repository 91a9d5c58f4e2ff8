"""Class-specific residual attention (CSRA) classification head."""
from numbers import Real
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import ModuleList
from mmpretrain.models.heads import ClsHead, CSRAClsHead, MultiLabelClsHead
from mmpretrain.models.heads.multi_label_csra_head import CSRAModule

from ..attention.checks import check_int, check_positive_float
from ..registry import register_model

#: The temperature that stands for max pooling (T -> infinity), as in the official code.
MAX_POOLING = 99


@register_model()
class CSRAHead(CSRAClsHead):
    """Class-specific residual attention head (Zhu & Wu, ICCV 2021, arXiv:2108.02456).

    For each class i with classifier ``m_i`` and the features ``x_j`` at the ``HW`` positions,
    ``s_ij = m_i^T x_j / ||m_i||`` and the logit is
    ``y_i = mean_j s_ij + lam * sum_j softmax_j(T s_ij) s_ij``; ``T = 99`` stands for
    ``T -> inf``, i.e. ``y_i = mean_j s_ij + lam * max_j s_ij`` (the default, one head).
    Several heads (one 1x1 conv and one T each, a shared ``lam``) are summed.
    Parameters: ``heads * num_classes * C`` (no bias).

    Builds on mmpretrain's multi-label ``CSRAClsHead`` (same submodules and state-dict keys,
    so its checkpoints load) and adds the single-label use: with ``multi_label=False`` the
    loss, the targets (``gt_label`` as a class index, or ``gt_score`` from batch mixing) and
    the predictions (softmax scores, arg-max label) are those of mmpretrain's ``ClsHead``, so
    the head drops into ``ImageClassifier`` with an ordinary single-label dataset.
    ``multi_label=True`` keeps ``CSRAClsHead``'s behaviour (sigmoid BCE, ``thr``/``topk``).

    Deviations: the classifier is normalised (``/ ||m_i||``) as in the official code and
    mmpretrain; the paper's equations do not normalise. The default is one head with
    ``T = 99`` (max pooling, the paper's basic CSRA) and ``lam = 0.2``; ``num_heads`` selects
    the official temperature lists (1: [1], 2: [1, 99], 4: [1, 2, 4, 99], ...). The default
    init really is the normal init that ``CSRAClsHead`` intends (its ``init_cfg`` targets
    ``Linear`` layers, which it does not have); with the normalisation only the direction of
    ``m_i`` matters. The heads are evaluated in one batched convolution.

    Args:
        in_channels (int): Channels C of the last feature map.
        num_classes (int): Classes.
        num_heads (int, optional): Heads with the official temperatures; exclusive with
            ``temperatures``.
        lam (float): Weight lambda >= 0 of the attention term (0: average pooling).
        temperatures (Sequence[float], optional): One temperature T > 0 per head; 99 means
            max pooling. Default ``(99, )`` unless ``num_heads`` is given.
        multi_label (bool): Multi-label (sigmoid) or single-label (softmax) classification.
        loss (dict, optional): Loss config; default softmax cross-entropy (single-label) or
            sigmoid cross-entropy (multi-label).
        thr (float, optional): Multi-label only: score threshold of a positive prediction.
        topk (int | tuple[int], optional): Multi-label: the k predicted positives (when
            ``thr`` is None; neither given means ``thr=0.5``). Single-label: the top-k
            accuracies of ``cal_acc``, default ``(1, )``.
        cal_acc (bool): Single-label only: report training accuracy in the losses.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        feats: tuple whose last item is (N, C, H, W) -> logits (N, num_classes).
    """

    paper = ('Zhu & Wu, Residual Attention: A Simple but Effective Method for Multi-Label '
             'Recognition, ICCV 2021, arXiv:2108.02456')
    _abbr_ = 'csra'

    def __init__(self,
                 in_channels: int,
                 num_classes: int,
                 num_heads: Optional[int] = None,
                 lam: float = 0.2,
                 temperatures: Optional[Sequence[float]] = None,
                 multi_label: bool = False,
                 loss: Optional[dict] = None,
                 thr: Optional[float] = None,
                 topk: Union[int, Tuple[int], None] = None,
                 cal_acc: bool = False,
                 init_cfg: Optional[dict] = dict(type='Normal', layer='Conv2d', std=0.01)):
        name = 'CSRAHead'
        in_channels = check_int(name, 'in_channels', in_channels, 1)
        num_classes = check_int(name, 'num_classes', num_classes, 1)
        lam = check_positive_float(name, 'lam', lam, allow_zero=True)
        temps = _temperatures(name, num_heads, temperatures, self.temperature_settings)
        if not isinstance(multi_label, bool):
            raise ValueError(f'{name}: multi_label must be a bool, got {multi_label!r}')
        if not multi_label and thr is not None:
            raise ValueError(f'{name}: thr={thr} applies to multi_label=True only')
        if multi_label and cal_acc:
            raise ValueError(f'{name}: cal_acc=True applies to multi_label=False only')
        if loss is None:
            loss = dict(type='CrossEntropyLoss', use_sigmoid=multi_label, loss_weight=1.0)
        # CSRAClsHead.__init__ only asserts num_heads against its temperature table and builds
        # the list below; bypass it to accept any temperatures and validate with ValueError.
        MultiLabelClsHead.__init__(self, loss=loss, thr=thr if multi_label else None,
                                   topk=topk if multi_label else None, init_cfg=init_cfg)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.lam = lam
        self.multi_label = multi_label
        self.temp_list = list(temps)
        self.csra_heads = ModuleList(
            [CSRAModule(num_classes, in_channels, t, lam) for t in self.temp_list])
        if not multi_label:  # attributes of ClsHead's loss and accuracy
            self.thr = None
            self.topk = (1, ) if topk is None else topk
            self.cal_acc = cal_acc
        is_max = [t == MAX_POOLING for t in self.temp_list]
        self._all_max, self._any_max = all(is_max), any(is_max)
        soft = [0. if m else t for m, t in zip(is_max, self.temp_list)]
        self.register_buffer('_soft_temps', torch.tensor(soft).view(-1, 1, 1), persistent=False)
        self.register_buffer('_is_max', torch.tensor(is_max).view(-1, 1), persistent=False)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, num_classes)``: the sum over the heads."""
        x = self.pre_logits(feats)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'CSRAHead expects (N, {self.in_channels}, H, W) features, got '
                             f'shape {tuple(x.shape)} (it pools the map itself: use no neck)')
        return self.head_scores(x).sum(1)

    def head_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head logits ``(N, heads, num_classes)`` of the feature map ``x``."""
        weights = [h.head.weight for h in self.csra_heads]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights)  # (M K, C, 1, 1)
        weight = weight / weight.norm(dim=1, keepdim=True)
        n, m = x.shape[0], len(self.csra_heads)
        score = F.conv2d(x, weight.to(x.dtype)).reshape(n, m, self.num_classes, -1)
        base = score.mean(-1)
        if self._all_max:
            att = score.amax(-1)
        else:
            att = (score * torch.softmax(score * self._soft_temps, -1)).sum(-1)
            if self._any_max:
                att = torch.where(self._is_max, score.amax(-1), att)
        return base + self.lam * att

    def _get_loss(self, cls_score: torch.Tensor, data_samples, **kwargs) -> dict:
        if self.multi_label:
            return MultiLabelClsHead._get_loss(self, cls_score, data_samples, **kwargs)
        return ClsHead._get_loss(self, cls_score, data_samples, **kwargs)

    def _get_predictions(self, cls_score: torch.Tensor, data_samples):
        if self.multi_label:
            return MultiLabelClsHead._get_predictions(self, cls_score, data_samples)
        return ClsHead._get_predictions(self, cls_score, data_samples)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_classes={self.num_classes}, '
                f'temperatures={self.temp_list}, lam={self.lam}, multi_label={self.multi_label}')


def _temperatures(name, num_heads, temperatures, settings):
    """The temperature of each head, from ``temperatures`` or the official ``num_heads`` table."""
    if temperatures is None:
        if num_heads is None:
            return (MAX_POOLING, )
        num_heads = check_int(name, 'num_heads', num_heads, 1)
        if num_heads not in settings:
            raise ValueError(f'{name}: num_heads must be one of {tuple(settings)} (the official '
                             f'temperature lists), got {num_heads}; or give temperatures')
        return tuple(settings[num_heads])
    if isinstance(temperatures, (str, Real)) or not isinstance(temperatures, Sequence) or \
            len(temperatures) == 0:
        raise ValueError(f'{name}: temperatures must be a non-empty sequence, got '
                         f'{temperatures!r}')
    temps = tuple(check_positive_float(name, 'temperatures', t) for t in temperatures)
    if num_heads is not None and num_heads != len(temps):
        raise ValueError(f'{name}: num_heads={num_heads} does not match '
                         f'{len(temps)} temperatures {temps}')
    return temps
