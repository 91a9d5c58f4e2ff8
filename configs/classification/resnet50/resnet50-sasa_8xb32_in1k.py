_base_ = ['./resnet50_base.py']
# SASA in place of the 3x3 conv2 of every Bottleneck (the paper's "conv-stem + attention"
# ResNet-50: k = 7, 8 heads; stride-2 blocks attend at stride 1, then a 2x2 average pool)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SASA'), replace='paper')]))
