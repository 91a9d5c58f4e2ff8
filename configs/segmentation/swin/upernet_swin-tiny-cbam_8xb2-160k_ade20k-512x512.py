_base_ = ['./upernet_swin-tiny_base.py']
# CBAM at the end of every block's FFN branch, before its addition
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CBAM'), at='paper')]))
