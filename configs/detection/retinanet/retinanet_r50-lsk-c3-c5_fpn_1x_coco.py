_base_ = ['./retinanet_r50_fpn_base.py']
# LSKBlock (LSKNet's large selective kernel block) after the last norm of every block of c3-c5,
# before the addition. LSKNet uses it only inside its own backbone (rotated detection on
# DOTA/HRSC with Oriented R-CNN, not part of this stack); the 13 modules add 31,005,198
# parameters to the ResNet-50
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='LSKBlock'), at='layer[234].*.bn3')]))
