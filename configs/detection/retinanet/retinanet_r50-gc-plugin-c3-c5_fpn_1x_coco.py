# GC in c3-c5 through mmdet's own ResNet plug-in hook (plugins=), as mmdet's GCNet configs do
# with mmcv's ContextBlock: after conv3 (and its norm) of every Bottleneck of layer2-4.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='GC'), stages=(False, True, True, True), position='after_conv3')
    ]))
