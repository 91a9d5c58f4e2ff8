# Quickstart, classification: ResNet-18 (mmpretrain's model, from scratch) on the generated
# 32x32 "coloured light" data set (3 classes: the central object's reflectance is bluish,
# greenish or reddish; a random coloured light hides it, and only the average colour of the
# confetti around it reveals the light). The backbone is wrapped by InsertAttention with no
# insertion: the baseline. Data: `python tools/generate_data.py --quickstart classification`
# writes it into data_root (6000 + 1500 images of 32x32, QUICKSTART_DATA in
# cvattn_mm/datasets/quickstart.py); `python tools/quickstart.py` also generates it, then
# trains this config, cls_resnet18-se.py and cls_resnet18-cbam.py with seeds 0, 1 and 2.
# One recipe for every model (chosen on the baseline's reliability over seeds): 2 epochs of
# batch 32 (376 AdamW steps), one warm-up epoch, cosine. The same number of steps over 2000
# images (6 epochs) left the baseline's seeds 5 points apart (87.0 / 89.0 / 84.2 %); 6000
# images seen twice, 2.4 (91.2 / 89.8 / 88.8 %). tools/train.py works on it once the data
# exists.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py', 'mmpretrain::_base_/default_runtime.py'
]
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)

data_root = 'data/quickstart/classification'
classes = ('bluish', 'greenish', 'reddish')

model = dict(
    backbone=dict(
        _delete_=True,
        type='InsertAttention',
        module={{_base_.model.backbone}},
        insertions=[]),
    head=dict(num_classes=len(classes), topk=(1, )))

data_preprocessor = dict(
    num_classes=len(classes), mean=[127.5] * 3, std=[64.0] * 3, to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train',
                 with_label=True, metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='val',
                 with_label=True, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

max_epochs = 2
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
