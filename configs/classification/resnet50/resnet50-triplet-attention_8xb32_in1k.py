_base_ = ['./resnet50_base.py']
# TripletAttention on every residual branch, after its last norm (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='TripletAttention'), at='paper')]))
