# Quickstart, detection: RetinaNet R-18-FPN (mmdet's model, from scratch, slimmer neck and
# head) on the generated 64x64 lit scenes (2 classes: an object's class is its paint, reddish or
# greenish, under a random coloured light that the whole scene's average colour reveals; see
# cvattn_mm/datasets/lit_scene.py). The backbone is wrapped by InsertAttention with no
# insertion: the baseline. Data: `python tools/generate_data.py --quickstart detection` writes
# it into data_root (400 + 100 images of 64x64, QUICKSTART_DATA in
# cvattn_mm/datasets/quickstart.py); `python tools/quickstart.py --task detection` also
# generates it, then trains this config, det_retinanet_r18-se.py and det_retinanet_r18-cbam.py
# with seeds 0, 1 and 2. Recipe (the same for every model): 6 epochs of 50 AdamW steps, lr
# 3e-3 (a 50-step warm-up, then cosine); chosen on the baseline alone.
_base_ = ['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)

data_root = 'data/quickstart/detection/'
metainfo = dict(classes=('reddish_object', 'greenish_object'),
                palette=[(220, 60, 60), (60, 190, 80)])
image_size = 64
neck_channels = 64

model = dict(
    data_preprocessor=dict(mean=[127.5] * 3, std=[64.0] * 3),
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        # trained from scratch: every stage and norm trains
        module=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                    frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
                    norm_eval=False, style='pytorch', init_cfg=None),
        insertions=[]),
    neck=dict(out_channels=neck_channels),
    bbox_head=dict(
        num_classes=len(metainfo['classes']),
        in_channels=neck_channels,
        feat_channels=neck_channels,
        stacked_convs=2,
        # objects are 13-22 px: anchors of 16-25 px on P3 (stride 8)
        anchor_generator=dict(octave_base_scale=2)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    batch_sampler=None,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True, begin=0,
         end=max_epochs),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
