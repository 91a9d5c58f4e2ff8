"""Drawing: colour scales of gates, titles of flat maps, the gate an identity_init site
applies (cvattn_mm/visualization/draw.py and the gain recorded by capture.py)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cvattn_mm  # noqa: F401
from cvattn_mm.insertion import insert_attention
from cvattn_mm.visualization import (
    AttentionMap,
    CapturedMaps,
    capture_attention_maps,
    draw_attention_maps,
)
from cvattn_mm.visualization.draw import color_scale, panel

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def site(maps, gain=None):
    return CapturedMaps('backbone.layer1.0', 'SE', (1, 8, 4, 5), maps, gain)


def scale(norm):
    return float(norm.vmin), float(norm.vmax)


@pytest.mark.parametrize('kind', ['spatial', 'channel'])
def test_gates_have_a_fixed_0_to_1_scale_whatever_their_range(kind):
    values = np.linspace(0.404, 0.412, 20, dtype=np.float32)
    assert scale(color_scale(values, gate=True)) == (0, 1)
    shape = (1, 4, 5) if kind == 'spatial' else (1, 20)
    m = AttentionMap(kind, torch.from_numpy(values).reshape(shape), 'gate')
    _, title = panel(site({'gate': m}), 'gate', m)
    assert 'range 0.404 to 0.412' in title
    assert ('colours 0 to 1' in title) == (kind == 'spatial')  # a histogram has its x axis


def test_other_maps_span_their_range_and_flat_maps_are_centred():
    weights = np.array([0.01, 0.02, 0.03], dtype=np.float32)
    assert scale(color_scale(weights, gate=False)) == pytest.approx((0.01, 0.03))
    # a gate beyond [0, 1] (an identity_init gain above 1) spans its range too
    assert scale(color_scale(np.array([0.5, 1.5]), gate=True)) == (0.5, 1.5)
    for gate in (True, False):
        assert scale(color_scale(np.zeros(6), gate)) == (0, 1)  # not -1..1
        assert scale(color_scale(np.full(6, 0.5), gate)) == (0, 1)
        assert scale(color_scale(np.full(6, 2.0), gate)) == (0, 4)
        assert scale(color_scale(np.full(6, -2.0), gate)) == (-4, 0)


@pytest.mark.parametrize('kind, shape', [('spatial', (1, 4, 5)), ('channel', (1, 8)),
                                         ('weights', (1, 4, 5))])
def test_flat_map_says_constant(kind, shape):
    m = AttentionMap(kind, torch.full(shape, 0.5), 'flat')
    _, title = panel(site({'flat': m}), 'flat', m)
    assert 'constant 0.500' in title and 'range' not in title


class ConvReLU(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def identity_init_model(attention: str):
    torch.manual_seed(0)
    model = ConvReLU()
    insert_attention(model, [dict(attention=dict(type=attention), at='conv', identity_init=True),
                             dict(attention=dict(type='CBAM'), at='relu')])
    return model


def test_identity_init_site_draws_the_gate_it_applies_with_its_gain():
    model = identity_init_model('SE')
    blend = model.attention_sites['conv'].attentions['se']
    blend.gain.data.fill_(0.25)
    x = torch.randn(1, 3, 6, 7)
    captured = capture_attention_maps(model, x)
    assert [c.gain for c in captured] == [0.25, None]
    raw = captured[0].maps['channel_gate']
    drawn, title = panel(captured[0], 'channel_gate', raw)
    assert 'identity_init g=0.25: drawn 1 + g (gate - 1)' in title
    torch.testing.assert_close(drawn.values, 1 + 0.25 * (raw.values - 1))
    # it is the factor the site multiplies its input by
    feature = F.conv2d(x, model.conv.weight, model.conv.bias, padding=1)  # no site hook
    with torch.no_grad():
        blended = blend.eval()(feature)
    torch.testing.assert_close(blended, feature * drawn.values[:, :, None, None])
    # a site without identity_init is drawn as captured
    plain = captured[1].maps['spatial_gate']
    same, plain_title = panel(captured[1], 'spatial_gate', plain)
    assert same is plain and 'identity_init' not in plain_title


def test_gain_0_draws_the_identity_gate_and_weights_stay_the_modules(tmp_path):
    model = identity_init_model('GC')
    captured = capture_attention_maps(model, torch.randn(1, 3, 6, 7))
    assert captured[0].gain == 0.0
    weights = captured[0].maps['context_weights']
    same, title = panel(captured[0], 'context_weights', weights)
    assert same is weights and "identity_init g=0: the module's own map" in title
    gate = AttentionMap('spatial', torch.rand(1, 6, 7), 'gate')
    drawn, title = panel(site({'gate': gate}, gain=0.0), 'gate', gate)
    assert 'constant 1.000' in title and torch.equal(drawn.values, torch.ones(1, 6, 7))
    image = np.zeros((6, 7, 3), np.uint8)
    out = tmp_path / 'maps.png'
    assert len(draw_attention_maps(image, captured, str(out))) == 2
    assert out.read_bytes()[:8] == PNG_SIGNATURE
