_base_ = ['./rtmdet_tiny_base.py']
# SE (reduction 16) at the end of the residual branch of every backbone CSPNeXtBlock, before
# the addition: 4 modules, 6,478 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SE'), at='paper')]))
