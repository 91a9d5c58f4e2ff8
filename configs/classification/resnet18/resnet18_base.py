# ResNet-18 on ImageNet-1k (mmpretrain's recipe) whose backbone is wrapped by
# InsertAttention with no insertion: the baseline. Each config of this folder inherits it and
# inserts one attention module.
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]))
