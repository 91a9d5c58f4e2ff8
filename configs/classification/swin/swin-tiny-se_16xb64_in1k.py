_base_ = ['./swin-tiny_base.py']
# SE at the end of every block's FFN branch, before its addition (the residual end of a Swin block)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SE'), at='paper')]))
