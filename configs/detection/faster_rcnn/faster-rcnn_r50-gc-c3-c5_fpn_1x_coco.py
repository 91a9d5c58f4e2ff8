_base_ = ['./faster-rcnn_r50_fpn_base.py']
# GC after the last norm of every block of c3-c5, before the addition
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='GC'), at='layer[234].*.bn3')]))
