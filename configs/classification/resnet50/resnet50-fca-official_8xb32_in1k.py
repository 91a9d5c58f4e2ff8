_base_ = ['./resnet50_base.py']
# FCA as in the official FcaNet-50: at the end of every residual branch, with the DCT grid of
# the stage's feature size at 224x224 input (56, 28, 14, 7 for layer1-4), so that no map is
# pooled at that input. The filters stay out of the checkpoint; persistent_dct=True keeps
# them, as the official state dict does (22 MB for the 16 modules).
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='FCA', grid_size=56), at='layer1.*.bn3'),
    dict(attention=dict(type='FCA', grid_size=28), at='layer2.*.bn3'),
    dict(attention=dict(type='FCA', grid_size=14), at='layer3.*.bn3'),
    dict(attention=dict(type='FCA', grid_size=7), at='layer4.*.bn3'),
]))
