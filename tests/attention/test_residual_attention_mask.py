"""ResidualAttentionMask: the mask equation, the 1.5 T check, parameter count, levels, maps,
variants and argument checks."""
import pytest
import torch

from cvattn_mm.attention.channel_spatial.residual_attention_mask import (
    PreActUnit,
    ResidualAttentionMask,
)

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(levels=1), dict(levels=2), dict(min_size=1),
                                    dict(align_corners=False),
                                    dict(norm_cfg=dict(type='GN', num_groups=4))],
                         ids=['levels1', 'levels2', 'min_size1', 'no_align', 'gn'])
def test_contract_variants(kwargs):
    run_contract(lambda: ResidualAttentionMask(32, **kwargs))


# ---- an independent implementation of the paper's (prototxt's) mask, plain tensor ops ----

def ref_norm(x, norm, training):
    """Batch norm: batch statistics (biased variance) in training, else the running ones."""
    if training:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    x_hat = (x - mean[:, None, None]) / (var[:, None, None] + norm.eps).sqrt()
    return x_hat * norm.weight[:, None, None] + norm.bias[:, None, None]


def ref_conv(x, conv):
    """A bias-free conv of kernel 1 or 3 (padding 1) as sums of shifted 1x1 products."""
    w = conv.weight
    k = w.shape[-1]
    h, wd = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (k // 2,) * 4)
    out = 0
    for i in range(k):
        for j in range(k):
            out = out + torch.einsum('oc,nchw->nohw', w[:, :, i, j],
                                     padded[:, :, i:i + h, j:j + wd])
    return out


def ref_unit(x, unit, training):
    y = ref_conv(ref_norm(x, unit.norm1, training).clamp_min(0), unit.conv1)
    y = ref_conv(ref_norm(y, unit.norm2, training).clamp_min(0), unit.conv2)
    y = ref_conv(ref_norm(y, unit.norm3, training).clamp_min(0), unit.conv3)
    return x + y


def ref_pool(x):
    """Caffe max pooling 3x3, stride 2, no padding, ceil mode: windows clipped at the end."""
    h, w = x.shape[-2:]
    oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
    rows = torch.stack([x[:, :, 2 * i:2 * i + 3].amax(2) for i in range(oh)], 2)
    return torch.stack([rows[:, :, :, 2 * j:2 * j + 3].amax(3) for j in range(ow)], 3)


def ref_resize(x, size):
    """Bilinear with aligned corners: output i samples input position i (h_in-1)/(h_out-1)."""
    def weights(n_in, n_out):
        pos = torch.arange(n_out, dtype=x.dtype) * ((n_in - 1) / (n_out - 1) if n_out > 1
                                                     else 0.)
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = pos - lo
        m = torch.zeros(n_out, n_in, dtype=x.dtype)
        m[torch.arange(n_out), lo] += 1 - frac
        m[torch.arange(n_out), hi] += frac
        return m
    return torch.einsum('ih,nchw,jw->ncij', weights(x.shape[2], size[0]), x,
                        weights(x.shape[3], size[1]))


def ref_output(ran, trunk, mask_input, training, pools):
    """(1 + M) T with the mask of the prototxt: ``pools`` says which levels pool."""
    y, skips = mask_input, []
    levels = len(ran.down)
    for level in range(levels):
        if pools[level]:
            y = ref_pool(y)
        y = ref_unit(y, ran.down[level], training)
        if level < levels - 1:
            skips.append(ref_unit(y, ran.skip[level], training))
    y = ref_unit(y, ran.bottom, training)
    for level in reversed(range(levels - 1)):
        y = ref_unit(ref_resize(y, skips[level].shape[-2:]) + skips[level], ran.up[level],
                     training)
    y = ref_resize(y, trunk.shape[-2:])
    y = ref_conv(ref_norm(y, ran.norm1, training).clamp_min(0), ran.conv1)
    y = ref_conv(ref_norm(y, ran.norm2, training).clamp_min(0), ran.conv2)
    return trunk * (1 + torch.sigmoid(y))


def randomised(ran):
    perturb_parameters(ran, scale=0.3).double()
    with torch.no_grad():
        for m in ran.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return ran


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('levels,size,pools', [
    (3, (16, 16), [True, False, False]),        # 16 -> 8; 8 -> 4 < 7: not pooled
    (2, (15, 13), [True, True]),                # min_size 1 below: 15x13 -> 7x6 -> 3x3
    (1, (5, 6), [True]),                        # the first level pools any map >= 3
    (2, (2, 9), [False, False]),                # below 3: no pooling at all
])
def test_equation_float64(levels, size, pools, training):
    torch.manual_seed(0)
    ran = randomised(ResidualAttentionMask(8, levels=levels, min_size=1 if levels == 2 and
                                           size == (15, 13) else 7)).train(training)
    assert ran.pooled_levels(size) == pools
    trunk = torch.randn(2, 8, *size, dtype=torch.float64)
    mask_input = torch.randn(2, 8, *size, dtype=torch.float64)
    expected = ref_output(ran, trunk, mask_input, training, pools)
    torch.testing.assert_close(ran(trunk, mask_input), expected, rtol=1e-12, atol=1e-12)


def test_mask_input_of_another_size_is_resized_to_the_trunk():
    torch.manual_seed(0)
    ran = randomised(ResidualAttentionMask(8, levels=2)).eval()
    trunk = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    mask_input = torch.randn(1, 8, 13, 11, dtype=torch.float64)
    expected = ref_output(ran, trunk, mask_input, False, ran.pooled_levels((13, 11)))
    torch.testing.assert_close(ran(trunk, mask_input), expected, rtol=1e-12, atol=1e-12)


def test_last_conv_zero_gives_one_and_a_half_times_the_trunk():
    """The spec's check: sigma(0) = 1/2, so the output is exactly 1.5 T."""
    torch.manual_seed(0)
    ran = perturb_parameters(ResidualAttentionMask(8)).train()
    torch.nn.init.zeros_(ran.conv2.weight)
    trunk, mask_input = torch.randn(2, 8, 12, 10), torch.randn(2, 8, 12, 10)
    assert torch.equal(ran(trunk, mask_input), 1.5 * trunk)
    assert torch.equal(ran.eval()(trunk), 1.5 * trunk)


def test_mask_input_defaults_to_x():
    torch.manual_seed(0)
    ran = perturb_parameters(ResidualAttentionMask(8)).eval()
    x = torch.randn(2, 8, 9, 9)
    assert torch.equal(ran(x), ran(x, x))
    assert not torch.equal(ran(x), ran(x, torch.randn_like(x)))


def expected_params(c, levels):
    return (3 * levels - 1) * (17 * c * c // 16 + 3 * c) + 2 * c * c + 4 * c


@pytest.mark.parametrize('channels', [4, 16, 64, 256])
@pytest.mark.parametrize('levels', [1, 2, 3])
def test_params_formula(channels, levels):
    ran = ResidualAttentionMask(channels, levels=levels)
    assert sum(p.numel() for p in ran.parameters()) == expected_params(channels, levels)
    units = [m for m in ran.modules() if isinstance(m, PreActUnit)]
    assert len(units) == 3 * levels - 1
    assert all(m.bias is None for m in ran.modules()
               if isinstance(m, torch.nn.Conv2d))


def test_paper_counts_at_256():
    assert expected_params(256, 3) == 695_296 and expected_params(256, 2) == 484_096
    assert expected_params(256, 1) == 272_896
    assert sum(p.numel() for p in ResidualAttentionMask(256).parameters()) == 695_296


def test_levels_auto():
    """'auto' builds 3 levels and pools while the map stays >= 7 (Attention-56: 56 -> 7)."""
    ran = ResidualAttentionMask(8)
    assert ran.levels == 'auto' and ran.num_levels == 3
    assert ran.pooled_levels((56, 56)) == [True, True, True]      # 28, 14, 7
    assert ran.pooled_levels((28, 28)) == [True, True, False]     # 14, 7, (4)
    assert ran.pooled_levels((14, 14)) == [True, False, False]    # 7, (4)
    assert ran.pooled_levels((7, 9)) == [True, False, False]      # >= 3: one level
    assert ran.pooled_levels((2, 40)) == [False, False, False]
    assert ran.pooled_levels((57, 61)) == [True, True, True]      # 28x30, 14x15, 7x7
    assert ResidualAttentionMask(8, levels=2).pooled_levels((28, 28)) == [True, True]
    assert ResidualAttentionMask(8, levels=1).pooled_levels((14, 14)) == [True]
    fixed = ResidualAttentionMask(8, levels=3)
    fixed.load_state_dict(ran.state_dict())
    x = torch.randn(1, 8, 15, 15)
    assert torch.equal(fixed.eval()(x), ran.eval()(x))


def test_forward_rebuilt_from_the_maps():
    torch.manual_seed(0)
    ran = perturb_parameters(ResidualAttentionMask(8, levels=2)).eval()
    x = torch.randn(2, 8, 11, 7)
    mask = ran.soft_mask(x, x.shape[-2:])
    assert torch.equal(ran(x), x + x * mask)
    maps = ran.attention_maps(x)
    assert list(maps) == ['soft_mask'] and maps['soft_mask'].kind == 'spatial'
    assert torch.equal(maps['soft_mask'].values, mask.mean(1))
    assert 0 <= maps['soft_mask'].values.min() <= maps['soft_mask'].values.max() <= 1


def test_argument_errors():
    with pytest.raises(ValueError, match="ResidualAttentionMask: levels must be 'auto' or an"):
        ResidualAttentionMask(8, levels='deep')
    with pytest.raises(ValueError, match='ResidualAttentionMask: levels must be >= 1, got 0'):
        ResidualAttentionMask(8, levels=0)
    with pytest.raises(ValueError, match='ResidualAttentionMask: levels must be an integer'):
        ResidualAttentionMask(8, levels=2.0)
    with pytest.raises(ValueError, match='ResidualAttentionMask: min_size must be >= 1'):
        ResidualAttentionMask(8, min_size=0)
    with pytest.raises(ValueError, match='ResidualAttentionMask: align_corners must be a bool'):
        ResidualAttentionMask(8, align_corners=1)
    ran = ResidualAttentionMask(8)
    with pytest.raises(ValueError, match='ResidualAttentionMask was built for in_channels=8 '
                                         'but got 4 channels'):
        ran(torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r'ResidualAttentionMask expects an \(N, C, H, W\)'):
        ran(torch.randn(1, 8, 5, 5), torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match='ResidualAttentionMask: mask_input has batch 1, x has 2'):
        ran(torch.randn(2, 8, 5, 5), torch.randn(1, 8, 5, 5))

    class Sub(ResidualAttentionMask):
        pass

    with pytest.raises(ValueError, match='Sub: levels must be >= 1'):
        Sub(8, levels=-1)
