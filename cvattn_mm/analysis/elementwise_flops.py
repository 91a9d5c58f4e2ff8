"""FLOP handles of element-wise work, which mmengine's FlopAnalyzer does not count.

mmengine's default count (fvcore's convention) is one FLOP per multiply-add of convolutions,
linear layers and matrix products, plus norms (batch norm in eval: 1 per element, 2 with an
affine; other norms 5), adaptive average pooling (1 per input element) and upsampling. A
module made of gates, pools and arithmetic on the feature map (SimAM) counts 0 there.

With :data:`ELEMENTWISE_FLOP_OPS` added, the element-wise work is counted by one rule:

- an element-wise op (``add``, ``sub``, ``mul``, ``div``, ``pow``, ``sqrt``, ``exp``, an
  activation such as ``relu`` or ``sigmoid``, ...): 1 FLOP per output element (``addcmul``,
  ``addcdiv``, ``lerp``: 2);
- a reduction (``mean``, ``sum``, ``amax``, ``var``, ...) and an adaptive max pool: 1 FLOP per
  input element;
- a windowed pool (``max_pool2d``, ``avg_pool2d``): 1 FLOP per window element of each output
  (a window computed from the input's size is taken as non-overlapping, ``ceil(in / out)``);
- ``softmax`` / ``log_softmax``: an exp, a sum and a division per element, 3 FLOPs per element.

Ops on non-tensor values (sizes) count 0; copies, views, padding and indexing count 0.
"""
import math
from typing import Any, List

from mmengine.analysis.jit_handles import get_shape

#: One line for reports: what the default count includes.
DEFAULT_CONVENTION = ('FLOPs: multiply-adds of convs, linears and matmuls, plus norms and '
                      'adaptive average pools (mmengine/fvcore convention); other element-wise '
                      'work (gates, products, means, max pools, softmax) not counted: use '
                      '--elementwise')
#: One line for reports: what the count with :data:`ELEMENTWISE_FLOP_OPS` adds.
ELEMENTWISE_CONVENTION = ('FLOPs: multiply-adds of convs, linears and matmuls, norms and '
                          'adaptive average pools (mmengine/fvcore convention), plus element-wise '
                          'work: 1 per output element of an element-wise op, 1 per input element '
                          'of a reduction, 1 per window element of a pool, 3 per softmax element')

_POINTWISE = ('add', 'sub', 'rsub', 'mul', 'div', 'neg', 'reciprocal', 'pow', 'square', 'sqrt',
              'rsqrt', 'exp', 'log', 'log1p', 'abs', 'sign', 'clamp', 'clamp_min', 'clamp_max',
              'minimum', 'maximum', 'where', 'sigmoid', 'hardsigmoid', 'tanh', 'relu', 'relu6',
              'leaky_relu', 'elu', 'gelu', 'silu', 'hardswish', 'hardtanh', 'softplus', 'mish',
              'erf')
_FUSED_PAIRS = ('addcmul', 'addcdiv', 'lerp')  # two element-wise ops in one
_REDUCTIONS = ('mean', 'sum', 'amax', 'amin', 'max', 'min', 'prod', 'var', 'std', 'norm',
               'linalg_vector_norm', 'logsumexp', 'adaptive_max_pool1d', 'adaptive_max_pool2d',
               'adaptive_max_pool3d')
_POOLS = ('max_pool1d', 'max_pool2d', 'max_pool3d', 'avg_pool1d', 'avg_pool2d', 'avg_pool3d')


def _numel(value) -> int:
    """Elements of a traced value; 0 for a non-tensor (a size, a scalar)."""
    shape = get_shape(value)
    return math.prod(shape) if shape is not None else 0


def pointwise_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """1 FLOP per output element."""
    return _numel(outputs[0])


def reduction_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """1 FLOP per input element."""
    return _numel(inputs[0])


def _kernel(inputs: List[Any], outputs: List[Any]) -> List[int]:
    """The window of a traced pool: its constant ``kernel_size`` (``inputs[1]``), else (a
    size computed from the input) that of non-overlapping windows, ``ceil(in / out)``."""
    value = inputs[1]
    kernel = value.toIValue()
    if kernel is None:
        kernel = [item.toIValue() for item in value.node().inputs()]
    spatial_in, spatial_out = (get_shape(v)[2:] for v in (inputs[0], outputs[0]))
    if len(kernel) == 1:  # one size for every spatial dimension
        kernel = list(kernel) * len(spatial_out)
    return [k if k is not None else -(-i // o)
            for k, i, o in zip(kernel, spatial_in, spatial_out)]


def pool_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """1 FLOP per window element of each output element."""
    return _numel(outputs[0]) * math.prod(_kernel(inputs, outputs))


def fused_pair_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """2 FLOPs per output element (``addcmul``: a product and a sum)."""
    return 2 * _numel(outputs[0])


def softmax_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """3 FLOPs per element: an exp, a sum and a division."""
    return 3 * _numel(outputs[0])


#: Handles of the element-wise ops, by jit op name (in-place variants included); None marks
#: a copy or view that counts 0.
ELEMENTWISE_FLOP_OPS = {
    **{f'aten::{name}{suffix}': pointwise_flop_jit for name in _POINTWISE for suffix in ('', '_')},
    **{f'aten::{name}{suffix}': fused_pair_flop_jit
       for name in _FUSED_PAIRS for suffix in ('', '_')},
    **{f'aten::{name}': reduction_flop_jit for name in _REDUCTIONS},
    **{f'aten::{name}': pool_flop_jit for name in _POOLS},
    'aten::softmax': softmax_flop_jit,
    'aten::_softmax': softmax_flop_jit,
    'aten::log_softmax': softmax_flop_jit,
    **{f'aten::{name}': None for name in ('pad', 'meshgrid', 'numel', 'unflatten', 'movedim')},
}
