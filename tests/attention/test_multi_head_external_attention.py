"""MultiHeadExternalAttention: token and NCHW forms, formula, params, arguments, maps."""
import functools

import pytest
import torch

from cvattn_mm.attention.spatial.multi_head_external_attention import MultiHeadExternalAttention
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = [
    dict(num_heads=4, coef=2),
    dict(num_heads=1, coef=1, memory_size=8),
    dict(num_heads=16),
    dict(attn_drop=0.1, proj_drop=0.1),
]


def same_dropout_masks(factory):
    """Modules that reseed the RNG before each forward, so that two training runs draw the
    same dropout masks (check_fast_backward_matches_autograd compares two runs)."""
    def reseed(module, args):
        torch.manual_seed(0)

    def build():
        module = factory()
        module.register_forward_pre_hook(reseed)
        return module
    return build


@pytest.mark.parametrize('kwargs', VARIANTS, ids=str)
def test_contract_variants(kwargs):
    torch.manual_seed(0)
    factory = functools.partial(MultiHeadExternalAttention, 16, **kwargs)
    if kwargs.get('attn_drop') or kwargs.get('proj_drop'):
        factory = same_dropout_masks(factory)
    contract.run_contract(factory)


def reference_tokens(module, x):
    """The official token computation (permute to heads first), in float64."""
    b, length, c = x.shape
    heads, k = module.total_heads, module.memory_size
    lin = {name: (getattr(module, name).weight.double(), getattr(module, name).bias.double())
           for name in ('trans_dims', 'memory_key', 'memory_value', 'proj')}
    e = x.double() @ lin['trans_dims'][0].T + lin['trans_dims'][1]
    e = e.view(b, length, heads, -1).permute(0, 2, 1, 3)  # (B, H', L, d)
    logits = e @ lin['memory_key'][0].T + lin['memory_key'][1]  # (B, H', L, S)
    assert logits.shape[-1] == k
    a = logits.exp() / logits.exp().sum(dim=2, keepdim=True)  # softmax over tokens
    a = a / (1e-9 + a.sum(dim=-1, keepdim=True))  # l1 over memory slots
    y = a @ lin['memory_value'][0].T + lin['memory_value'][1]
    y = y.permute(0, 2, 1, 3).reshape(b, length, -1)
    return y @ lin['proj'][0].T + lin['proj'][1]


@pytest.mark.parametrize('kwargs', [{}, dict(num_heads=2, coef=3, memory_size=5)], ids=str)
def test_matches_official_formula(kwargs):
    torch.manual_seed(0)
    module = contract.perturb_parameters(MultiHeadExternalAttention(16, **kwargs)).eval()
    x = torch.randn(2, 16, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)
    ref = reference_tokens(module, tokens)
    with torch.no_grad():
        y_tokens = module.forward_tokens(tokens)
        y = module(x)
    torch.testing.assert_close(y_tokens.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.flatten(2).transpose(1, 2).double(), ref, rtol=1e-4, atol=1e-5)


def test_double_normalisation():
    logits = torch.randn(3, 10, 4, 7)  # (B, L, H', S) as in forward_tokens
    a = MultiHeadExternalAttention._normalise(logits, 1, -1)
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 10, 4))
    soft = logits.softmax(1)
    torch.testing.assert_close(a, soft / soft.sum(-1, keepdim=True))


def test_no_hidden_residual():
    module = MultiHeadExternalAttention(16)
    with torch.no_grad():
        module.proj.weight.zero_()
        module.proj.bias.zero_()
    x = torch.randn(2, 16, 4, 4)
    assert module(x).abs().max() == 0


def test_official_defaults():
    module = MultiHeadExternalAttention(64)
    assert (module.num_heads, module.coef, module.memory_size) == (8, 4, 64)
    assert module.total_heads == 32 and module.head_dim == 8
    assert MultiHeadExternalAttention(64, coef=2).memory_size == 128


def expected_params(c, heads=8, coef=4, s=64):
    d = c // heads
    return 2 * coef * c * c + coef * c + c + 2 * s * d + s + d


@pytest.mark.parametrize('channels', [64, 384])
def test_param_count(channels):
    module = MultiHeadExternalAttention(channels)
    assert sum(p.numel() for p in module.parameters()) == expected_params(channels)
    module = MultiHeadExternalAttention(channels, num_heads=4, coef=2, memory_size=16)
    count = sum(p.numel() for p in module.parameters())
    assert count == expected_params(channels, 4, 2, 16)


def test_forward_tokens_rejects_bad_shapes():
    module = MultiHeadExternalAttention(16)
    for shape in [(2, 9, 8), (2, 16, 3, 3)]:
        with pytest.raises(ValueError, match=r'MultiHeadExternalAttention.*\(B, L, C\).*16'):
            module.forward_tokens(torch.randn(*shape))


@pytest.mark.parametrize('kwargs, arg', [
    (dict(num_heads=3), 'in_channels'),
    (dict(num_heads=0), 'num_heads'),
    (dict(coef=0), 'coef'),
    (dict(memory_size=0), 'memory_size'),
    (dict(attn_drop=1.0), 'attn_drop'),
    (dict(proj_drop=-0.1), 'proj_drop'),
    (dict(in_channels=0), 'in_channels'),
])
def test_invalid_arguments(kwargs, arg):
    kwargs = dict(dict(in_channels=16), **kwargs)
    with pytest.raises(ValueError, match=f'MultiHeadExternalAttention.*{arg}'):
        MultiHeadExternalAttention(**kwargs)


@pytest.mark.parametrize('kwargs', [dict(num_heads=4, coef=2, memory_size=16)], ids=str)
def test_compile_and_onnx_variants(kwargs, tmp_path):
    factory = functools.partial(MultiHeadExternalAttention, 16, **kwargs)
    contract.check_torch_compile(factory)
    contract.check_onnx(factory, tmp_path)


def test_maps_rebuild_the_forward():
    """The output from the softmax over positions that the map averages."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(MultiHeadExternalAttention(32), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        maps = extract_maps(module, x)
        tokens = x.flatten(2).transpose(1, 2)
        a = MultiHeadExternalAttention._softmax(module.memory_logits(tokens), 1)  # (N, L, H', S)
        assert torch.equal(maps['memory_attention'].values.flatten(1), a.mean((2, 3)))
        y = module.memory_value(a / (1e-9 + a.sum(-1, keepdim=True))).flatten(2)
        rebuilt = module.proj(y).transpose(1, 2).reshape(x.shape)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'{err:.3g}'
    assert maps


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'tokens'])
def test_plain_linear_layers_compute_the_same(layout):
    """A tool that swaps the layer types for plain nn.Linear gets the same block, for maps in
    either memory format and for tokens."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(MultiHeadExternalAttention(16, num_heads=4)).eval()
    x = torch.randn(2, 16, 5, 6)
    run = module.forward_tokens if layout == 'tokens' else module
    if layout == 'tokens':
        x = x.flatten(2).transpose(1, 2).contiguous()
    elif layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = run(x)
        for name in ('trans_dims', 'memory_key', 'memory_value', 'proj'):
            layer = getattr(module, name)
            plain = torch.nn.Linear(layer.in_features, layer.out_features)
            plain.load_state_dict(layer.state_dict())
            setattr(module, name, plain)
        contract.assert_close_rel(run(x), expected, 1e-5, 'plain nn.Linear')


def test_errors_name_the_subclass():
    sub = type('MyMHEA', (MultiHeadExternalAttention,), {'_abbr_': 'my_mhea'})
    with pytest.raises(ValueError, match='MyMHEA.*coef'):
        sub(16, coef=0)
    with pytest.raises(ValueError, match=r'MyMHEA.forward_tokens'):
        sub(16).forward_tokens(torch.randn(2, 3, 8))


class TokenForm(torch.nn.Module):
    """``forward_tokens`` of a module as a forward (for ``torch.func.functional_call``)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module.forward_tokens(x)


@pytest.mark.parametrize('tokens', [False, True], ids=['nchw', 'tokens'])
def test_gradcheck_float64(tokens):
    """Computed in float64 for a float64 input (no fp32 step): the gradients of the input and
    of every parameter pass torch.autograd.gradcheck, in both forms."""
    torch.manual_seed(0)
    module = MultiHeadExternalAttention(8, num_heads=2, coef=2, memory_size=3).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.double)
    if tokens:
        module, x = TokenForm(module), x.flatten(2).transpose(1, 2).contiguous()
    params = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}
    x.requires_grad_()

    def run(x, *values):
        return torch.func.functional_call(module, dict(zip(params, values)), (x,))

    assert run(x, *params.values()).dtype == torch.double
    assert torch.autograd.gradcheck(run, (x, *params.values()))
