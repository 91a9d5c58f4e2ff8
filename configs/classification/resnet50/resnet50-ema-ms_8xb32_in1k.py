_base_ = ['./resnet50_base.py']
# Efficient multi-scale attention (EMA, factor 32) at the end of every residual branch, after
# norm3 and before the addition: the author's "same as NAM and CoordAttention" position; which
# ResNet blocks the paper used is unconfirmed
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='EfficientMultiScaleAttention'), at='paper')]))
