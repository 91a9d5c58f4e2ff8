# Quickstart, classification: cls_resnet18.py with SE on every residual branch, after its
# last norm (the SE paper's position): a channel gate from the globally average-pooled
# features. Data: `python tools/generate_data.py --quickstart classification` (see
# cls_resnet18.py).
_base_ = ['./cls_resnet18.py']
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SE'), at='paper')]))
