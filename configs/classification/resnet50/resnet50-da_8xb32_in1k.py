_base_ = ['./resnet50_base.py']
# DualAttention (DANet position + channel attention) after the last two stages (late_stages: the
# plug-in form of its paper position, DANet's head on the last map)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='DualAttention'), at='paper')]))
