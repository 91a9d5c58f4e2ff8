_base_ = ['./swin-tiny_base.py']
# SCSA at the end of every block's FFN branch, before its addition: its paper's position (after the
# 3x3 conv of a residual branch) has no counterpart in a Swin block, so it takes the residual end,
# as SE and CBAM do
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SCSA'), at='stages.*.blocks.*.ffn.layers')]))
