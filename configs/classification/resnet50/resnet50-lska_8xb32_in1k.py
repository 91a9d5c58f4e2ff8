_base_ = ['./resnet50_base.py']
# LSKA (k_size 23) on every residual branch, after its last norm: the paper uses it only
# inside VAN's block (own_block), so at='paper' inserts it at its fallback, residual_end
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='LSKA'), at='paper')]))
