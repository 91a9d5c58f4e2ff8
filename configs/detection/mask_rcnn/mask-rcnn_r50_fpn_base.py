# Mask R-CNN R-50-FPN 1x on COCO (mmdet's recipe) whose backbone is wrapped by
# InsertAttention with no insertion: the baseline. Each config of this folder inherits it and
# inserts one attention module into stages c3-c5 (layer2-4), as mmdet's GCNet configs do.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]))
