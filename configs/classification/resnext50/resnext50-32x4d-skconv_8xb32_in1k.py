# SKNet-50 (Li et al., Selective Kernel Networks, CVPR 2019): ResNeXt-50 (32x4d) on ImageNet-1k
# (mmpretrain's recipe) with the 3x3 grouped conv2 of every Bottleneck, and the norm after it,
# replaced by SKConv (G = the conv's 32 groups, M = 2, r = 16, L = 32): 27,479,784 parameters
# (the official README and the paper: 27.5M).
_base_ = ['mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[dict(attention=dict(type='SKConv'), replace='paper')]))
