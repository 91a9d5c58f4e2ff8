_base_ = ['./resnet50_base.py']
# CoT in place of the 3x3 conv2 of every Bottleneck, with its norm2 (CoTNet-50, its paper's
# position; the host's ReLU after norm2 stays: see CoT's Deviations)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='CoT'), replace='paper')]))
