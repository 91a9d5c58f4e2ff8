_base_ = ['./yolov8_s_base.py']
# CBAM at the end of the residual branch of every backbone bottleneck, before the addition:
# 6 modules, 14,754 parameters
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='CBAM'), at='paper')]))
