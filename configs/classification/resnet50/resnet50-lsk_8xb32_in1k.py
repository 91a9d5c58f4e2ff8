_base_ = ['./resnet50_base.py']
# LSKBlock (bare LSK unit) on every residual branch, after its last norm: the paper uses it
# only inside LSKNet's block (own_block), so at='paper' inserts it at its fallback,
# residual_end
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='LSKBlock'), at='paper')]))
