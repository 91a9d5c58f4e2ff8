_base_ = ['./retinanet_r50_fpn_base.py']
# CAA (PKINet's form) after the last norm of every block of c3-c5, before the addition. PKINet
# uses it only inside its own backbone (its InceptionBottleneck, rotated detection); the 13
# modules add 40,218,624 parameters (two dense 1x1 convs per module)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CAA'), at='layer[234].*.bn3')]))
