_base_ = ['./faster-rcnn_r50_fpn_base.py']
# CCNet's recurrent criss-cross attention (R = 2) after layer3 and layer4 (its plug-in position,
# late_stages; CCNet itself uses it in its segmentation head). Each position attends to its
# row and column, twice, so every position sees the whole map: global context for the
# detector's C4 and C5 features. 2 modules, 6,557,442 parameters (1.25 C^2 + 1.25 C + 1 each).
model = dict(backbone=dict(insertions=[dict(attention=dict(type='RCCA'), at='paper')]))
