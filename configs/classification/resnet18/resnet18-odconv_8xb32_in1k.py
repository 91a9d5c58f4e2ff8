_base_ = ['./resnet18_base.py']
# ODConv (4x) in place of conv1 and conv2 of every BasicBlock (OD-ResNet-18, its paper's
# position; the stem and the projection shortcuts stay plain convs), with the official
# temperature annealing (30 -> 1 over the first 10 epochs); kernel_num=1 gives the 1x model
model = dict(backbone=dict(insertions=[dict(attention=dict(type='ODConv'), replace='paper')]))
custom_hooks = [dict(type='ODConvTemperatureHook', temp_epoch=10, temp_init=30.)]
