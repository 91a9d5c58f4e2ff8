_base_ = ['./faster-rcnn_r50_fpn_base.py']
# GAM (r = 4) after the last norm of every block of c3-c5, before the addition. Heavy: the 13
# modules add 498,145,280 parameters (two dense 7x7 convs per module)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='GAM'), at='layer[234].*.bn3')]))
