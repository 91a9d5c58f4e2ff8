"""What an insertion did: one row per attention module inserted into a model."""
from typing import Dict, List

import torch.nn as nn

from .insert import SITES
from .site import IdentityBlend


def insertion_rows(model: nn.Module) -> List[Dict]:
    """Rows ``path, channels, layout, attention, name, identity_init, params`` for every
    attention module inserted into ``model`` or any of its submodules, in forward order of
    the sites (for a detector: its backbone's and neck's sites, paths prefixed)."""
    rows = []
    for prefix, module in model.named_modules():
        sites = getattr(module, SITES, None)
        if not isinstance(sites, nn.ModuleDict):
            continue
        for site in sites.values():
            for name, attention in site.attentions.items():
                blended = isinstance(attention, IdentityBlend)
                inner = attention.attention if blended else attention
                rows.append(dict(
                    path=f'{prefix}.{site.path}' if prefix else site.path,
                    channels=site.channels, layout=site.layout,
                    attention=type(inner).__name__, name=name, identity_init=blended,
                    params=sum(p.numel() for p in attention.parameters())))
    return rows


def format_rows(rows: List[Dict], total_params: int) -> str:
    """A plain-text table of :func:`insertion_rows` with totals."""
    lines = [f'{"path":44s} {"channels":>8s} {"layout":>7s}  {"attention":26s} {"params":>10s}']
    for r in rows:
        attention = r['attention'] + (' (identity init)' if r['identity_init'] else '')
        lines.append(f'{r["path"]:44s} {r["channels"]:8d} {r["layout"]:>7s}  '
                     f'{attention:26s} {r["params"]:10,d}')
    added = sum(r['params'] for r in rows)
    lines.append(f'{len(rows)} attention modules, {added:,d} parameters added; model '
                 f'{total_params:,d} parameters ({total_params - added:,d} without attention)')
    return '\n'.join(lines)
