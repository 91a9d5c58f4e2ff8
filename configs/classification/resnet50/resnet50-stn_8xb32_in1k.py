_base_ = ['./resnet50_base.py']
# A spatial transformer (affine, the identity at initialisation) on the image input of the
# backbone, before its stem conv: its paper's position (classification only)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SpatialTransformer'),
                                            at='paper')]))
