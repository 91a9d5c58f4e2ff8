_base_ = ['./faster-rcnn_r50_fpn_base.py']
# FCA after the last norm of every block of c3-c5, before the addition. A detector's maps are
# not 224-derived (they follow the image, e.g. 1333x800), so no per-stage grid matches them:
# the default 7x7 DCT grid with pooling is the size-agnostic choice (every map is
# adaptive-pooled to 7x7). The official FcaNet detectors pool to the ImageNet grids 56/28/14/7
# instead, in all four stages.
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='FCA'), at='layer[234].*.bn3')]))
