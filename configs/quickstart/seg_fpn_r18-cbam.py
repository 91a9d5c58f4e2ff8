# Quickstart, segmentation: seg_fpn_r18.py with CBAM on every residual branch, after its
# last norm (the CBAM paper's position). Data: `python tools/generate_data.py --quickstart
# segmentation` (see seg_fpn_r18.py).
_base_ = ['./seg_fpn_r18.py']
model = dict(backbone=dict(insertions=[dict(attention=dict(type='CBAM'), at='paper')]))
