_base_ = ['./resnet50_base.py']
# LKA (VAN) on every residual branch, after its last norm: VAN uses it only inside its own
# block (own_block), so at='paper' inserts it at its fallback position, residual_end
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='LKA'), at='paper')]))
