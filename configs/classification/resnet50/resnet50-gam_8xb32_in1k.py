_base_ = ['./resnet50_base.py']
# GAM (r = 4) at the end of every residual branch (the default position; the paper does not
# state one). Heavy: the 16 modules add 503,064,320 parameters to ResNet-50's 25,557,032 (two
# dense 7x7 convs per module); reduction=16 adds 125,811,392
model = dict(backbone=dict(insertions=[dict(attention=dict(type='GAM'), at='paper')]))
