"""The switch and the rules of the hand-written backwards (docs/architecture.md, "Fast backwards").

Several modules compute their block with a :class:`torch.autograd.Function` whose backward
is written by hand (:mod:`.gating`, GCNet's attention pooling, SimAM): it writes fewer
tensors of the input's size than autograd would, so forward+backward is faster. Every such
Function follows these rules:

* it takes the *modules* whose layers it calls (never a list of their parameters) and
  collects their parameters with :func:`fast_backward_params`, so a parameter cannot be
  forgotten;
* it runs only when :func:`fast_backward_params` says so: gradients are needed, the fast
  path is switched on, and nothing traces the call (``torch.jit.trace``, ``torch.compile``
  and ``torch.onnx`` see the plain ops, which compute the same values);
* its forward and backward are wrapped by :func:`amp_forward` / :func:`amp_backward`, so the
  backward runs under the autocast state of the forward on every device type (CPU or CUDA);
* it is not twice differentiable (``once_differentiable``), and any other change of
  semantics (the gradient of a max going to one maximal element) is stated on the module.

The switch: :func:`set_fast_backward` (or the :func:`fast_backward` context manager) and
the environment variable ``CVATTN_FAST_BACKWARD`` (``0``, ``false``, ``off`` or ``no``:
plain autograd from the start). With the switch off every module runs its forward with
plain autograd; the contract suite checks that both give the same gradients.
"""
import contextlib
import functools
import os
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

#: Environment variable read at import: a false value turns the fast path off.
ENV_VARIABLE = 'CVATTN_FAST_BACKWARD'
_FALSE = ('0', 'false', 'off', 'no')

_enabled = os.environ.get(ENV_VARIABLE, '1').strip().lower() not in _FALSE

Modules = Union[nn.Module, Sequence[nn.Module]]


def fast_backward_enabled() -> bool:
    """Whether the hand-written backwards may run (else plain autograd everywhere)."""
    return _enabled


def set_fast_backward(enabled: bool) -> None:
    """Switch the hand-written backwards on or off for the whole process."""
    global _enabled
    if not isinstance(enabled, bool):
        raise ValueError(f'set_fast_backward: enabled must be True or False, got {enabled!r}')
    _enabled = enabled


@contextlib.contextmanager
def fast_backward(enabled: bool) -> Iterator[None]:
    """Context manager: the switch set to ``enabled`` inside, restored on exit."""
    previous = _enabled
    set_fast_backward(enabled)
    try:
        yield
    finally:
        set_fast_backward(previous)


def is_tracing() -> bool:
    """Whether ``torch.jit`` or ``torch.compile`` (dynamo) traces the current call."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling())


def fast_backward_params(inputs: Sequence[torch.Tensor], modules: Modules
                         ) -> Optional[Tuple[nn.Parameter, ...]]:
    """The parameters of ``modules`` when a hand-written backward is to run, else ``None``.

    ``None`` when the switch is off, gradients are disabled, the call is traced, or neither
    an input nor a parameter requires a gradient. The cheap checks come first: collecting a
    module's parameters costs more than a small forward.

    Args:
        inputs (sequence of Tensor): The tensor inputs of the Function.
        modules (Module | sequence of Module): The modules whose layers the Function calls.
    """
    if not _enabled or not torch.is_grad_enabled() or is_tracing():
        return None
    params = tuple(_parameters(modules))
    needed = any(t.requires_grad for t in inputs) or any(p.requires_grad for p in params)
    return params if needed else None


def is_plain_layer(layer: nn.Module, cls: type) -> bool:
    """Whether a hand-written backward may differentiate ``layer`` as a ``cls``: it is exactly
    of that type (a swapped, wrapped or parametrised layer has another type) and no hook can
    see or change its call (a pruning mask, an observer)."""
    return (type(layer) is cls
            and not (layer._forward_pre_hooks or layer._forward_hooks
                     or layer._backward_pre_hooks or layer._backward_hooks
                     or nn.modules.module._global_forward_pre_hooks
                     or nn.modules.module._global_forward_hooks))


def _parameters(modules: Modules) -> Iterable[nn.Parameter]:
    if isinstance(modules, nn.Module):
        return modules.parameters()
    seen = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return seen.values()


def _device_type(args) -> str:
    return next((a.device.type for a in args if isinstance(a, torch.Tensor)), 'cpu')


def amp_forward(forward):
    """Decorate a Function's ``forward``: ``torch.amp.custom_fwd`` for the device type of
    its first tensor argument (recorded in ``ctx.device_type`` for :func:`amp_backward`)."""

    @functools.wraps(forward)
    def wrapped(ctx, *args):
        ctx.device_type = _device_type(args)
        return torch.amp.custom_fwd(forward, device_type=ctx.device_type)(ctx, *args)

    return wrapped


def amp_backward(backward):
    """Decorate a Function's ``backward``: ``torch.amp.custom_bwd`` for the device type of
    the forward, so the backward runs under the forward's autocast state."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        return torch.amp.custom_bwd(backward, device_type=ctx.device_type)(ctx, *grads)

    return wrapped
