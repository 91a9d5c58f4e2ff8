_base_ = ['./resnet50_base.py']
# RGA-SC after every stage, the last one included (its paper's position: the official
# RGA_Branch applies one module after each of layer1 to layer4); the relations are computed
# on a 14x14 grid (maps of other sizes are pooled to it, the spatial gate resized back)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='RGA'), at='paper')]))
