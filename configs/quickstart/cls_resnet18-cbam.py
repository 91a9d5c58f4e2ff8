# Quickstart, classification: cls_resnet18.py with CBAM on every residual branch, after its
# last norm (the CBAM paper's position). Data: `python tools/generate_data.py --quickstart
# classification` (see cls_resnet18.py).
_base_ = ['./cls_resnet18.py']
model = dict(backbone=dict(insertions=[dict(attention=dict(type='CBAM'), at='paper')]))
# Measured on this schedule (from scratch, 500 AdamW steps; learning the marker cue is a
# sudden step from the shape-only plateau near 50 % top-1): the plain ResNet-18 reached 93.0,
# 86.0 and 84.5 % (seeds 0, 1, 2); CBAM 53.0 and 55.5 % (lr 2e-3, 1e-3), 50.0 % since its
# max pools send their gradient to one maximal element as the official code does; CBAM with
# identity_init=True 93.0 % on one thread and 57.5 % on two; SE 82.5 %, GC 49.5 %. Compare
# modules over several seeds and longer schedules with tools/analysis/compare.py.
