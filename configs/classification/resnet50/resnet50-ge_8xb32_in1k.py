_base_ = ['./resnet50_base.py']
# Gather-Excite GE-theta-minus (global: x * sigmoid(GAP(x)), no parameters) at the end of every
# residual branch (its paper's position); the paper's ResNet-50 that outperforms ResNet-101
model = dict(backbone=dict(insertions=[dict(attention=dict(type='GatherExcite'), at='paper')]))
