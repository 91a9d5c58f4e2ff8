_base_ = ['./resnet50_base.py']
# Gather-Excite GE-theta-plus (the paper's best) at the end of every residual branch, as the
# official RN50-GEPP prototxt: global depthwise gathers whose kernels are the feature sizes at
# 224x224 (56, 28, 14, 7 per stage); maps of other sizes are pooled to them (size_policy='pool')
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='GatherExcite', variant='theta_plus', grid_size=56),
         at='layer1.*.bn3'),
    dict(attention=dict(type='GatherExcite', variant='theta_plus', grid_size=28),
         at='layer2.*.bn3'),
    dict(attention=dict(type='GatherExcite', variant='theta_plus', grid_size=14),
         at='layer3.*.bn3'),
    dict(attention=dict(type='GatherExcite', variant='theta_plus', grid_size=7),
         at='layer4.*.bn3'),
]))
