_base_ = ['./resnet50_base.py']
# DeformableAttention2D after the last two stages (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='DeformableAttention2D'), at='paper')]))
