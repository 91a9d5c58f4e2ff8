_base_ = ['./resnet50_base.py']
# ELA (variant B) at the end of every residual branch; the paper's position in ResNets is
# not confirmed (it compares ELA with Coordinate Attention, which sits there)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='ELA'), at='paper')]))
