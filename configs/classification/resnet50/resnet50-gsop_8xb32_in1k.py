_base_ = ['./resnet50_base.py']
# GSoP (GSoP-Net1 block, channel mode, d = 128) at the end of the residual branch of the last
# block of each stage (its paper's position: 4 blocks in ResNet-50), reduction stride 1
# everywhere; resnet50-gsop-official_8xb32_in1k.py uses the official stride 2 in layer1
model = dict(backbone=dict(insertions=[dict(attention=dict(type='GSoP'), at='paper')]))
