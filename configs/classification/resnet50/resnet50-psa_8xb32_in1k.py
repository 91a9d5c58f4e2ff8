_base_ = ['./resnet50_base.py']
# Polarized self-attention (paper form, sequential layout) after the 3x3 conv, its norm and
# activation of every Bottleneck (the official HRNet puts PSA_s after conv1-bn1-relu of every
# BasicBlock); form='official' gives the official PSA_s
model = dict(backbone=dict(
    insertions=[dict(attention=dict(type='PolarizedSelfAttention'), at='paper')]))
