_base_ = ['./resnet18_base.py']
# PooledSelfAttention after the last two stages (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='PooledSelfAttention'), at='paper')]))
