# Swin-T on ImageNet-1k (mmpretrain's recipe) whose backbone is wrapped by InsertAttention
# with no insertion: the baseline. Each config of this folder inherits it and inserts one
# attention module (the token layout of Swin is adapted to NCHW and back).
_base_ = ['mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]))
