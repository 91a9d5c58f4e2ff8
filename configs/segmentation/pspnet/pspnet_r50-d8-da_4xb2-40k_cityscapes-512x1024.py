_base_ = ['./pspnet_r50-d8_base.py']
# DualAttention (DANet position + channel attention) after the last two stages of the dilated
# backbone (late_stages, on the 1/8 maps DANet's head attends over); the PSP head stays mmseg's
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='DualAttention'), at='paper')]))
