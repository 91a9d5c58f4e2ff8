_base_ = ['./mask-rcnn_r50_fpn_base.py']
# SE after the last norm of every block of c3-c5, before the addition
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SE'), at='layer[234].*.bn3')]))
