_base_ = ['./faster-rcnn_r50_fpn_base.py']
# ODConv (1x) in place of conv1, conv2 and conv3 of every Bottleneck of c3-c5 (layer2-4).
# init_from_conv: the ImageNet ResNet-50 checkpoint of the base config (init_cfg Pretrained)
# initialises each ODConv from the conv it replaces (heads zero, kernel scaled by 8 for 3x3 and
# 4 for 1x1 convs), so the detector starts from exactly the plain pretrained backbone; the
# temperature stays 1 (the annealing is for training from scratch)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='ODConv', kernel_num=1), replace='layer[234].*.conv[123]',
         init_from_conv=True)]))
