_base_ = ['./resnet50_base.py']
# RGA-SC after every stage with the official per-stage grids: the official RGA_Branch builds
# each module for its stage's map size (64x32, 32x16, 16x8, 16x8 for its 256x128 ReID images
# with last stride 1); at 224x224 the stage outputs are 56, 28, 14 and 7. Maps of other sizes
# are pooled to these grids (size_policy='pool'); 'strict' would refuse them. Costly: 10.1M
# parameters in the four modules, 6.2M of them in layer1's (the relations grow with S^2)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='RGA', grid_size=56), at='layer1'),
    dict(attention=dict(type='RGA', grid_size=28), at='layer2'),
    dict(attention=dict(type='RGA', grid_size=14), at='layer3'),
    dict(attention=dict(type='RGA', grid_size=7), at='layer4'),
]))
