_base_ = ['./retinanet_r50_fpn_base.py']
# Shuffle attention (G = 64) after the last norm of every block of c3-c5, before the addition
# (the official mmdetection/sa_resnet.py puts it in every block of c2-c5)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='ShuffleAttention'), at='layer[234].*.bn3')]))
