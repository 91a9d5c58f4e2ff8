"""Compile every attention module with ``torch.compile(fullgraph=True)`` and a real backend.

The test suite checks graph capture with the ``aot_eager`` backend (seconds per module);
Inductor compiles C++ for each module (half a minute or more on a CPU), so it is checked
here instead:

    python tools/analysis/check_compile.py [--backend inductor] [--modules SE CBAM ...]
"""
import argparse
import time

import torch

from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.quiet import silence_upstream_noise


def main():
    silence_upstream_noise()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backend', default='inductor')
    parser.add_argument('--modules', nargs='+', default=None)
    parser.add_argument('--channels', type=int, default=64)
    args = parser.parse_args()
    classes = attention_classes()
    failures = 0
    for name in args.modules or list(classes):
        torch.manual_seed(0)
        module = classes[name](in_channels=args.channels).eval()
        x = torch.randn(2, args.channels, 7, 9)
        torch._dynamo.reset()
        start = time.perf_counter()
        try:
            compiled = torch.compile(module, fullgraph=True, backend=args.backend)
            with torch.no_grad():
                error = (compiled(x) - module(x)).abs().max().item()
            status = 'ok' if error < 1e-4 else 'MISMATCH'
        except Exception as e:  # noqa: BLE001  (report every module)
            error, status = float('nan'), f'FAILED: {type(e).__name__}: {e}'.splitlines()[0]
        failures += status != 'ok'
        print(f'{name:28s} {time.perf_counter() - start:7.1f} s  max |diff| {error:.2e}  '
              f'{status}', flush=True)
    raise SystemExit(1 if failures else 0)


if __name__ == '__main__':
    main()
