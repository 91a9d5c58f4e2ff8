_base_ = ['./rtmdet_tiny_base.py']
# Efficient multi-scale attention (EMA) at the end of the residual branch of every backbone
# CSPNeXtBlock, before the addition: 4 modules, 7,830 parameters. factor 8 instead of the
# official 32: the blocks have 24, 48, 96 and 192 channels, and 32 does not divide 24
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='EfficientMultiScaleAttention', factor=8), at='paper')]))
