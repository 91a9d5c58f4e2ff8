_base_ = ['./rtmdet_tiny_base.py']
# SimAM after the 5x5 depthwise conv of every backbone CSPNeXtBlock, before its norm: 4
# modules, no parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SimAM'), at='paper')]))
