_base_ = ['./resnet50_base.py']
# SimAM on every residual branch, after the (last) 3x3 conv, before its norm (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SimAM'), at='paper')]))
