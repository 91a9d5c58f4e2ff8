_base_ = ['./resnet50_base.py']
# SK in place of every bottleneck's 3x3 conv (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SK'), at='paper')]))
