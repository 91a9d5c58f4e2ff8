# UPerNet R-50 on Cityscapes (mmseg's recipe) whose backbone is wrapped by InsertAttention with
# no insertion: the baseline. Each config of this folder inherits it and inserts one attention
# module. mmseg's EncoderDecoder passes its `pretrained` on to the backbone config;
# InsertAttention hands it to the wrapped ResNetV1c, as for the plain backbone.
_base_ = ['mmseg::upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]))
