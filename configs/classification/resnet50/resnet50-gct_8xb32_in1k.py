_base_ = ['./resnet50_base.py']
# GCT before every conv of the backbone (its paper's position: the stem conv, conv1-3 of every
# block and the downsample convs, 53 modules); as the authors' README asks, no weight decay on
# the gating bias beta (the key matches only the betas of the inserted GCTs)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='GCT'), at='paper')]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.gct.beta': dict(decay_mult=0.)}))
