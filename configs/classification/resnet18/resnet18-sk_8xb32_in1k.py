_base_ = ['./resnet18_base.py']
# SK after the first 3x3 conv's norm of every BasicBlock: at='paper' (in place of a bottleneck's
# 3x3 conv) is not defined for BasicBlocks, so the first of their two 3x3 convs takes that role
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='SK'), at='layer*.*.bn1')]))
