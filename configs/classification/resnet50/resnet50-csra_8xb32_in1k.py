# ResNet-50 on ImageNet-1k (mmpretrain's recipe) with the class-specific residual attention
# head (CSRA, single-label) on the last feature map instead of pooling and a linear head.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py']
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    neck=None,
    head=dict(_delete_=True, type='CSRAHead', num_classes=1000, in_channels=2048))
