_base_ = ['./resnet50_base.py']
# FCA at the end of every residual branch (its paper's position) with the default 7x7 DCT grid
# in every stage: maps larger than 7x7 are adaptive-pooled to it. The official FcaNet-50 grids
# (56/28/14/7 per stage): resnet50-fca-official_8xb32_in1k.py
model = dict(backbone=dict(insertions=[dict(attention=dict(type='FCA'), at='paper')]))
