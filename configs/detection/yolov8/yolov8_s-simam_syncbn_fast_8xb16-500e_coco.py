_base_ = ['./yolov8_s_base.py']
# SimAM after the last 3x3 conv of every backbone bottleneck, before its norm (its paper's
# position): 6 modules, no parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SimAM'), at='paper')]))
