_base_ = ['./resnet50_base.py']
# RCCA (R = 2 criss-cross passes, shared weights) after the last two stages (its plug-in
# position; in CCNet it sits in the segmentation head)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='RCCA'), at='paper')]))
