_base_ = ['./resnet50_base.py']
# SAN's pairwise self-attention (k = 7, c_r = C / 16, weights shared by 8 channels) in place
# of the 3x3 conv2 of every Bottleneck: the plug-in form (the paper builds its own SAN10/15/19
# networks); relation='patchwise' for the patchwise variant; stride-2 blocks attend at the
# strided centres
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SAN'), replace='paper')]))
