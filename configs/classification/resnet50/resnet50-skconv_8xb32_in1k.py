_base_ = ['./resnet50_base.py']
# SKConv in place of every Bottleneck's 3x3 conv2 and its norm2 (its paper position). The branch
# convs take the replaced conv's groups: dense on ResNet-50 (37,245,352 params);
# branch_groups=32 puts SKNet's G = 32 unit there (15,318,184). SKNet-50 itself is ResNeXt-50
# (32x4d) with SKConv: ../resnext50/resnext50-32x4d-skconv_8xb32_in1k.py
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SKConv'), replace='paper')]))
