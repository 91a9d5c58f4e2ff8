_base_ = ['./resnet50_base.py']
# NAM (channel form) at the end of every residual branch (its paper's position), trained as the
# paper: the L1 sparsity penalty p = 1e-4 on every NAM BN weight (grad += p sign(gamma) before
# each optimiser step, the official script's -sr option)
model = dict(backbone=dict(insertions=[dict(attention=dict(type='NAM'), at='paper')]))
custom_hooks = [dict(type='SparsityPenaltyHook', penalty=1e-4)]
