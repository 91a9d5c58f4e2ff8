_base_ = ['./resnet50_base.py']
# BAM at the end of every stage but the last (its paper's position)
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='BAM'), at='paper')]))
