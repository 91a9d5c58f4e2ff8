# Quickstart, detection: det_retinanet_r18.py with a GC block on every residual branch of
# stages c3-c5 (GCNet's position for detection). Data: `python tools/generate_data.py
# --quickstart detection` (see det_retinanet_r18.py).
_base_ = ['./det_retinanet_r18.py']
model = dict(backbone=dict(insertions=[dict(attention=dict(type='GC'), at='paper')]))
