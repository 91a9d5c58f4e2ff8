_base_ = ['./resnet50-odconv_8xb32_in1k.py']
# ODConv (1x: one kernel per conv, the default of the official od_resnet.py) in place of
# conv1, conv2 and conv3 of every Bottleneck, with the same temperature annealing
model = dict(backbone=dict(
    insertions=[dict(attention=dict(type='ODConv', kernel_num=1), replace='paper')]))
