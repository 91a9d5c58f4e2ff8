_base_ = ['./yolov8_s_base.py']
# SE (reduction 16) at the end of the residual branch of every backbone bottleneck, before the
# addition: 6 modules, 14,154 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SE'), at='paper')]))
