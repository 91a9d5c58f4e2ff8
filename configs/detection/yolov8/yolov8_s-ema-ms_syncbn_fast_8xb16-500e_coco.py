_base_ = ['./yolov8_s_base.py']
# Efficient multi-scale attention (EMA, factor 32: one channel per group in stage 1's
# 32-channel bottleneck) at the end of the residual branch of every backbone bottleneck, before
# the addition: 6 modules, 1,134 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='EfficientMultiScaleAttention'), at='paper')]))
