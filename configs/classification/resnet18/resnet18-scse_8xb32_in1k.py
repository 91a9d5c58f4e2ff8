_base_ = ['./resnet18_base.py']
# SCSE on every residual branch, after its last norm (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SCSE'), at='paper')]))
