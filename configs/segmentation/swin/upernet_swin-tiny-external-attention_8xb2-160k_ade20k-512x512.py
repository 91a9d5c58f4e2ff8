_base_ = ['./upernet_swin-tiny_base.py']
# ExternalAttention after the last block of the last two stages (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='ExternalAttention'), at='paper')]))
