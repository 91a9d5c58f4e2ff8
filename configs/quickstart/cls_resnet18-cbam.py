# Quickstart, classification: cls_resnet18.py with CBAM on every residual branch, after its
# last norm (the CBAM paper's position): a channel gate from the average- and max-pooled
# features, then a spatial gate. Data: `python tools/generate_data.py --quickstart
# classification` (see cls_resnet18.py).
_base_ = ['./cls_resnet18.py']
model = dict(backbone=dict(insertions=[dict(attention=dict(type='CBAM'), at='paper')]))
