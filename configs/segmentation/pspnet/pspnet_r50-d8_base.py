# PSPNet R-50-D8 on Cityscapes (mmseg's recipe) whose backbone is wrapped by InsertAttention with
# no insertion: the baseline. Each config of this folder inherits it and inserts one attention
# module. mmseg's EncoderDecoder passes its `pretrained` into the backbone config, which
# InsertAttention does not take: the backbone's own init_cfg loads those weights instead.
_base_ = ['mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module=dict(
            type='ResNetV1c',
            depth=50,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            dilations=(1, 1, 2, 4),
            strides=(1, 2, 1, 1),
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            norm_eval=False,
            style='pytorch',
            contract_dilation=True,
            init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnet50_v1c')),
        insertions=[]))
