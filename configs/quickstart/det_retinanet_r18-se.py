# Quickstart, detection: det_retinanet_r18.py with SE on every residual branch, after its last
# norm (the SE paper's position). Data: `python tools/generate_data.py --quickstart detection`
# (see det_retinanet_r18.py).
_base_ = ['./det_retinanet_r18.py']
model = dict(backbone=dict(insertions=[dict(attention=dict(type='SE'), at='paper')]))
