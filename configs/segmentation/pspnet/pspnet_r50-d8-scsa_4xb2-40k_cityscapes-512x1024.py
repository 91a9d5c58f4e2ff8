_base_ = ['./pspnet_r50-d8_base.py']
# SCSA on every residual branch, after the 3x3 conv, its norm and activation (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SCSA'), at='paper')]))
