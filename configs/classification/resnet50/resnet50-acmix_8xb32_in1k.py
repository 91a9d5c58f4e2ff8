_base_ = ['./resnet50_base.py']
# ACmix in place of the 3x3 conv2 of every Bottleneck (ACmix-ResNet-50, its paper's position);
# the host's norm2 and ReLU stay after it
model = dict(backbone=dict(insertions=[dict(attention=dict(type='ACmix'), replace='paper')]))
