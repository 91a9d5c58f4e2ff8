_base_ = ['./upernet_r50_base.py']
# GC on every residual branch, after its last norm (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='GC'), at='paper')]))
