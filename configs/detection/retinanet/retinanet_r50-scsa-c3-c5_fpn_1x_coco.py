_base_ = ['./retinanet_r50_fpn_base.py']
# SCSA after the 3x3 conv, its norm and activation (its paper's position) of every block of c3-c5
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SCSA'), at='layer[234].*.conv3:input')]))
