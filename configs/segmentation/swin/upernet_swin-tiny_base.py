# UPerNet Swin-T on ADE20K (mmseg's recipe) whose backbone is wrapped by InsertAttention with
# no insertion: the baseline. Each config of this folder inherits it and inserts one attention
# module (the token layout of Swin is adapted to NCHW and back).
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]))
