_base_ = ['./retinanet_r50_fpn_base.py']
# Efficient multi-scale attention (EMA, factor 32) after the last norm of every block of c3-c5,
# before the addition
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='EfficientMultiScaleAttention'), at='layer[234].*.bn3')]))
