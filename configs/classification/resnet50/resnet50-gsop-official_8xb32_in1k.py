_base_ = ['./resnet50_base.py']
# GSoP as the official GSoP-Net1 code inserts it: the last block of each stage, with the
# reduction conv's stride 2 in layer1 (56x56 maps) and 1 in layers 2-4. Not reproduced: the
# official network also sets layer4's stride to 1 (a change of the network, not of the
# block; it would need strides=(1, 2, 2, 1) and a dilated or larger-map recipe)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='GSoP', reduce_stride=2), at='layer1.2.bn3'),
    dict(attention=dict(type='GSoP'), at=['layer2.3.bn3', 'layer3.5.bn3', 'layer4.2.bn3']),
]))
