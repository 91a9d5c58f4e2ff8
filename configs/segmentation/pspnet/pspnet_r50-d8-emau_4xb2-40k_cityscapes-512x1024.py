_base_ = ['./pspnet_r50-d8_base.py']
# EMAU after the last two stages (its plug-in position; EMANet puts it in its own head, which
# this config does not build: the PSP head stays mmseg's)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='EMAU'), at='paper')]))
