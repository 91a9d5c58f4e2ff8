_base_ = ['./resnet50_base.py']
# Residual Attention Network soft masks around stages 1 to 3 with the official level counts
# of Attention-56 (3, 2, 1 levels for the 56x56, 28x28, 14x14 stages, coarsest map 7x7).
# An around place 'first~last' reads the input of block `first` (the output of block 0)
# and replaces the output of block `last`
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='ResidualAttentionMask', levels=3), at='layer1.1~layer1.2'),
    dict(attention=dict(type='ResidualAttentionMask', levels=2), at='layer2.1~layer2.3'),
    dict(attention=dict(type='ResidualAttentionMask', levels=1), at='layer3.1~layer3.5'),
]))
