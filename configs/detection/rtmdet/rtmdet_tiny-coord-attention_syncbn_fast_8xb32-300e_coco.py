_base_ = ['./rtmdet_tiny_base.py']
# Coordinate attention at the end of the residual branch of every backbone CSPNeXtBlock, before
# the addition: 4 modules, 9,456 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CoordAttention'), at='paper')]))
