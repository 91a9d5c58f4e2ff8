_base_ = ['./pspnet_r50-d8_base.py']
# RCCA (R = 2 criss-cross passes, shared weights) after the last two stages (its plug-in
# position; CCNet puts it in its own head, here the PSP head stays mmseg's)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='RCCA'), at='paper')]))
