_base_ = ['./rtmdet_tiny_base.py']
# CBAM at the end of the residual branch of every backbone CSPNeXtBlock, before the addition:
# 4 modules, 6,878 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CBAM'), at='paper')]))
