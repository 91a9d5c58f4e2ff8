# YOLOv8-s (mmyolo's recipe: 500 epochs on COCO, 8 GPUs x 16 images) whose backbone is wrapped
# by InsertAttention with no insertion: the baseline, 11,166,544 parameters. Each config of
# this folder inherits it and inserts one attention module into the backbone's bottlenecks:
# the DarknetBottleneck blocks of the C2f (CSPLayerWithTwoConv) layer of each stage, 1-2-2-1
# blocks at deepen_factor 0.33, 6 places; the neck and head are unchanged. Every config uses
# at='paper', which the CSP backbones' preset (cvattn_mm/insertion/presets.py) resolves to:
# - residual_end (SE, CBAM, CoordAttention, EfficientMultiScaleAttention): after the block's
#   conv2 (its second 3x3 ConvModule: conv, BN, SiLU), before the identity addition
#   ('stage[1-4].1.blocks.*.conv2');
# - before_mid_norm (SimAM): after conv2's 3x3 conv, before its BN
#   ('stage[1-4].1.blocks.*.conv2.conv').
# Parameters added (measured): SE 14,154, CBAM 14,754, CoordAttention 17,616,
# EfficientMultiScaleAttention 1,134, SimAM 0.
_base_ = ['mmyolo::yolov8/yolov8_s_syncbn_fast_8xb16-500e_coco.py']
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
