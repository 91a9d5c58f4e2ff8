_base_ = ['./resnet50_base.py']
# Residual Attention Network soft masks around stages 1 to 3 (its paper's position): each
# reads the output of the stage's first block and replaces the output of its last block T by
# (1 + M) T. levels='auto' builds 3 levels everywhere and pools while the map stays >= 7
# (56 -> 7 in layer1, as the official Attention-56 stage 1); the official masks of the
# stages at 28 and 14 have 2 and 1 levels: see resnet50-ran-official_8xb32_in1k.py
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='ResidualAttentionMask'), at='paper')]))
