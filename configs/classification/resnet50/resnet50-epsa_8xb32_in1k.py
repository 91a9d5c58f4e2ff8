_base_ = ['./resnet50_base.py']
# EPSANet's pyramid split attention in place of the 3x3 conv2 of every Bottleneck (its paper's
# position; bn2 and the ReLU of the host block follow it): 22,561,715 parameters, as the
# official EPSANet-50 (Small)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='PyramidSplitAttention'), replace='paper')]))
