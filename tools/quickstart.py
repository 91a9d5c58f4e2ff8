"""Smoke job of the README's main command (until the full quickstart lands).

Builds mmpretrain's ResNet-50 from a config, inserts SE and CBAM at their paper positions with
``InsertAttention``, runs a forward pass, and prints parameters, insertion points and timing.
"""
import time

import torch
from mmengine.registry import DefaultScope

import cvattn_mm  # noqa: F401  (registers the modules)
from cvattn_mm.registry import MODELS


def count(model):
    return sum(p.numel() for p in model.parameters())


def main():
    torch.manual_seed(0)
    backbone = dict(type='mmpretrain.ResNet', depth=50, out_indices=(3, ))
    x = torch.randn(2, 3, 224, 224)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        plain = MODELS.build(backbone)
        plain.eval()
        with torch.no_grad():
            ref = plain(x)[-1]
        print(f'{"model":32s} {"params":>10s} {"sites":>6s} {"forward (s)":>12s}  output')
        print(f'{"ResNet-50":32s} {count(plain) / 1e6:9.2f}M {0:6d} {"":12s}  '
              f'{tuple(ref.shape)}')
        for attention in ('SE', 'CBAM'):
            for identity_init in (False, True):
                model = MODELS.build(dict(
                    type='InsertAttention', module=backbone,
                    insertions=[dict(attention=dict(type=attention), at='paper',
                                     identity_init=identity_init)]))
                model.eval()
                if identity_init:
                    model.load_state_dict(plain.state_dict(), strict=False)
                start = time.perf_counter()
                with torch.no_grad():
                    out = model(x)[-1]
                seconds = time.perf_counter() - start
                name = f'ResNet-50 + {attention}' + (' (identity init)' if identity_init else '')
                same = ' == plain' if identity_init and torch.equal(out, ref) else ''
                print(f'{name:32s} {count(model) / 1e6:9.2f}M {len(model.attention_sites):6d} '
                      f'{seconds:12.3f}  {tuple(out.shape)}{same}')


if __name__ == '__main__':
    main()
