"""Checks of the attention module contract (docs/architecture.md, "The module contract").

Each ``check_*`` takes a factory that builds a fresh module and asserts one property. The
registry-wide suite (``test_contract.py``) runs them on every registered module with its
defaults; a module's own tests call them on its non-default variants.
"""
import inspect
import os
import re
import warnings

import torch
import torch.nn as nn

from cvattn_mm.attention import FAMILIES, PAPER_POSITIONS, ConvReplacement
from cvattn_mm.attention.conv_replacement import CONV_OPTIONS, REPLACING_POSITIONS
from cvattn_mm.attention.fast_backward import fast_backward

SIZES = [(8, 8), (1, 1), (7, 7), (13, 17)]
#: Where the checks run: ``CVATTN_TEST_DEVICE`` (default cpu; tools/analysis/device_check.py
#: sets it to run the suite on a GPU).
DEVICE = torch.device(os.environ.get('CVATTN_TEST_DEVICE', 'cpu'))
#: An arXiv id, or for papers that are not on arXiv a PMLR volume (SimAM, ICML 2021) or a
#: doi: (MLCA, a journal paper).
CITATION = r'arXiv:\d{4}\.\d{4,5}|PMLR \d+|doi:10\.\d{4,9}/\S+'


def make_input(module, n=2, size=(8, 8), seed=0):
    channels = module.in_channels or 16
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, *size, generator=gen).to(DEVICE)


def build(factory):
    """A fresh module from ``factory``, on :data:`DEVICE`."""
    return factory().to(DEVICE)


def perturb_parameters(module, scale=0.1, seed=0):
    """Add noise to every parameter so that zero-initialised layers pass gradients on."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device) * scale)
    return module


def assert_close_rel(actual, expected, rtol, what):
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item() + 1e-6
    assert err <= rtol * scale, f'{what}: max abs error {err:.3g} > {rtol} * {scale:.3g}'


def check_metadata(cls):
    name = cls.__name__
    assert cls.family in FAMILIES, f'{name}.family={cls.family!r}'
    assert cls.paper_position in PAPER_POSITIONS, f'{name}.paper_position'
    if cls.paper_position == 'own_block':
        assert cls.fallback_position in set(PAPER_POSITIONS) - {'own_block'}, \
            f'{name}.fallback_position={cls.fallback_position!r}'
    else:
        assert cls.fallback_position is None, f'{name}: fallback_position is for own_block'
    assert re.search(CITATION, cls.paper), f'{name}.paper needs an arXiv id, PMLR volume or doi:'
    assert '_abbr_' in vars(cls), f'{name} must declare its own _abbr_'
    assert cls.__doc__ and re.search(CITATION, cls.__doc__), f'{name} docstring must cite the paper'
    params = list(inspect.signature(cls.__init__).parameters)
    assert params[1] == 'in_channels', f'{name}: in_channels must come first, got {params}'
    assert params[-1] == 'init_cfg', f'{name}: init_cfg must come last, got {params}'
    replaces = issubclass(cls, ConvReplacement)
    assert replaces == (cls.paper_position in REPLACING_POSITIONS), \
        f'{name}: a ConvReplacement and only it has a replacing paper_position'
    if replaces:
        assert tuple(params[1:len(CONV_OPTIONS) + 1]) == CONV_OPTIONS, \
            f'{name}: the replaced conv\'s options {CONV_OPTIONS} come first, got {params}'
        assert bool(cls.conv_init) != bool(cls.no_conv_init), \
            f'{name}: say what init_from_conv does (conv_init) or why it cannot (no_conv_init)'


def check_shapes(factory):
    module = build(factory)
    module.init_weights()
    for size in SIZES:
        x = make_input(module, size=size)
        y = module(x)
        assert y.shape == x.shape, f'{size}: {tuple(y.shape)} != {tuple(x.shape)}'
        assert y.dtype == x.dtype
        assert torch.isfinite(y).all(), f'{size}: non-finite output'


def check_gradients(factory):
    module = perturb_parameters(build(factory))
    x = make_input(module, size=(7, 9)).requires_grad_()
    y = module(x)
    y.mul(torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, 'no gradient to the input'
    for pname, p in module.named_parameters():
        assert p.grad is not None, f'{pname} gets no gradient'
        assert torch.isfinite(p.grad).all(), f'{pname} has a non-finite gradient'
        assert p.grad.abs().sum() > 0, f'{pname} gets a zero gradient'


def check_batch_one(factory):
    """A sample gives the same output alone (batch 1) as inside a batch (eval mode)."""
    module = perturb_parameters(build(factory)).eval()
    x = make_input(module, n=3, size=(7, 5))
    with torch.no_grad():
        full = module(x)
        single = module(x[1:2])
    assert single.shape == (1, *x.shape[1:])
    assert_close_rel(single, full[1:2], 1e-4, 'batch 1 vs batch 3')
    module.train()
    module(make_input(module, n=1, size=(7, 5)))


def check_autocast(factory, dtype):
    module = perturb_parameters(build(factory)).eval()
    x = make_input(module, size=(7, 9))
    with torch.no_grad():
        ref = module(x)
        with torch.autocast(DEVICE.type, dtype=dtype):
            y = module(x)
    assert y.shape == x.shape
    assert y.is_floating_point() and torch.isfinite(y).all()
    assert_close_rel(y, ref, 0.1, f'{dtype} autocast vs fp32')


def check_channels_last(factory):
    module = perturb_parameters(build(factory)).eval()
    x = make_input(module, size=(7, 9))
    with torch.no_grad():
        ref = module(x)
        y = module(x.to(memory_format=torch.channels_last))
        module_cl = module.to(memory_format=torch.channels_last)
        y2 = module_cl(x.to(memory_format=torch.channels_last))
    assert_close_rel(y, ref, 1e-4, 'channels_last input')
    assert_close_rel(y2, ref, 1e-4, 'channels_last module and input')


def check_eval_mode(factory):
    module = perturb_parameters(build(factory))
    module.eval()
    assert not any(m.training for m in module.modules())
    x = make_input(module, size=(6, 6))
    with torch.no_grad():
        assert torch.equal(module(x), module(x)), 'eval output is not deterministic'


def check_jit_trace(factory):
    module = perturb_parameters(build(factory)).eval()
    x = make_input(module, size=(7, 9))
    with torch.no_grad():
        traced = torch.jit.trace(module, x, check_trace=False)
        assert_close_rel(traced(x), module(x), 1e-5, 'jit.trace')


def check_bad_input(factory):
    module = build(factory)
    if module.in_channels is not None:
        c = module.in_channels
        x = torch.randn(2, c + 1, 8, 8, device=DEVICE)
        try:
            module(x)
        except ValueError as e:
            msg = str(e)
            assert type(module).__name__ in msg and str(c) in msg and str(c + 1) in msg, msg
        else:
            raise AssertionError('wrong channel count was accepted')
    try:
        module(torch.randn(2, module.in_channels or 16, 8, device=DEVICE))
    except ValueError as e:
        assert type(module).__name__ in str(e) and '(N, C, H, W)' in str(e), str(e)
    else:
        raise AssertionError('a 3-D input was accepted')


def check_torch_compile(factory):
    module = perturb_parameters(build(factory)).eval()
    x = make_input(module, size=(7, 9))
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        assert_close_rel(compiled(x), module(x), 1e-5, 'torch.compile')


def check_onnx(factory, tmp_path):
    """Export at opset 17 and compare onnxruntime's output with PyTorch's.

    The TorchScript-based exporter writes opset 17 directly; the dynamo exporter emits opset
    18 and its down-conversion to 17 fails on ReduceMean's axes (onnx 1.x), so it is not used.
    """
    import onnx
    import onnxruntime as ort

    module = perturb_parameters(build(factory)).eval()
    x = make_input(module, size=(7, 9))
    path = str(tmp_path / 'module.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module, (x, ), path, opset_version=17, input_names=['x'],
                          output_names=['y'], dynamo=False)
    assert [o.version for o in onnx.load(path).opset_import if o.domain == ''] == [17]
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    (y, ) = session.run(None, {'x': x.cpu().numpy()})
    with torch.no_grad():
        assert_close_rel(torch.from_numpy(y), module(x).cpu(), 1e-4, 'onnxruntime')


def leaf_layers(module):
    """The leaf modules (no children) of ``module`` by path, the module itself excluded."""
    return {path: m for path, m in module.named_modules()
            if path and not any(True for _ in m.children())}


def check_layers_called(factory, compiled=True):
    """Every leaf layer runs as a module (its forward hooks fire) in training with gradients,
    eval, no-grad and under ``torch.jit.trace`` and (``compiled``) ``torch.compile``."""
    module = perturb_parameters(build(factory))
    layers = leaf_layers(module)
    called = set()
    for path, layer in layers.items():
        layer.register_forward_hook(lambda m, args, out, path=path: called.add(path))

    def expect_all(mode):
        missing = sorted(set(layers) - called)
        assert not missing, f'{mode}: layers whose forward is never called: {missing}'
        called.clear()

    x = make_input(module, size=(7, 9)).requires_grad_()
    module.train()
    module(x).sum().backward()
    expect_all('training forward+backward')
    module.eval()
    module(x).sum().backward()
    expect_all('eval with gradients')
    with torch.no_grad():
        module(x)
        expect_all('eval, no_grad')
        torch.jit.trace(module, x.detach(), check_trace=False)
        expect_all('jit.trace')
    if not compiled:
        return
    torch._dynamo.reset()
    torch.compile(module, backend='aot_eager')(x.detach())
    expect_all('torch.compile')


def check_fast_backward_matches_autograd(factory):
    """The hand-written backwards (the default) and plain autograd (the switch off) give the
    same output and the same gradients to the input and to every parameter (float64)."""
    module = perturb_parameters(build(factory)).double().train()
    x = make_input(module, size=(7, 9)).double()
    grad_out = torch.randn(x.shape, dtype=x.dtype,
                           generator=torch.Generator().manual_seed(1)).to(DEVICE)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    results = []
    for enabled in (True, False):
        module.load_state_dict(state)  # the same running statistics for both runs
        module.zero_grad()
        xi = x.clone().requires_grad_()
        torch.manual_seed(0)  # the same dropout masks in both runs
        with fast_backward(enabled):
            y = module(xi)
            y.backward(grad_out)
        grads = {'input': xi.grad, **{n: p.grad for n, p in module.named_parameters()}}
        results.append((y.detach(), grads))
    (y_fast, fast), (y_plain, plain) = results
    assert_close_rel(y_fast, y_plain, 1e-10, 'output')
    assert fast.keys() == plain.keys()
    # relative to the largest gradient: some are zero in exact arithmetic (a bias before a BN)
    scale = max(g.abs().max().item() for g in plain.values() if g is not None)
    for name in plain:
        assert (fast[name] is None) == (plain[name] is None), f'{name}: gradient in one run only'
        if plain[name] is not None:
            err = (fast[name] - plain[name]).abs().max().item()
            assert err <= 1e-9 * scale, f'gradient of {name}: max abs error {err:.3g}'


def conv_geometries(cls, channels):
    """The replaced convs a ConvReplacement is checked on: stride 2, more output channels,
    and the groups and dilation its class takes."""
    k = cls.kernel_sizes[0] if cls.kernel_sizes else 3
    geometries = [dict(stride=2), dict(out_channels=2 * channels), dict(stride=2, padding=0)]
    if cls.takes_groups:
        geometries.append(dict(groups=4, stride=2))
    if cls.takes_dilation:
        geometries.append(dict(dilation=2))
    convs = []
    for g in geometries:
        dilation = g.get('dilation', 1)
        padding = g.get('padding', dilation * (k - 1) // 2)
        if padding != dilation * (k - 1) // 2 and not cls.any_padding:
            continue
        convs.append(nn.Conv2d(channels, g.get('out_channels', channels), k, g.get('stride', 1),
                               padding, dilation, g.get('groups', 1), bias=False))
    return convs


def check_replaces_conv(cls, channels=64, **options):
    """Built from convs of several geometries (:func:`conv_geometries`), the module gives
    the conv's output shape on even, odd, non-square and 1x1 maps, and gradients (for modules
    that absorb the norm, also after an in-place ReLU on the output, as the host's
    Bottleneck applies one after the now Identity norm)."""
    for conv in conv_geometries(cls, channels):
        module = perturb_parameters(cls.from_conv(conv, **options).to(DEVICE))
        for size in [(8, 8), (7, 7), (13, 17), (1, 1)]:
            if min(module.output_size(*size)) < 1:
                continue
            x = torch.randn(2, channels, *size, device=DEVICE, requires_grad=True)
            y = module(x)
            expected = conv.to(DEVICE)(x).shape
            assert y.shape == expected, f'{conv} at {size}: {tuple(y.shape)} != {tuple(expected)}'
            assert torch.isfinite(y).all(), f'{conv} at {size}: non-finite output'
            if cls.absorbs_norm:  # the host's in-place activation then runs on the output
                torch.relu_(y)
            y.square().mean().backward()
            assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, f'{conv} at {size}'


ALL_CHECKS = [check_shapes, check_gradients, check_batch_one, check_channels_last,
              check_eval_mode, check_jit_trace, check_bad_input, check_layers_called,
              check_fast_backward_matches_autograd]


def run_contract(factory):
    """Run every check (except compile and ONNX) on ``factory``; for module variants."""
    for check in ALL_CHECKS:
        if check is check_layers_called:
            check(factory, compiled=False)  # the registry-wide suite compiles the defaults
        else:
            check(factory)
    check_autocast(factory, torch.bfloat16)
    check_autocast(factory, torch.float16)
