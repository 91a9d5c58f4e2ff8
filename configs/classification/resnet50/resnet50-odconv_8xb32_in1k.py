_base_ = ['./resnet50_base.py']
# ODConv (4x: four kernels) in place of conv1, conv2 and conv3 of every Bottleneck (OD-ResNet-50,
# its paper's position; the stem and the projection shortcuts stay plain convs), trained as the
# official script: the attention temperature falls linearly from 30 to 1 over the first 10
# epochs, set before every iteration, then stays 1. mmpretrain's recipe is the official one
# (100 epochs, SGD lr 0.1, weight decay 1e-4, steps at 30/60/90); the official classifier also
# has a dropout before its fc (0.1 by default), which mmpretrain's LinearClsHead lacks.
model = dict(backbone=dict(insertions=[dict(attention=dict(type='ODConv'), replace='paper')]))
custom_hooks = [dict(type='ODConvTemperatureHook', temp_epoch=10, temp_init=30.)]
