_base_ = ['./upernet_r50_base.py']
# ExternalAttention after the last two stages (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='ExternalAttention'), at='paper')]))
