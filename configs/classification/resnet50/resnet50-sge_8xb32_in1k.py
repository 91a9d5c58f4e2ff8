_base_ = ['./resnet50_base.py']
# SGE (64 groups) on every residual branch, after its last norm (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SGE'), at='paper')]))
