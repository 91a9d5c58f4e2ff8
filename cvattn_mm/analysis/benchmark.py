"""Measuring attention modules: latency, peak memory, parameters and FLOPs.

Each ``benchmark_*`` function measures one case and returns a JSON-serialisable dict:

* latency: wall-clock time per call, after ``warmup`` untimed calls (on an accelerator the
  clock is read after synchronising the device); the median of
  ``repeats`` calls with its spread (quartiles, min, max), in milliseconds; optionally
  fewer calls for slow cases (a time budget, :class:`Timing`). Forward runs in
  eval mode under ``no_grad``; forward+backward in train mode, back-propagating to the input
  and every parameter. Callables compared with each other (ours and a peer; a model with
  and without attention) are timed interleaved, call by call, so that a change of load on
  a shared CPU affects them alike.
* peak memory: the highest number of bytes held by tensors allocated during one
  forward+backward; the inputs and weights, allocated before, are not included. On the
  CPU from the allocation records of the torch profiler (``profile_memory=True``), summed
  in time order; on CUDA (and other accelerators) from ``max_memory_allocated``, reset
  before each measurement, minus the bytes allocated before it.
* parameters and FLOPs: :mod:`cvattn_mm.analysis.complexity` (mmengine's count).

A case whose memory would exceed a budget is skipped: a forward at batch size 1 is
measured first and scaled to the batch (a lower bound of the forward+backward's peak).

Modules, peers, inputs and models live on the ``device`` given to each function (default
CPU); :mod:`cvattn_mm.analysis.device` checks it exists.
"""
import functools
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from ..attention.conv_replacement import ConvReplacement
from ..insertion import insert_attention
from ..registry import MODELS
from .complexity import count_flops, count_params
from .device import DeviceLike, peak_memory_since_reset, reset_peak_memory, synchronize
from .peers import Peer, build_pair, copy_weights, randomize

MB = 2**20
#: The figures that ratios compare.
MODEL_KEYS = ('params', 'flops', 'forward_ms', 'forward_backward_ms', 'peak_memory_mb')


@dataclass(frozen=True)
class Timing:
    """How latencies are measured (see :func:`time_interleaved`).

    Args:
        repeats (int): Timed calls.
        warmup (int): Untimed calls first.
        max_seconds (float, optional): Time after which the warm-up and the timing stop
            early (at least 1 warm-up and ``min(3, repeats)`` timed calls).
        max_memory_gb (float, optional): Skip module and peer cases above this memory
            (see :func:`memory_guard`).
    """

    repeats: int = 20
    warmup: int = 3
    max_seconds: Optional[float] = None
    max_memory_gb: Optional[float] = None


def summarize(seconds: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, min and max of ``seconds``, in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) > 1:
        q1, _, q3 = statistics.quantiles(ms, n=4, method='inclusive')
    else:
        q1 = q3 = ms[0]
    return dict(median=statistics.median(ms), q1=q1, q3=q3, min=ms[0], max=ms[-1],
                repeats=len(ms))


def time_interleaved(fns: Sequence[Callable[[], None]], repeats: int, warmup: int,
                     max_seconds: Optional[float] = None,
                     device: DeviceLike = 'cpu') -> List[Dict[str, float]]:
    """Time each callable ``repeats`` times, alternating between them, after ``warmup``
    untimed rounds; one :func:`summarize` per callable.

    With ``max_seconds``, the warm-up stops after the round that reaches that time (one
    round at least), and so does the timing (``min(3, repeats)`` rounds at least). On an
    accelerator ``device``, the clock is read after synchronising it (queued work done).
    """
    device = torch.device(device)

    def clock():
        synchronize(device)
        return time.perf_counter()

    start = clock()
    for _ in range(warmup):
        for fn in fns:
            fn()
        if max_seconds is not None and clock() - start >= max_seconds:
            break
    start = clock()
    seconds = [[] for _ in fns]
    for i in range(repeats):
        for fn, times in zip(fns, seconds):
            begin = clock()
            fn()
            times.append(clock() - begin)
        if (max_seconds is not None and i + 1 >= min(3, repeats)
                and time.perf_counter() - start >= max_seconds):
            break
    return [summarize(times) for times in seconds]


def peak_memory(fn: Callable[[], None], device: DeviceLike = 'cpu') -> int:
    """Peak bytes of the tensors allocated (and not yet freed) while ``fn`` runs on ``device``.

    On the CPU, from the profiler's allocation records. The profiler also records the
    release of blocks allocated during an earlier profiling session; ``fn`` should not free
    tensors that it did not allocate (they would lower the count). On an accelerator, the
    peak of ``max_memory_allocated`` (reset first) above the bytes allocated before ``fn``.
    """
    device = torch.device(device)
    if device.type != 'cpu':
        before = reset_peak_memory(device)
        fn()
        return peak_memory_since_reset(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    live = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        live += record.nbytes()
        peak = max(peak, live)
    return peak


def _set_mode(module: nn.Module, training: bool) -> None:
    module.train(training)  # not chained: mmpretrain's ResNet.train() returns None


def forward_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A forward pass of ``module`` on ``x`` in eval mode without autograd."""

    def run():
        with torch.no_grad():
            module(x)

    return run


def forward_backward_fn(module: nn.Module, x: torch.Tensor,
                        input_grad: bool = True) -> Callable[[], None]:
    """A forward and backward pass in train mode: gradients of the parameters and, with
    ``input_grad``, of ``x``, freed at the end of the call (so that every call, and the
    memory it holds, starts from no gradients). A tensor output is back-propagated with a
    gradient of ones, a tuple of outputs through the sum of their means."""
    x = x.detach().requires_grad_(input_grad)
    module.zero_grad(set_to_none=True)

    def run():
        out = module(x)
        if isinstance(out, torch.Tensor):
            out.backward(torch.ones_like(out))
        else:
            sum(o.mean() for o in out).backward()
        module.zero_grad(set_to_none=True)
        x.grad = None

    return run


def _measure(modules: Sequence[nn.Module], x: torch.Tensor, timing: Timing,
             input_grad: bool = True) -> List[dict]:
    """Params, FLOPs, interleaved latencies and peak memory of ``modules`` on ``x``."""
    results = [dict(params=count_params(m), flops=count_flops(m, x)) for m in modules]
    for m in modules:
        _set_mode(m, False)
    fwd = time_interleaved([forward_fn(m, x) for m in modules], timing.repeats, timing.warmup,
                           timing.max_seconds, x.device)
    for m in modules:
        _set_mode(m, True)
    fwd_bwd_fns = [forward_backward_fn(m, x, input_grad) for m in modules]
    fwd_bwd = time_interleaved(fwd_bwd_fns, timing.repeats, timing.warmup, timing.max_seconds,
                               x.device)
    for result, f, fb, fn in zip(results, fwd, fwd_bwd, fwd_bwd_fns):
        result.update(forward_ms=f, forward_backward_ms=fb,
                      peak_memory_mb=peak_memory(fn, x.device) / MB)
    return results


def memory_guard(modules: Sequence[nn.Module], shape: Sequence[int],
                 max_memory_gb: Optional[float], device: DeviceLike = 'cpu') -> Optional[str]:
    """Why ``modules`` (on ``device``) would exceed ``max_memory_gb`` at ``shape``, or None.

    The peak memory of a forward at batch size 1 (eval, no autograd) times the batch size
    bounds the forward+backward's peak from below.
    """
    if max_memory_gb is None:
        return None
    x = torch.randn(1, *shape[1:], device=device)
    for m in modules:
        _set_mode(m, False)
        estimate = peak_memory(forward_fn(m, x), device) * shape[0] / 2**30
        if estimate > max_memory_gb:
            return (f'{type(m).__name__}: a forward at batch size 1 holds '
                    f'{estimate / shape[0]:.2f} GiB, so N={shape[0]} needs more than '
                    f'{estimate:.1f} GiB (budget {max_memory_gb} GiB)')
    return None


def _input(shape: Sequence[int], device: DeviceLike = 'cpu', seed: int = 0) -> torch.Tensor:
    """The same values on every device (drawn on the CPU)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def benchmark_module(name: str, shape: Sequence[int], timing: Timing = Timing(),
                     device: DeviceLike = 'cpu', **cfg) -> dict:
    """One registered attention module (default hyper-parameters updated by ``cfg``) on
    an input of ``shape`` (N, C, H, W), both on ``device``.

    A module that replaces a conv (:class:`ConvReplacement`, built with in = out channels and
    stride 1) is timed interleaved with that conv (``nn.Conv2d`` of its kernel size, bias-free).

    Returns:
        dict: ``module``, ``shape``, ``status`` ('ok' or 'skipped'), ``reason`` and, when
        measured, ``params``, ``flops``, ``forward_ms``, ``forward_backward_ms`` (dicts of
        :func:`summarize`) and ``peak_memory_mb``; for conv replacements also
        ``replaced_conv`` (the same for the conv) and ``ratio_to_conv`` (module / conv for
        ``params``, ``flops``, ``forward_ms``, ``forward_backward_ms``, ``peak_memory_mb``;
        latencies by their medians).
    """
    record = dict(module=name, shape=list(shape), status='ok', reason=None)
    module = MODELS.build(dict(type=name, in_channels=shape[1], **cfg)).to(device)
    modules = [module]
    if isinstance(module, ConvReplacement):
        modules.append(nn.Conv2d(shape[1], shape[1], module.kernel_size, padding=module.padding,
                                 bias=False).to(device))
    reason = memory_guard(modules, shape, timing.max_memory_gb, device)
    if reason:
        return dict(record, status='skipped', reason=reason)
    measured = _measure(modules, _input(shape, device), timing)
    record.update(measured[0])
    if len(measured) == 2:
        record['replaced_conv'] = measured[1]
        record['ratio_to_conv'] = {key: _value(measured[0], key) / _value(measured[1], key)
                                   for key in MODEL_KEYS}
    return record


def benchmark_peer(peer: Peer, shape: Sequence[int], timing: Timing = Timing(),
                   device: DeviceLike = 'cpu') -> dict:
    """Our module and its peer side by side at ``shape`` on ``device``, with our weights in
    the peer.

    Returns:
        dict: ``module``, ``peer``, ``shape``, ``status``, ``reason``, ``ours`` and
        ``theirs`` (as in :func:`benchmark_module`), ``ratio_forward`` and
        ``ratio_forward_backward`` (ours / theirs, medians), ``incomparable`` (why the
        outputs differ at this shape, or None) and ``max_rel_diff`` (max |ours - theirs| /
        max |theirs| on random weights, in eval mode; None when incomparable).
    """
    record = dict(module=peer.module, peer=peer.name, shape=list(shape), status='ok',
                  reason=None)
    if not peer.available:
        return dict(record, status='skipped', reason=f'package {peer.package!r} is not installed')
    ours, theirs = (m.to(device) for m in build_pair(peer, shape[1]))
    reason = memory_guard([ours, theirs], shape, timing.max_memory_gb, device)
    if reason:
        return dict(record, status='skipped', reason=reason)
    x = _input(shape, device)
    record['incomparable'] = peer.incomparable(ours, shape)
    record['max_rel_diff'] = None
    if record['incomparable'] is None:
        randomize(ours)
        copy_weights(peer, ours, theirs)
        _set_mode(ours, False)
        _set_mode(theirs, False)
        with torch.no_grad(), peer.equivalence():
            a, b = ours(x), theirs(x)
        record['max_rel_diff'] = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    record['ours'], record['theirs'] = _measure([ours, theirs], x, timing)
    for key in ('forward', 'forward_backward'):
        record[f'ratio_{key}'] = (record['ours'][f'{key}_ms']['median']
                                  / record['theirs'][f'{key}_ms']['median'])
    return record


def build_resnet(depth: int = 50) -> nn.Module:
    """mmpretrain's ResNet (no pretrained weights)."""
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    return PRETRAIN_MODELS.build(dict(type='ResNet', depth=depth))


def benchmark_model(name: str, plain: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224),
                    depth: int = 50, timing: Timing = Timing(),
                    device: DeviceLike = 'cpu') -> dict:
    """mmpretrain's ResNet with ``name`` inserted at its paper positions, timed interleaved
    with ``plain`` (the same ResNet without attention, already on ``device``).

    Returns:
        dict: ``model``, ``module``, ``input``, ``status``, ``reason``, ``params``,
        ``flops``, ``forward_ms``, ``forward_backward_ms``, ``peak_memory_mb`` of the model
        with attention, ``plain`` (the same for the plain model, measured in this round) and
        ``ratios`` (with attention / plain, for each of them; latencies by their medians).
    """
    x = _input(input_shape, device)
    where = 'replace' if issubclass(MODELS.get(name), ConvReplacement) else 'at'
    model = insert_attention(build_resnet(depth).to(device),
                             [{'attention': dict(type=name), where: 'paper'}],
                             example_inputs=(x, )).to(device)  # the new sites too
    record = dict(model=f'ResNet-{depth}', module=name, input=list(input_shape), status='ok',
                  reason=None)
    ours, base = _measure([model, plain], x, timing, input_grad=False)
    replaced = sum(isinstance(m, ConvReplacement) for m in model.modules())
    record.update(ours, plain=base, sites=len(model.attention_sites) + replaced)
    record['ratios'] = {key: _value(ours, key) / _value(base, key) for key in MODEL_KEYS}
    return record


def _value(result: dict, key: str) -> float:
    value = result[key]
    return value['median'] if isinstance(value, dict) else value


def default_modules() -> List[str]:
    """Registry names of every registered attention module."""
    from ..attention.catalog import attention_classes
    return list(attention_classes())


def run_benchmark(modules: Sequence[str], shapes: Sequence[Sequence[int]],
                  timing: Timing = Timing(), peers: bool = True,
                  model_input: Optional[Sequence[int]] = (1, 3, 224, 224),
                  model_depth: int = 50, progress: Callable = iter,
                  device: DeviceLike = 'cpu') -> dict:
    """Every case of a benchmark: each module at each shape, each available peer of those
    modules side by side at each shape, and (unless ``model_input`` is None) the ResNet
    with each module at its paper positions, all on ``device``.

    A case that fails is recorded with ``status='error'`` and the exception as ``reason``.

    Args:
        modules: Registry names.
        shapes: Input shapes (N, C, H, W).
        timing: How latencies are measured, and the memory budget.
        peers: Measure the peers of the modules.
        model_input: Input shape of the model-level cases; None to skip them.
        model_depth: Depth of mmpretrain's ResNet for the model-level cases.
        progress: Wraps the list of cases (e.g. ``tqdm.tqdm``).
        device: Where modules, peers, inputs and models run (check it with
            :func:`cvattn_mm.analysis.device.resolve_device` first).

    Returns:
        dict: ``modules``, ``peers`` and ``models``: lists of records.
    """
    from .references import peers_of

    cases = []
    for shape in shapes:
        for name in modules:
            cases.append(('modules', dict(module=name, shape=list(shape)),
                          lambda n=name, s=shape: benchmark_module(n, s, timing, device)))
        for peer in (p for name in modules for p in peers_of(name)) if peers else ():
            cases.append(('peers', dict(module=peer.module, peer=peer.name, shape=list(shape)),
                          lambda p=peer, s=shape: benchmark_peer(p, s, timing, device)))
    if model_input is not None:
        plain = functools.cache(lambda: build_resnet(model_depth).to(device))  # shared
        for name in modules:
            cases.append(('models', dict(model=f'ResNet-{model_depth}', module=name,
                                         input=list(model_input)),
                          lambda n=name: benchmark_model(n, plain(), model_input, model_depth,
                                                         timing, device)))
    results = dict(modules=[], peers=[], models=[])
    for kind, head, run in progress(cases):
        try:
            record = run()
        except Exception as e:  # recorded; the benchmark goes on
            record = dict(head, status='error', reason=f'{type(e).__name__}: {e}')
        results[kind].append(record)
    return results

