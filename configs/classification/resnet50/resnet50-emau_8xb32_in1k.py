_base_ = ['./resnet50_base.py']
# EMAU after the last two stages (its plug-in position; the paper puts it in a segmentation
# head); its bases follow a moving average in training (momentum 0.1, inside the forward)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='EMAU'), at='paper')]))
