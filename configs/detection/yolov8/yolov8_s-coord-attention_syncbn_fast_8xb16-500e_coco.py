_base_ = ['./yolov8_s_base.py']
# Coordinate attention at the end of the residual branch of every backbone bottleneck, before
# the addition: 6 modules, 17,616 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CoordAttention'), at='paper')]))
