"""Conv-BN fusion with attention sites between a conv and its norm (insertion/fusion.py)."""
import copy

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import fuse_conv_bn as mmcv_fuse_conv_bn
from mmpretrain.models import ResNet

import cvattn_mm  # noqa: F401
from cvattn_mm.insertion import fuse_conv_bn, insert_attention

pytestmark = pytest.mark.usefixtures('one_torch_thread')

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
BLOCKS = [f'layer{i + 1}.{j}' for i, n in enumerate((3, 4, 6, 3)) for j in range(n)]


def resnet50(*insertions):
    """An mmpretrain ResNet-50 of a quarter width (for speed) in eval mode whose norms have
    random statistics (with the default ones, a norm is nearly the identity and fusion errors
    would hide)."""
    torch.manual_seed(0)
    model = insert_attention(ResNet(depth=50, stem_channels=16, base_channels=16),
                             list(insertions), example_inputs=(X, ))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    model.eval()  # mmpretrain's ResNet.train() returns None
    return model


def output(model):
    with torch.no_grad():
        return model(X)[-1]


def relative_difference(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def norm_paths(model):
    return {p for p, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_mmcv_fusion_across_simam_is_refused():
    model = resnet50(dict(attention=dict(type='SimAM'), at='paper'))
    assert model.attention_sites['layer1-0-conv2'].split_pair == ('layer1.0.conv2',
                                                                   'layer1.0.bn2')
    mmcv_fuse_conv_bn(model)
    with pytest.raises(RuntimeError, match=(
            r"site 'layer1\.0\.conv2' \(SimAM\) is on the output of the conv "
            r"'layer1\.0\.conv2', before its norm 'layer1\.0\.bn2', but 'layer1\.0\.bn2' is now "
            r'Identity: the norm was folded into the conv.*'
            r'norm\(conv\(x\)\) instead of conv\(x\).*cvattn_mm\.insertion\.fuse_conv_bn')):
        output(model)


def test_our_fusion_leaves_the_pairs_split_by_simam():
    model = resnet50(dict(attention=dict(type='SimAM'), at='paper'))
    ref = output(model)
    fuse_conv_bn(nn.ModuleList([model]))  # the sites of submodules are found
    assert norm_paths(model) == {f'{b}.bn2' for b in BLOCKS}
    assert relative_difference(output(model), ref) < 1e-5


def test_sites_after_the_norm_fuse_everywhere():
    model = resnet50(dict(attention=dict(type='SE'), at='paper'))
    assert all(s.split_pair is None for s in model.attention_sites.values())
    ref = output(model)
    for fuse in (mmcv_fuse_conv_bn, fuse_conv_bn):
        fused = fuse(copy.deepcopy(model))
        assert not norm_paths(fused)
        assert relative_difference(output(fused), ref) < 1e-5


def test_a_site_on_the_norm_input_splits_the_pair():
    model = resnet50(dict(attention=dict(type='SimAM'), at='layer1.0.bn2:input'))
    site = model.attention_sites['layer1-0-bn2:input']
    assert site.split_pair == ('layer1.0.conv2', 'layer1.0.bn2')
    ref = output(model)
    with pytest.raises(RuntimeError, match=r"'layer1\.0\.bn2:input' \(SimAM\) is on the input "
                                           r"of the norm 'layer1\.0\.bn2', after the conv "
                                           r"'layer1\.0\.conv2'"):
        output(mmcv_fuse_conv_bn(copy.deepcopy(model)))
    fuse_conv_bn(model)
    assert norm_paths(model) == {'layer1.0.bn2'}
    assert relative_difference(output(model), ref) < 1e-5


class ConvNorms(nn.Module):
    """Pairs of every kind: conv with a bias, norm without affine parameters, norm without
    running statistics, and a norm with no conv before it."""

    def __init__(self):
        super().__init__()
        self.norm0 = nn.BatchNorm2d(3)
        self.conv1 = nn.Conv2d(3, 8, 3, bias=True)
        self.norm1 = nn.BatchNorm2d(8, affine=False)
        self.conv2 = nn.Conv2d(8, 8, 1, groups=2, bias=False)
        self.norm2 = nn.BatchNorm2d(8, track_running_stats=False)

    def forward(self, x):
        return self.norm2(self.conv2(self.norm1(self.conv1(self.norm0(x)))))


def test_fold_arithmetic():
    torch.manual_seed(0)
    model = ConvNorms()
    for norm in (model.norm0, model.norm1):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        ref = model(x)
        fuse_conv_bn(model)
        out = model(x)
    assert [type(m).__name__ for m in model.children()] == [
        'BatchNorm2d', 'Conv2d', 'Identity', 'Conv2d', 'BatchNorm2d']
    assert relative_difference(out, ref) < 1e-6


class Holder(nn.Module):
    """A detector-like parent: ``backbone`` is the model with attention sites."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)


def test_efficient_conv_bn_eval_is_refused_where_it_would_drop_attention():
    # mmengine's Runner calls turn_on_efficient_conv_bn_eval(model, cfg.efficient_conv_bn_eval);
    # its fx trace records bn2 without the SE hook, so the backbone would run without SE
    from mmengine.model.efficient_conv_bn_eval import turn_on_efficient_conv_bn_eval
    model = Holder(resnet50(dict(attention=dict(type='SE'), at='paper')))
    plain = ResNet(depth=50, stem_channels=16, base_channels=16)
    plain.load_state_dict(model.backbone.state_dict(), strict=False)  # + attention_sites.*
    plain.eval()
    assert relative_difference(output(plain), output(model.backbone)) > 1e-2
    turn_on_efficient_conv_bn_eval(model, 'backbone')
    with pytest.raises(RuntimeError, match=r"ResNet: the attention sites at layer1.0.bn3, "
                       r"layer1.1.bn3, layer1.2.bn3, layer2.0.bn3 and 12 more are hooked on "
                       r"torch.nn layers.*efficient_conv_bn_eval"):
        output(model.backbone)
    # without the check the traced forward computes the plain backbone
    model.backbone._forward_pre_hooks.clear()
    assert relative_difference(output(model.backbone), output(plain)) < 1e-6


def test_tracing_a_parent_of_the_model_is_refused_during_the_trace():
    model = Holder(resnet50(dict(attention=dict(type='CBAM'), at='layer4.*.conv2')))
    with pytest.raises(RuntimeError, match=r'attention sites at layer4.0.conv2, layer4.1.conv2, '
                       r'layer4.2.conv2 are hooked on torch.nn layers'):
        torch.fx.symbolic_trace(model)
    # without sites on torch.nn layers the trace goes on (and fails or records them itself)
    bare = Holder(ResNet(depth=18, stem_channels=8, base_channels=8))
    bare.eval()
    traced = torch.fx.symbolic_trace(bare)
    assert relative_difference(traced(X)[-1], bare(X)[-1]) == 0
