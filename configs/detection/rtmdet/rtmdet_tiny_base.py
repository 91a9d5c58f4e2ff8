# RTMDet-tiny (mmyolo's recipe: 300 epochs on COCO, 8 GPUs x 32 images, CSPNeXt-tiny
# ImageNet-pretrained) whose backbone is wrapped by InsertAttention with no insertion: the
# baseline, 4,896,168 parameters. Each config of this folder inherits it and inserts one
# attention module into the backbone's bottlenecks: the CSPNeXtBlock of the CSP layer of each
# stage (one block per stage at deepen_factor 0.167, 4 places; 'stage4.2' follows the SPPF);
# the CSP layers' own ChannelAttention, the neck and the head are unchanged. Every config uses
# at='paper', which the CSP backbones' preset (cvattn_mm/insertion/presets.py) resolves to:
# - residual_end (SE, CBAM, CoordAttention, EfficientMultiScaleAttention): after the block's
#   conv2 (5x5 depthwise + 1x1 pointwise ConvModules, each with BN and SiLU), before the
#   identity addition ('stage[1-4].[12].blocks.*.conv2');
# - before_mid_norm (SimAM): after the 5x5 depthwise conv, before its BN
#   ('stage[1-4].[12].blocks.*.conv2.depthwise_conv.conv').
# Parameters added (measured): SE 6,478, CBAM 6,878, CoordAttention 9,456,
# EfficientMultiScaleAttention (factor 8) 7,830, SimAM 0.
_base_ = ['mmyolo::rtmdet/rtmdet_tiny_syncbn_fast_8xb32-300e_coco.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]))
# mmengine marks the top-level typed dicts of a 'mmyolo::' base with _scope_='mmyolo', and its
# Runner passes every key of collate_fn but 'type' to the function: yolov5_collate() got an
# unexpected keyword argument '_scope_' (open-mmlab/mmyolo#886). The same function, unmarked:
train_dataloader = dict(collate_fn=dict(_delete_=True, type='yolov5_collate'))
