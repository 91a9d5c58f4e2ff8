_base_ = ['./resnet50_base.py']
# CPCA on every residual branch, after its last norm: CPCANet uses it only inside its own
# block (x + CPCA(BN(x))), so at='paper' inserts it at its fallback position, residual_end
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CPCA'), at='paper')]))
