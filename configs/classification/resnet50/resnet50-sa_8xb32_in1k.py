_base_ = ['./resnet50_base.py']
# Shuffle attention (G = 64) at the end of every residual branch (after bn3, before the
# addition), as in the official SABottleneck
model = dict(backbone=dict(insertions=[dict(attention=dict(type='ShuffleAttention'), at='paper')]))
