_base_ = ['./resnet18_base.py']
# SimplifiedNonLocal on every residual branch, after its last norm (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SimplifiedNonLocal'), at='paper')]))
