_base_ = ['./faster-rcnn_r50_fpn_base.py']
# GCT before every conv of the backbone, in all stages (its paper's position, which the
# official Mask R-CNN results use): the stem conv, conv1-3 of every block and the downsample
# convs, 53 modules. GCT is the identity at initialisation, so the ImageNet-pretrained
# backbone starts unchanged. frozen_stages=1 freezes the stem's and layer1's convs and norms,
# not the GCTs inserted there (the official maskrcnn-benchmark setup froze those too, with
# GCT-ResNet ImageNet weights). As the authors' README asks, no weight decay on beta.
model = dict(backbone=dict(insertions=[dict(attention=dict(type='GCT'), at='paper')]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.gct.beta': dict(decay_mult=0.)}))
