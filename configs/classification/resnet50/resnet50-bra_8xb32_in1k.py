_base_ = ['./resnet50_base.py']
# BiLevelRoutingAttention (8 heads, 7x7 regions, top-4 routing, 3x3 lepe) after layer3 and
# layer4: BiFormer uses it only inside its own transformer blocks (own_block), so at='paper'
# inserts it at its fallback, late_stages
model = dict(backbone=dict(insertions=[
    dict(attention=dict(type='BiLevelRoutingAttention'), at='paper')]))
