_base_ = ['./resnet50_base.py']
# DoubleAttention (A^2-Nets, c_m = c_n = C/4) after the last two stages (its default
# position; the paper's exact stages are not confirmed): +5,248,256 parameters
# (1,050,368 after layer3, 4,197,888 after layer4)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='DoubleAttention'), at='paper')]))
