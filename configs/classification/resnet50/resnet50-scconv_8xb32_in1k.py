_base_ = ['./resnet50_base.py']
# SCConv in place of the 3x3 conv2 of every Bottleneck (SCNet-50, its paper's position); the
# host's norm2 and ReLU stay after it
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SCConv'), replace='paper')]))
