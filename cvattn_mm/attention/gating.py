"""Gates computed from pooled descriptors (means, maxima), multiplied back onto the input.

``y = x * gate(mean_{H,W} x)`` is SE's and ECA's form (CBAM's gates pool the mean and the
max, over the positions or over the channels; Triplet Attention sums three gates pooled over
C, H and W); ``y = x * a_h * a_w`` with
``(a_h, a_w) = gates(mean_W x, mean_H x)`` is Coordinate Attention's (and SCSA's SMSA);
``y = sum_i a_i F_i`` with ``a = select(mean_{H,W} sum_i F_i)`` is SK's. Autograd runs the
backward of such a block as five or more passes over tensors of the size of ``x``:
the product's two gradients (each written, one of them summed), the pooling's gradient
(expanded and divided, so written) and the sum of the two gradients of ``x``. The
functions below compute the same values with a hand-written backward that writes one
tensor of the size of ``x`` and reads ``x`` and the incoming gradient once or twice, which
makes the block's forward+backward 1.1-3x faster on CPU (README, benchmark). Only the gate
network (a function of the pooled descriptors) is differentiated by autograd, so any
activation, norm or convolution can be used in it.

Each function takes the gate network as a callable and the module(s) whose layers it calls
(their parameters receive their gradients through the Function). The plain ops run when no
gradient is needed, when the fast path is switched off, and under ``torch.jit`` tracing or
``torch.compile`` (which fuse the plain ops themselves); the values are the same
(:mod:`.fast_backward` gives the rules and the switch). Not twice differentiable.
"""
from typing import Callable, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from .fast_backward import Modules, amp_backward, amp_forward, fast_backward_params

Tensor = torch.Tensor


def pooled_gate(x: Tensor, gate_fn: Callable[..., Tensor], modules: Modules,
                dims: Tuple[int, ...] = (2, 3), pools: Tuple[str, ...] = ('mean',)) -> Tensor:
    """``x * gate_fn(*descriptors)``, each descriptor a pool of ``x`` over ``dims``.

    Args:
        x (Tensor): (N, C, H, W) input.
        gate_fn (callable): Maps the descriptors (``keepdim`` pools of ``x``: (N, C, 1, 1)
            over the positions, ``dims=(2, 3)``; (N, 1, H, W) over the channels, ``dims=(1,)``)
            to a gate of the same shape.
        modules (Module | sequence of Module): The modules whose layers ``gate_fn`` calls
            (their parameters receive their gradients through this function).
        dims (tuple): The pooled axes: ``(2, 3)``, ``(1,)``, ``(2,)`` or ``(3,)``.
        pools (tuple): ``'mean'`` and / or ``'max'``, in the order of ``gate_fn``'s arguments.
            The gradient of a max goes to one maximal element (as with ``max_pool2d``);
            autograd's ``amax`` splits it between ties.

    Returns:
        Tensor: (N, C, H, W), in the memory format of ``x``.
    """
    return pooled_gates_sum(x, lambda *descriptors: (gate_fn(*descriptors),), modules,
                            (dims,), pools)


def pooled_gates_sum(x: Tensor, gates_fn: Callable[..., Tuple[Tensor, ...]],
                     modules: Modules, dims: Tuple[Tuple[int, ...], ...],
                     pools: Tuple[str, ...] = ('mean',)) -> Tensor:
    """``x * sum_k a_k`` with ``(a_1, ...) = gates_fn(*descriptors)``: gate k is computed from
    the ``pools`` of ``x`` over ``dims[k]`` and has their shape (Triplet Attention's form).

    Args:
        x (Tensor): (N, C, H, W) input.
        gates_fn (callable): Maps the descriptors, gate by gate and within a gate in the
            order of ``pools``, to the gates.
        modules (Module | sequence of Module): The modules whose layers ``gates_fn`` calls.
        dims (tuple of tuples): The pooled axes of each gate (see :func:`pooled_gate`).
        pools (tuple): ``'mean'`` and / or ``'max'``, the same for every gate.

    Returns:
        Tensor: (N, C, H, W), in the memory format of ``x``.
    """
    for d in dims:
        if d not in _MAX_POOLS:
            raise ValueError(f'pooled_gate: dims must be one of {sorted(_MAX_POOLS)}, got {d}')
    unknown = set(pools) - {'mean', 'max'}
    if unknown:
        raise ValueError(f"pooled_gate: pools must be 'mean' or 'max', got {sorted(unknown)}")
    params = fast_backward_params((x,), modules)
    if params is not None:
        return _PooledGates.apply(x, gates_fn, dims, pools, *params)
    descriptors = [x.mean(d, keepdim=True) if kind == 'mean' else x.amax(d, keepdim=True)
                   for d in dims for kind in pools]
    gates = gates_fn(*descriptors)
    if torch.is_grad_enabled() or torch.jit.is_tracing():  # one graph in any grad mode
        return x * sum(gates[1:], gates[0])
    return _times_sum(x, gates)


def _times_sum(x: Tensor, gates: Sequence[Tensor]) -> Tensor:
    """``x * sum(gates)`` with one new tensor of the size of ``x`` (see :func:`_times_both`)."""
    out = torch.mul(x, gates[0])
    for gate in gates[1:]:
        out.addcmul_(x, gate)
    return out


def _spatial_max(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Max over H and W, (N, C, 1, 1), and its position ``h W + w`` (N, C), read in the
    memory format of ``x`` (no copy for contiguous and channels_last tensors)."""
    n, c = x.shape[:2]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        values, index = x.permute(0, 2, 3, 1).reshape(n, -1, c).max(1)
    else:
        values, index = x.reshape(n, c, -1).max(2)
    return values[:, :, None, None], index


def _add_spatial_max_grad(grad_x: Tensor, index: Tensor, grad: Tensor) -> Tensor:
    n, c = grad_x.shape[:2]
    grad = grad.reshape(n, c).to(grad_x.dtype)
    if grad_x.is_contiguous(memory_format=torch.channels_last) and not grad_x.is_contiguous():
        grad_x.permute(0, 2, 3, 1).view(n, -1, c).scatter_add_(1, index[:, None], grad[:, None])
        return grad_x
    grad_x = grad_x.contiguous()  # a no-op but for unusual strides
    grad_x.view(n, c, -1).scatter_add_(2, index[..., None], grad[..., None])
    return grad_x


def _axis_max(dim: int):
    def pool(x: Tensor) -> Tuple[Tensor, Tensor]:
        return x.max(dim, keepdim=True)

    def add_grad(grad_x: Tensor, index: Tensor, grad: Tensor) -> Tensor:
        return grad_x.scatter_add_(dim, index, grad.to(grad_x.dtype))

    return pool, add_grad


#: Per pooled dims: the max with its index, and the scatter of its gradient into dL/dx.
_MAX_POOLS = {(2, 3): (_spatial_max, _add_spatial_max_grad), (1,): _axis_max(1),
              (2,): _axis_max(2), (3,): _axis_max(3)}


def axis_pooled_gates(x: Tensor, gates_fn: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]],
                      modules: Modules) -> Tensor:
    """``x * a_h * a_w`` with ``a_h, a_w = gates_fn(x.mean(3, True), x.mean(2, True))``.

    Args:
        x (Tensor): (N, C, H, W) input.
        gates_fn (callable): Maps the row means (N, C, H, 1) and the column means
            (N, C, 1, W) to the gates ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W).
        modules (Module | sequence of Module): The modules whose layers ``gates_fn`` calls.

    Returns:
        Tensor: (N, C, H, W), in the memory format of ``x``.
    """
    params = fast_backward_params((x,), modules)
    if params is not None:
        return _AxisPooledGates.apply(x, gates_fn, *params)
    a_h, a_w = gates_fn(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
    if torch.is_grad_enabled() or torch.jit.is_tracing():  # one graph in any grad mode
        return x * a_h * a_w
    return _times_both(x, a_h, a_w)


def selective_sum(feats: Sequence[Tensor], select_fn: Callable[[Tensor], Tensor],
                  modules: Modules) -> Tensor:
    """``sum_i a_i * F_i`` with ``a = select_fn(sum_i mean_{H,W} F_i)``: SK's fuse and select.

    Args:
        feats (sequence of Tensor): M branch outputs ``F_i``, (N, C, H, W) each.
        select_fn (callable): Maps the (N, C, 1, 1) means of ``sum_i F_i`` to the selection
            weights ``a`` (N, M, C, 1, 1).
        modules (Module | sequence of Module): The modules whose layers ``select_fn`` calls.

    Returns:
        Tensor: (N, C, H, W).
    """
    params = fast_backward_params(feats, modules)
    if params is not None:
        return _SelectiveSum.apply(select_fn, len(feats), *feats, *params)
    return _weighted_sum(feats, select_fn(_sum_of_means(feats)))


def _sum_of_means(feats: Sequence[Tensor]) -> Tensor:
    s = feats[0].mean((2, 3), keepdim=True)
    for f in feats[1:]:  # GAP(sum F_i) = sum of the GAPs: the sum is never materialised
        s = s + f.mean((2, 3), keepdim=True)
    return s


def _weighted_sum(feats: Sequence[Tensor], weights: Tensor) -> Tensor:
    out = feats[0] * weights[:, 0]
    for i in range(1, len(feats)):
        out = torch.addcmul(out, feats[i], weights[:, i])
    return out


def _times_both(x: Tensor, a_h: Tensor, a_w: Tensor) -> Tensor:
    """``x * a_h * a_w`` with one new tensor of the size of ``x``: two would be alive at once,
    which on CPU costs more than the products (fresh memory from the OS, page by page)."""
    return torch.mul(x, a_h).mul_(a_w)


def _leaf(pooled: Tensor) -> Tensor:
    return pooled.detach().requires_grad_()


def _gate_network_grads(ctx, outputs: Sequence[Tensor], grads: Sequence[Tensor]):
    """Back-propagate ``grads`` of the gates through the gate network recorded in forward:
    the gradients of the pooled descriptors, then of the parameters (``None`` where unused
    or not required)."""
    inputs = ctx.pooled + ctx.params
    wanted = [t for t in inputs if t.requires_grad]
    found = iter(torch.autograd.grad(
        outputs, wanted, [g.to(o.dtype) for o, g in zip(outputs, grads)],
        retain_graph=True, allow_unused=True))
    result = [next(found) if t.requires_grad else None for t in inputs]
    return result[:len(ctx.pooled)], result[len(ctx.pooled):]


def _param_grads(ctx, grads, first: int = 2):
    """The parameters' gradients; they are the Function's inputs from index ``first`` on."""
    return tuple(g if ctx.needs_input_grad[first + i] else None for i, g in enumerate(grads))


class _PooledGates(torch.autograd.Function):
    """Backward from ``g = dL/dy``: ``dL/da_k = sum_{dims_k} g x``; the gate network gives the
    descriptors' gradients; ``dL/dx = g sum_k a_k`` plus each mean's gradient over its count
    and each max's at its maximal element; all written into the buffer that held ``g x``."""

    @staticmethod
    @amp_forward
    def forward(ctx, x: Tensor, gates_fn, dims, pools, *params) -> Tensor:
        descriptors, indices = [], []
        for d in dims:
            for kind in pools:
                if kind == 'mean':
                    descriptors.append(_leaf(x.mean(d, keepdim=True)))
                    indices.append(None)
                else:
                    values, index = _MAX_POOLS[d][0](x)
                    descriptors.append(_leaf(values))
                    indices.append(index)
        with torch.enable_grad():
            gates = tuple(gates_fn(*descriptors))
        ctx.save_for_backward(x)
        ctx.pooled, ctx.params, ctx.gates = tuple(descriptors), params, gates
        ctx.dims, ctx.indices = dims, indices
        return _times_sum(x, [gate.detach() for gate in gates])

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, = ctx.saved_tensors
        buffer = torch.mul(grad, x)
        grad_gates = [buffer.sum(d, keepdim=True) for d in ctx.dims]
        grad_pooled, grad_params = _gate_network_grads(ctx, ctx.gates, grad_gates)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gates = [gate.detach() for gate in ctx.gates]
            grad_x = torch.mul(grad, gates[0], out=buffer)
            for gate in gates[1:]:
                grad_x.addcmul_(grad, gate)
            per_gate = len(grad_pooled) // len(ctx.dims)
            for i, (g, index) in enumerate(zip(grad_pooled, ctx.indices)):
                d = ctx.dims[i // per_gate]
                if g is None:
                    continue
                if index is None:
                    count = 1
                    for axis in d:
                        count *= x.shape[axis]
                    grad_x += g.to(grad_x.dtype) / count
                else:
                    grad_x = _MAX_POOLS[d][1](grad_x, index, g)
        return (grad_x, None, None, None) + _param_grads(ctx, grad_params, first=4)


class _AxisPooledGates(torch.autograd.Function):
    """Backward from ``g = dL/dy``: ``dL/da_h = (g x) a_w^T`` and ``dL/da_w = a_h^T (g x)``
    (matrix products per channel over W and H); the gate network gives the gradients of the
    row and column means; ``dL/dx = g a_h a_w + dL/dr / W + dL/dc / H``, written into the
    buffer that held ``g x``."""

    @staticmethod
    @amp_forward
    def forward(ctx, x: Tensor, gates_fn, *params) -> Tensor:
        rows, columns = _leaf(x.mean(3, keepdim=True)), _leaf(x.mean(2, keepdim=True))
        with torch.enable_grad():
            a_h, a_w = gates_fn(rows, columns)
        ctx.save_for_backward(x)
        ctx.pooled, ctx.params, ctx.gates = (rows, columns), params, (a_h, a_w)
        return _times_both(x, a_h.detach(), a_w.detach())

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, = ctx.saved_tensors
        h, w = x.shape[2:]
        buffer = torch.mul(grad, x)
        a_h, a_w = (a.detach().to(buffer.dtype) for a in ctx.gates)  # matmul: one dtype
        grad_a_h = torch.matmul(buffer, a_w.transpose(2, 3))  # (N, C, H, 1)
        grad_a_w = torch.matmul(a_h.transpose(2, 3), buffer)  # (N, C, 1, W)
        (grad_rows, grad_columns), grad_params = _gate_network_grads(
            ctx, ctx.gates, (grad_a_h, grad_a_w))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mul(a_h, a_w, out=buffer).mul_(grad)
            if grad_rows is not None:
                grad_x += grad_rows.to(grad_x.dtype) / w
            if grad_columns is not None:
                grad_x += grad_columns.to(grad_x.dtype) / h
        return (grad_x, None) + _param_grads(ctx, grad_params)


class _SelectiveSum(torch.autograd.Function):
    """Backward from ``g = dL/dy``: ``dL/da_i = sum_{h,w} g F_i``; the selection network gives
    ``dL/ds``; ``dL/dF_i = g a_i + dL/ds / (H W)``, written into the buffer that held
    ``g F_i``."""

    @staticmethod
    @amp_forward
    def forward(ctx, select_fn, m: int, *inputs: Tensor) -> Tensor:
        feats, params = inputs[:m], inputs[m:]
        pooled = _leaf(_sum_of_means(feats))
        with torch.enable_grad():
            weights = select_fn(pooled)
        ctx.save_for_backward(*feats)
        ctx.pooled, ctx.params, ctx.gate = (pooled,), params, weights
        return _weighted_sum(feats, weights.detach())

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: Tensor):
        feats = ctx.saved_tensors
        weights = ctx.gate.detach()
        buffers = [torch.mul(grad, f) for f in feats]
        grad_weights = torch.stack([b.sum((2, 3), keepdim=True) for b in buffers], 1)
        (grad_pooled,), grad_params = _gate_network_grads(ctx, (ctx.gate,), (grad_weights,))
        grad_feats = []
        for i, (f, buffer) in enumerate(zip(feats, buffers)):
            if not ctx.needs_input_grad[2 + i]:
                grad_feats.append(None)
                continue
            grad_f = torch.mul(grad, weights[:, i], out=buffer)
            if grad_pooled is not None:
                grad_f += grad_pooled.to(grad_f.dtype) / (f.shape[2] * f.shape[3])
            grad_feats.append(grad_f)
        return (None, None, *grad_feats) + _param_grads(ctx, grad_params, first=2 + len(feats))
