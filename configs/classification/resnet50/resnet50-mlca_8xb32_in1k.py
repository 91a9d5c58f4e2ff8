_base_ = ['./resnet50_base.py']
# MLCA at the end of every residual branch, after its last norm (SE's place). Not the paper's
# position: the paper replaces SE in MobileNetV3 blocks (after the depthwise conv's BN)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='MLCA'), at='paper')]))
