_base_ = ['./resnet50_base.py']
# SRM at the end of every residual branch (its paper's position); as the official training,
# no weight decay on its parameters
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SRM'), at='paper')]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.srm.': dict(decay_mult=0.)}))
