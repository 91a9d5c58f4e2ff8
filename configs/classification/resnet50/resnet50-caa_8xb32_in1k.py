_base_ = ['./resnet50_base.py']
# CAA (PKINet's context anchor attention, in PKINet's form: plain 1x1 convs, 11-tap strips).
# Its paper uses it only inside PKINet's InceptionBottleneck ('own_block'): at='paper' inserts
# it at its fallback position, the end of every residual branch (not the paper's position)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='CAA'), at='paper')]))
