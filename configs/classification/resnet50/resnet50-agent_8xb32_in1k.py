_base_ = ['./resnet50_base.py']
# AgentAttention (8 heads, 49 agents) after layer3 and layer4: the paper uses it only inside
# its own transformer blocks (Agent-PVT, Agent-Swin: own_block), so at='paper' inserts it at
# its fallback, late_stages
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='AgentAttention'), at='paper')]))
