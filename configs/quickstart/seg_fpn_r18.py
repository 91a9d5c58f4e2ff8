# Quickstart, segmentation: Semantic FPN R-18 (mmseg's sem_fpn model: Panoptic FPN's semantic
# branch, FPNHead; from scratch, neck and head 64 channels wide) on the generated 64x64 lit
# scenes (background and 2 object classes: an object's class is its paint, reddish or greenish,
# under a random coloured light that the whole scene's average colour reveals; see
# cvattn_mm/datasets/lit_scene.py). A plain, non-dilated ResNet-18 (strides 4-32) and no
# global context module in the head (unlike PSPNet's pyramid pooling), so that whatever global
# context the model uses comes from its backbone; about 5x cheaper per image than PSPNet
# R-18-D8. The backbone is wrapped by InsertAttention with no insertion: the baseline. Data:
# `python tools/generate_data.py --quickstart segmentation` writes it into data_root (400 + 100
# images of 64x64, QUICKSTART_DATA in cvattn_mm/datasets/quickstart.py); `python
# tools/quickstart.py --task segmentation` also generates it, then trains this config,
# seg_fpn_r18-se.py and seg_fpn_r18-cbam.py with seeds 0, 1 and 2. Recipe (the same for every
# model): 360 AdamW steps of 8 images, lr 3e-3 (a 30-step warm-up, then cosine); chosen on the
# baseline alone (after 300 steps its seeds ended 85.6 / 86.0 / 78.1 mIoU: the classes are
# learnt late in the schedule; 400 steps gave 88.8 / 88.4 / 88.3 but took 10 min 3 s).
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)

data_root = 'data/quickstart/segmentation'
metainfo = dict(classes=('background', 'reddish_object', 'greenish_object'),
                palette=[(0, 0, 0), (220, 60, 60), (60, 190, 80)])
image_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)  # one CPU process: no SyncBN
channels = 64

model = dict(
    data_preprocessor=dict(size=image_size, mean=[127.5] * 3, std=[64.0] * 3),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module=dict(type='ResNetV1c', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                    dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2), norm_cfg=norm_cfg,
                    norm_eval=False, style='pytorch', contract_dilation=True),
        insertions=[]),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=channels),
    decode_head=dict(in_channels=[channels] * 4, channels=channels,
                     num_classes=len(metainfo['classes']), norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train')))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 360
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', T_max=max_iters, by_epoch=False, begin=0,
         end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0, deterministic=False)
