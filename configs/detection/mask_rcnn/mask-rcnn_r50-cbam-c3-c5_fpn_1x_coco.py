_base_ = ['./mask-rcnn_r50_fpn_base.py']
# CBAM after the last norm of every block of c3-c5, before the addition
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CBAM'), at='layer[234].*.bn3')]))
