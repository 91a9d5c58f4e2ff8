"""Parameters and FLOPs of a module, or of a config's model with and without its attention.

FLOPs are mmengine's count (:class:`mmengine.analysis.FlopAnalyzer`, as in the OpenMMLab
``get_flops`` tools; fvcore's convention): one multiply-add is one FLOP, for convolutions,
linear layers and matrix products; norms, adaptive average pooling, upsampling and
``grid_sample`` per element. Other element-wise work (the gates' sigmoids and products,
``mean``, max pools, ``softmax``...) is not counted, so a module made only of it (SimAM)
counts 0; ``elementwise=True`` counts it too (:mod:`.elementwise_flops` states the rule).
Two matrix products that mmengine 0.10 does not count are added (:data:`EXTRA_FLOP_OPS`):
``baddbmm`` and ``scaled_dot_product_attention`` (``Q K^T`` and ``A V``); without them a
non-local block written with them would count a fraction of the same block written with
``matmul``.
"""
import copy
import math
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config
from mmengine.model import BaseModel, revert_sync_batchnorm

from ..attention.base import AttentionModule
from ..attention.catalog import attention_classes
from ..config import build_model, load_config
from .elementwise_flops import ELEMENTWISE_FLOP_OPS

INSERT_TYPES = ('InsertAttention', 'cvattn_mm.InsertAttention')


def baddbmm_flop_jit(inputs, outputs) -> int:
    """``baddbmm(input, b1, b2)``: the ``(n, c, t) @ (n, t, d)`` product, ``n c t d``."""
    n, c, t = get_shape(inputs[1])
    return n * c * t * get_shape(inputs[2])[-1]


def sdpa_flop_jit(inputs, outputs) -> int:
    """``scaled_dot_product_attention(q, k, v)``: ``Q K^T`` and ``A V``,
    ``batch L S (E + E_v)`` for q ``(..., L, E)``, k ``(..., S, E)``, v ``(..., S, E_v)``."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


#: Handles of the matrix products that mmengine's FlopAnalyzer does not count.
EXTRA_FLOP_OPS = {'aten::baddbmm': baddbmm_flop_jit,
                  'aten::scaled_dot_product_attention': sdpa_flop_jit}


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, inputs: Union[torch.Tensor, Tuple],
                elementwise: bool = False) -> int:
    """mmengine's FLOP count of one forward pass of ``module`` in eval mode.

    Args:
        module: Any module; traced with ``torch.jit``.
        inputs: The input tensor, or a tuple of the forward's arguments.
        elementwise: Count the element-wise work too (:mod:`.elementwise_flops`).
    """
    return flops_by_module(module, inputs, elementwise=elementwise)['']


def flops_by_module(module: nn.Module, inputs: Union[torch.Tensor, Tuple],
                    names: Sequence[str] = (), elementwise: bool = False) -> Dict[str, int]:
    """FLOP counts of one forward pass of ``module`` in eval mode: the total (key ``''``)
    and that of each submodule in ``names`` (paths in ``module``); with ``elementwise``,
    the element-wise work counted too."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs, )
    training = module.training
    module.eval()  # not chained: mmpretrain's and mmdet's ResNet.train() return None
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(module, inputs)
            analyzer.set_op_handle(**EXTRA_FLOP_OPS)
            if elementwise:
                analyzer.set_op_handle(**ELEMENTWISE_FLOP_OPS)
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            return {name: int(analyzer.total(name)) for name in ('', *names)}
    finally:
        module.train(training)


def is_our_attention(type_name) -> bool:
    """Whether a config ``type`` (a name or a class) is an attention module of cvattn_mm."""
    if isinstance(type_name, type):
        return issubclass(type_name, AttentionModule)
    if not isinstance(type_name, str):
        return False
    return type_name.removeprefix('cvattn_mm.') in attention_classes()


def strip_attention(cfg):
    """A copy of a model config without the attention of cvattn_mm.

    ``InsertAttention`` wrappers are replaced by the model they wrap, and ``plugins``
    entries whose ``cfg.type`` is one of our attention modules are removed (the key itself
    when none is left); other plugins stay.
    """
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(strip_attention(c) for c in cfg)
    if not isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    if cfg.get('type') in INSERT_TYPES:
        return strip_attention(cfg['module'])
    out = {}
    for key, value in cfg.items():
        if key == 'plugins' and isinstance(value, (list, tuple)):
            value = [p for p in value if not (isinstance(p, dict)
                                              and is_our_attention(p.get('cfg', {}).get('type')))]
            if not value:
                continue
        out[key] = strip_attention(value)
    return type(cfg)(out)


class TensorForward(nn.Module):
    """``model`` seen as ``inputs -> tensors``: OpenMMLab models in ``mode='tensor'``.

    Detectors get one data sample per image with the image's shape as meta information
    (their RPN needs it, as in mmdet's ``get_flops``); other models get none.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor):
        if not isinstance(self.model, BaseModel):
            return self.model(inputs)
        return self.model(inputs, _data_samples(self.model, inputs), mode='tensor')


def _data_samples(model: nn.Module, inputs: torch.Tensor):
    try:
        from mmdet.models.detectors import BaseDetector
        from mmdet.structures import DetDataSample
    except ImportError:
        return None
    if not isinstance(model, BaseDetector):
        return None
    shape = tuple(inputs.shape[2:])
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(inputs.shape[0])]


def config_complexity(cfg: Union[str, Config], shape: Sequence[int] = (224, 224),
                      elementwise: bool = False) -> dict:
    """Params and FLOPs of a config's model, and what its attention adds.

    The baseline is the same config's model with the attention stripped
    (:func:`strip_attention`). Both are counted in total and per part (the model's direct
    children: backbone, neck, heads). Both models have random weights: a part whose work
    depends on its input (the RPN keeps the proposals that survive NMS) may count
    differently although the attention is elsewhere.

    Args:
        cfg: A config or a config file.
        shape: Input (H, W); the input is one random 3-channel image.
        elementwise: Count the element-wise work too (:mod:`.elementwise_flops`).

    Returns:
        dict: ``shape``; ``params``, ``flops``, ``base_params``, ``base_flops``,
        ``added_params``, ``added_flops`` for the whole model; ``parts``: the same per
        part name (parts without parameters and FLOPs left out); ``elementwise``;
        ``attention_modules``
        (count of our attention modules in the model) and ``attention_params`` (theirs).
    """
    cfg = load_config(cfg)
    inputs = torch.rand(1, 3, *shape)
    # SyncBN (mmseg's configs) reverted to BN: counted without a process group
    model, base = (revert_sync_batchnorm(build_model(cfg, model_cfg=model_cfg))
                   for model_cfg in (None, strip_attention(cfg.model)))
    parts = [name for name, _ in model.named_children()]
    counts = [_counts(m, inputs, parts, elementwise) for m in (model, base)]
    result = dict(shape=list(shape), elementwise=elementwise,
                  **_complexity(*counts[0][''], *counts[1]['']))
    result['parts'] = {p: _complexity(*counts[0][p], *counts[1].get(p, (0, 0)))
                       for p in parts if any(counts[0][p] + counts[1].get(p, (0, 0)))}
    attentions = [m for m in model.modules() if isinstance(m, AttentionModule)]
    result.update(attention_modules=len(attentions),
                  attention_params=sum(count_params(m) for m in attentions))
    return result


def _counts(model: nn.Module, inputs: torch.Tensor, parts: Sequence[str],
            elementwise: bool) -> dict:
    """``{'': (params, flops), part: (params, flops), ...}`` of ``model`` and those of
    ``parts`` that are its children."""
    children = dict(model.named_children())
    parts = [p for p in parts if p in children]
    flops = flops_by_module(TensorForward(model), inputs, [f'model.{p}' for p in parts],
                            elementwise)
    counts = {p: (count_params(children[p]), flops[f'model.{p}']) for p in parts}
    counts[''] = (count_params(model), flops[''])
    return counts


def _complexity(params: int, flops: int, base_params: int, base_flops: int) -> dict:
    return dict(params=params, flops=flops, base_params=base_params, base_flops=base_flops,
                added_params=params - base_params, added_flops=flops - base_flops)
